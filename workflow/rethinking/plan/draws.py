"""The random draws of the corruption kinds: pure numpy functions of arrays and a seeded generator.

They live in the planning layer, beside the registry that names them (plan.corruptions), so that a kind
is one entry in one place and the registry never reaches up into the stages; they import no torch, and
scipy only inside the functions that solve for the Gaussian (the Snakemake rules import plan and must
stay light). The stage that writes the artifacts is rethinking.data.corrupt.

Choices the paper leaves open (also in docs/CHOICES.md): permutations act on pixel positions at the
native resolution (before any crop), and a pixel's channels move together; Gaussian statistics are per
channel, computed on the training split, and samples are rounded and clipped to 0..255 so every
artifact is uint8 like the base; the Gaussian's location and scale are solved (gaussian_params) so that
the rounded, clipped values have the data's mean and standard deviation.
"""

from __future__ import annotations

import numpy as np


def corrupt_labels(y: np.ndarray, p: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each label independently with probability p replaced by a class drawn uniformly from all classes."""
    replace = rng.random(len(y)) < p
    drawn = rng.integers(0, num_classes, size=len(y))
    return np.where(replace, drawn, y).astype(np.int64)


def pairflip_labels(y: np.ndarray, p: float, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each label c independently with probability p moved to its class's fixed other class target[c]
    (class-conditional "pair" noise); a class that maps to itself keeps its label. One uniform draw per label."""
    y = np.asarray(y)
    move = rng.random(len(y)) < p
    return np.where(move, np.asarray(target)[y], y).astype(np.int64)


def next_class_map(num_classes: int) -> np.ndarray:
    """The default pairflip map: class c to (c + 1) mod num_classes."""
    return (np.arange(num_classes) + 1) % num_classes


def shuffle_pixels(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Every image of x (N x C x H x W) with its pixel positions permuted by perm (channels move together)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w))


def random_pixels(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every image of x with its own random permutation of the pixel positions."""
    n, c, h, w = x.shape
    perms = np.argsort(rng.random((n, h * w)), axis=1)
    flat = x.reshape(n, c, h * w)
    return np.ascontiguousarray(np.take_along_axis(flat, perms[:, None, :], axis=2).reshape(n, c, h, w))


def stored_moments(loc: float, scale: float) -> tuple[float, float]:
    """Mean and standard deviation of clip(rint(loc + scale * Z), 0, 255), Z standard normal (exact, on 0..255)."""
    from scipy.special import ndtr

    if scale <= 0:
        v = float(np.clip(np.rint(loc), 0, 255))
        return v, 0.0
    k = np.arange(256, dtype=np.float64)
    edges = ndtr((np.arange(0.5, 255.0, 1.0) - loc) / scale)  # P(X <= k) for k = 0..254
    cdf = np.concatenate([edges, [1.0]])
    prob = np.diff(np.concatenate([[0.0], cdf]))
    mean = float(prob @ k)
    return mean, float(np.sqrt(max(float(prob @ (k - mean) ** 2), 0.0)))


def gaussian_params(mean: float, std: float) -> tuple[float, float]:
    """(loc, scale) of the Gaussian whose rounded, clipped (0..255) samples have this mean and std.

    Clipping moves mass to 0 and 255, which shifts the mean toward the middle and shrinks the spread
    (on the digits, clipping a Gaussian with the data's moments gave mean 87.7 / sd 75.8 against
    77.9 / 95.9), so loc and scale are solved for with the exact moments of the discretized, clipped
    distribution (stored_moments). Any std below sqrt(mean (255 - mean)) is reachable; the solve is
    deterministic (a function of the two numbers only), so the same seed still gives the same bytes.
    """
    from scipy.optimize import least_squares

    mean, std = float(mean), float(std)
    if std <= 0:
        return mean, 0.0

    def resid(v):
        m, s = stored_moments(v[0], float(np.exp(v[1])))
        return [m - mean, s - std]

    fit = least_squares(resid, [mean, np.log(std)], xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=200)
    return float(fit.x[0]), float(np.exp(fit.x[1]))


def gaussian_like(x_ref: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    """uint8 Gaussian noise of `shape` whose stored values match x_ref's mean and std per channel."""
    ref = x_ref.astype(np.float64)
    mean = ref.mean(axis=(0, 2, 3))
    std = ref.std(axis=(0, 2, 3))
    loc, scale = np.array([gaussian_params(m, s) for m, s in zip(mean, std)]).T
    z = rng.standard_normal(shape) * scale[None, :, None, None] + loc[None, :, None, None]
    return np.clip(np.rint(z), 0, 255).astype(np.uint8)
