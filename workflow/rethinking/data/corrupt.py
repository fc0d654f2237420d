"""Stage `corrupt`: base artifact + corruption -> corrupted artifact (Section 2 of the paper).

- true labels: the original data.
- labels at level p: independently with probability p each *training* label is
  replaced by a class drawn uniformly from all classes (it may equal the true
  one, so about (1 - 1/C) p of the labels change). Drawn once, fixed across
  epochs; the test set keeps its true labels. p = 1 is "random labels".
- shuffled pixels: one permutation of the pixel positions, drawn once and
  applied to every image of both splits.
- random pixels: a different permutation for every image of both splits.
- gaussian: every image of both splits replaced by Gaussian noise whose mean
  and standard deviation match the training set, per channel: what is stored
  (rounded and clipped to 0..255), not the Gaussian before clipping.

Choices the paper leaves open (also in docs/CHOICES.md): permutations act on
pixel positions at the native resolution (before any crop), and a pixel's
channels move together; Gaussian statistics are per channel, computed on the
training split, and samples are rounded and clipped to 0..255 so every
artifact is uint8 like the base; the Gaussian's location and scale are solved
(gaussian_params) so that the rounded, clipped values have the data's mean
and standard deviation; pixel corruptions keep the true labels.

A label-only corruption stores labels and a reference (path and SHA-256) to
its base artifact, never a second copy of the images. Which training labels
are corrupted is not stored: load_corrupted returns the base's training
labels beside the artifact's (`y_train_true`), and corrupted_mask compares
them, so artifacts made before the mask existed give it too. A label the
draw replaced by its own class is not corrupted.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plan import Corruption, base_artifact, corrupted_artifact
from ..errors import ArtifactError
from ..files import load_npz, save_npz, sha256


def _rng(seed: int, corruption: Corruption) -> np.random.Generator:
    kinds = ("true_labels", "labels", "shuffled_pixels", "random_pixels", "gaussian")
    return np.random.default_rng([seed, 2, kinds.index(corruption.kind), int(round(corruption.level * 1_000_000))])


def corrupt_labels(y: np.ndarray, p: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    replace = rng.random(len(y)) < p
    drawn = rng.integers(0, num_classes, size=len(y))
    return np.where(replace, drawn, y).astype(np.int64)


def training_labels(y_train: np.ndarray, level: float, num_classes: int, seed: int) -> np.ndarray:
    """The training labels of the corrupted artifact for label corruption `level` (dataset seed `seed`).

    Exactly what `corrupt` stores as y_train for Corruption.make("labels", level) on a base artifact
    whose training labels are y_train and whose class list has num_classes entries, whether or not that
    artifact exists: level 0 is the true labels, any other level the same seeded draw. The kernels stage
    uses it so its label-noise curve fits the networks' noisy labels.
    """
    corruption = Corruption.make("labels", level)
    if corruption.kind == "true_labels":
        return np.asarray(y_train)
    return corrupt_labels(np.asarray(y_train), corruption.level, num_classes, _rng(seed, corruption))


def shuffle_pixels(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w))


def random_pixels(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
    edges = ndtr((np.arange(0.5, 255.0, 1.0) - loc) / scale)   # P(X <= k) for k = 0..254
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


def corrupt(cfg: dict, corruption: Corruption) -> Path:
    base_path = base_artifact(cfg)
    meta, base = load_npz(base_path, rebuild_hint="`python -m rethinking prepare`")
    rng = _rng(cfg["dataset"]["seed"], corruption)
    num_classes = len(meta["classes"])
    out = {"y_train": base["y_train"], "y_test": base["y_test"]}
    info = {"kind": "corrupted", "corruption": corruption.id, "level": corruption.level,
            "dataset": meta["dataset"], "classes": meta["classes"], "shape": meta["shape"],
            "seed": cfg["dataset"]["seed"]}
    if corruption.kind == "labels":
        out["y_train"] = training_labels(base["y_train"], corruption.level, num_classes, cfg["dataset"]["seed"])
        info["labels_changed"] = float(np.mean(out["y_train"] != base["y_train"]))
    elif corruption.kind == "shuffled_pixels":
        _, _, h, w = base["x_train"].shape
        perm = rng.permutation(h * w)
        out["x_train"] = shuffle_pixels(base["x_train"], perm)
        out["x_test"] = shuffle_pixels(base["x_test"], perm)
        out["permutation"] = perm
    elif corruption.kind == "random_pixels":
        out["x_train"] = random_pixels(base["x_train"], rng)
        out["x_test"] = random_pixels(base["x_test"], rng)
    elif corruption.kind == "gaussian":
        out["x_train"] = gaussian_like(base["x_train"], base["x_train"].shape, rng)
        out["x_test"] = gaussian_like(base["x_train"], base["x_test"].shape, rng)
    if "x_train" not in out:
        info["base"] = {"path": str(base_path), "sha256": sha256(base_path)}
    path = corrupted_artifact(cfg, corruption)
    save_npz(path, info, **out)
    return path


def corrupted_mask(arrays: dict) -> np.ndarray:
    """Which training examples carry a corrupted label (bool, one per training example): those whose label
    differs from the base artifact's, of load_corrupted's arrays (or load_streamed's dict). A label the draw
    replaced by its own class is intact; pixel corruptions corrupt no label. The mask depends on the
    artifact only (dataset.seed), so every training seed of a run shares it."""
    return np.asarray(arrays["y_train"]) != np.asarray(arrays["y_train_true"])


def load_corrupted(cfg: dict, corruption: Corruption) -> tuple[dict, dict]:
    """(meta, arrays) of a corrupted artifact with images resolved from its base if needed.

    arrays["y_train_true"] holds the base artifact's training labels (the true ones): read from the base a
    label artifact references; for a pixel corruption, whose labels are the base's, its own y_train."""
    path = corrupted_artifact(cfg, corruption)
    hint = f"`python -m rethinking corrupt --params <file> --corruption {corruption.id}` (or rerun the pipeline)"
    meta, arrays = load_npz(path, rebuild_hint=hint)
    if meta.get("kind") != "corrupted" or meta.get("corruption") != corruption.id:
        raise ArtifactError(f"{path}: holds {meta.get('corruption')!r}, expected {corruption.id!r}; "
                            f"rebuild it with {hint}")
    if "x_train" not in arrays:
        base_path = Path(meta["base"]["path"])
        if not base_path.is_file() or sha256(base_path) != meta["base"]["sha256"]:
            raise ArtifactError(f"{path}: its base artifact {base_path} is missing or has changed since the "
                                f"labels were drawn; rebuild it with {hint}")
        _, base = load_npz(base_path)
        arrays["x_train"], arrays["x_test"] = base["x_train"], base["x_test"]
        arrays["y_train_true"] = base["y_train"]
    else:
        arrays["y_train_true"] = arrays["y_train"]
    return meta, arrays
