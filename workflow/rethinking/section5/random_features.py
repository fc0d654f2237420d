"""Section 5, beyond the paper: double descent of random-features regression (Belkin et al., PNAS 2019).

The paper's Section 5 argues through the minimum-norm interpolant. Belkin, Hsu, Ma and Mandal ("Reconciling
modern machine-learning practice and the classical bias-variance trade-off", PNAS 2019) show what that
interpolant does as the number of parameters N crosses the number of training points n: with N random
features fitted by minimum-norm least squares, the test error rises to a peak at the interpolation threshold
N = n and falls again as N grows past it ("double descent"); a ridge term removes the peak. This module
measures that curve on the kernels stage's data and label noise.

- Data: the kernels stage's training subset (kernels._prepare: a seeded class-balanced subset of n training
  images, n = section5.random_features.n; every test image, or section5.kernels.n_test of them) and its
  inputs: pixels / 255 flattened ("raw", as kernels.csv), d = 64 on the digits.
- Labels at noise level p: corrupt.training_labels(y_train, p, classes, dataset seed) restricted to the
  subset, i.e. the labels of the networks' corrupted artifact at p, as kernel_noise.csv. Test labels true.
  Targets are one-hot 0/1 vectors (n x C), the prediction is the argmax over the C outputs.
- Features: "relu": phi_j(x) = max(0, w_j . x + b_j) / sqrt(N), w_j ~ N(0, I / s2) and b_j ~ N(0, 1), where
  s2 is the mean squared norm of the training inputs (so w_j . x has variance about 1 whatever the inputs'
  scale); "fourier": phi_j(x) = sqrt(2 / N) cos(w_j . x + b_j), w_j ~ N(0, 2 gamma I), b_j ~ U[0, 2 pi),
  gamma = 1 / median squared distance of the training inputs (kernels.median_gamma): Phi Phi^T approximates
  the Gaussian kernel. The 1 / sqrt(N) makes Phi Phi^T converge as N grows, so one ridge value means the
  same at every N. The features of the largest N are drawn once (seed: section5.random_features.seed) and a
  smaller N takes its first N columns (rescaled), so the curves are nested.
- Solver: one thin SVD Phi = U S V^T per (N, level set): min-norm a = V S^+ U^T Y with singular values below
  max(n, N) eps s_max dropped (numpy.linalg.lstsq's cutoff): least squares for N < n, the minimum-norm
  interpolant for N > n. Ridge: a = V diag(s / (s^2 + lambda)) U^T Y, i.e. argmin |Phi a - Y|^2 +
  lambda |a|^2. Float64. The kernels stage's Gaussian-kernel solver does not apply: it solves in the
  kernel's dual for one fixed kernel, here the feature map changes with N.
- The norm reported is |a|_F, the l2 norm of the coefficient matrix (C columns).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

FEATURES = ("relu", "fourier")


def draw_features(f_train: np.ndarray, n_features: int, kind: str = "relu", seed: int = 0) -> dict:
    """The random map's parameters (w: d x N, b: N, kind) drawn from the training inputs' scale."""
    if kind not in FEATURES:
        raise ValueError(f"features: {kind!r} is unknown (allowed: {', '.join(FEATURES)})")
    rng = np.random.default_rng([seed, 11])
    d = f_train.shape[1]
    w = rng.standard_normal((d, n_features))
    if kind == "relu":
        w /= math.sqrt(float((f_train * f_train).sum(1).mean()))
        b = rng.standard_normal(n_features)
    else:
        import torch

        from .kernels import median_gamma

        w *= math.sqrt(2.0 * median_gamma(torch.from_numpy(f_train), seed))
        b = rng.uniform(0.0, 2.0 * math.pi, n_features)
    return {"w": w, "b": b, "kind": kind}


def apply_features(f: np.ndarray, params: dict, n_features: int | None = None) -> np.ndarray:
    """Phi (rows of f x the first n_features features of the map), scaled so Phi Phi^T does not grow with N."""
    n_features = n_features or params["w"].shape[1]
    z = f @ params["w"][:, :n_features] + params["b"][:n_features]
    if params["kind"] == "relu":
        return np.maximum(z, 0.0) / math.sqrt(n_features)
    return np.cos(z) * math.sqrt(2.0 / n_features)


def least_squares(phi: np.ndarray, y: np.ndarray, ridges=(0.0,)) -> list[np.ndarray]:
    """a = argmin |phi a - y|^2 + lambda |a|^2 per lambda in ridges, the minimum-norm one for lambda = 0.

    One thin SVD of phi (float64) serves every lambda; for lambda = 0 singular values at or below
    max(phi.shape) * eps * s_max count as zero, as numpy.linalg.lstsq's default rcond.
    """
    phi = np.asarray(phi, dtype=np.float64)
    u, s, vt = np.linalg.svd(phi, full_matrices=False)
    uty = u.T @ np.asarray(y, dtype=np.float64)
    out = []
    for lam in ridges:
        if lam > 0:
            g = s / (s * s + lam)
        else:
            cut = max(phi.shape) * np.finfo(np.float64).eps * (s[0] if len(s) else 0.0)
            g = np.divide(1.0, s, out=np.zeros_like(s), where=s > cut)
        out.append(vt.T @ (g[:, None] * uty))
    return out


def _noisy_labels(data: dict, levels, idx, num_classes: int, seed: int) -> list[np.ndarray]:
    from ..data.corrupt import training_labels

    y_full = np.asarray(data["y_train"])
    out = []
    for p in levels:
        yn = np.asarray(training_labels(y_full, float(p), num_classes, seed), dtype=np.int64)
        out.append(yn if idx is None else yn[idx])
    return out


def random_features_curve(
    data: dict,
    ratios,
    levels=(0.0, 0.2),
    n: int = 200,
    features: str = "relu",
    ridge: float = 1e-3,
    seed: int = 0,
    data_seed: int = 0,
    n_test: int | None = None,
    num_classes: int | None = None,
) -> pd.DataFrame:
    """Test and train error (%) and |a|_F per (level, N / n, solver) for N = round(ratio * n) random features.

    data: x_train, x_test uint8 (N, C, H, W), y_train, y_test (and classes). data_seed: the dataset seed (the
    subset and the label noise, as the kernels stage); seed: the features' draw. solver is "min-norm" or
    "ridge". Columns: level, ratio, n_features, solver, test_error, train_error, norm, ridge, n_train,
    n_test, features, labels_changed, seconds (features and SVD of this N, both solvers).
    """
    from .kernels import _prepare

    if num_classes is None and data.get("classes") is not None:
        num_classes = len(data["classes"])
    ftr, fte, ytr, yte, num_classes, _, idx = _prepare(
        data, "pixels", 1.0, n, n_test, data_seed, 0, 1, None, "cpu", num_classes=num_classes
    )
    ftr, fte = ftr.double().numpy(), fte.double().numpy()
    n = len(ytr)
    levels = [float(p) for p in levels]
    noisy = _noisy_labels(data, levels, idx, num_classes, data_seed)
    y = np.concatenate([np.eye(num_classes)[t] for t in noisy], axis=1)
    counts = sorted({max(1, int(round(float(r) * n))) for r in ratios})
    params = draw_features(ftr, counts[-1], features, seed)
    rows = []
    for n_features in counts:
        t0 = time.perf_counter()
        ptr, pte = apply_features(ftr, params, n_features), apply_features(fte, params, n_features)
        sols = least_squares(ptr, y, (0.0, float(ridge)))
        seconds = time.perf_counter() - t0
        for solver, a in zip(("min-norm", "ridge"), sols):
            train_out, test_out = ptr @ a, pte @ a
            for g, (p, yn) in enumerate(zip(levels, noisy)):
                cols = slice(g * num_classes, (g + 1) * num_classes)
                rows.append(
                    {
                        "level": p,
                        "ratio": n_features / n,
                        "n_features": n_features,
                        "solver": solver,
                        "test_error": 100.0 * float(np.mean(test_out[:, cols].argmax(1) != yte)),
                        "train_error": 100.0 * float(np.mean(train_out[:, cols].argmax(1) != yn)),
                        "norm": float(np.linalg.norm(a[:, cols])),
                        "ridge": float(ridge) if solver == "ridge" else 0.0,
                        "n_train": n,
                        "n_test": int(len(yte)),
                        "features": features,
                        "labels_changed": float(np.mean(yn != ytr)),
                        "seconds": seconds,
                    }
                )
    return pd.DataFrame(rows)


def peak_ratios(frame: pd.DataFrame, level: float, solver: str, below: float = 0.25, above: float = 10.0) -> dict:
    """Test errors at N = n, N = below * n and N = above * n (nearest ratios present) and the two ratios
    err(n) / err(below n), err(n) / err(above n): the double-descent peak measured."""
    g = frame[(frame["level"] == level) & (frame["solver"] == solver)]

    def at(r):
        return float(g.loc[(g["ratio"] - r).abs().idxmin(), "test_error"])

    e_lo, e_n, e_hi = at(below), at(1.0), at(above)
    return {
        "below": e_lo,
        "at_n": e_n,
        "above": e_hi,
        "peak_over_below": e_n / max(e_lo, 1e-12),
        "peak_over_above": e_n / max(e_hi, 1e-12),
    }


def plot_random_features(frame: pd.DataFrame):
    """Figure: test error (%) against N / n (log axis), one colour per label-noise level, min-norm solid and
    ridge dashed, N = n marked; |a|_F against N / n on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    styles = {"min-norm": "-", "ridge": "--"}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
        colours = sns.color_palette(n_colors=frame["level"].nunique())
        for colour, (level, g) in zip(colours, frame.groupby("level", sort=True)):
            for solver, h in g.groupby("solver", sort=True):
                h = h.sort_values("ratio")
                ridge = f" ($\\lambda$={h['ridge'].iloc[0]:g})" if solver == "ridge" else ""
                kw = dict(color=colour, linestyle=styles.get(solver, ":"), marker="o", markersize=3)
                ax1.plot(h["ratio"], h["test_error"], label=f"noise {level:g}, {solver}{ridge}", **kw)
                ax2.plot(h["ratio"], h["norm"], **kw)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
            ax.set_xlabel("features / training points (N / n)")
        ax1.plot([1.0], [0.0], marker="v", color="black", clip_on=False, linestyle="none", label="N = n")
        ax1.set_ylabel("test error (%)")
        ax1.set_ylim(0, 100)
        ax1.set_title(f"random {frame['features'].iloc[0]} features, n = {int(frame['n_train'].iloc[0])}")
        ax1.legend(fontsize=6)
        ax2.set_yscale("log")
        ax2.set_ylabel(r"$\|a\|_F$")
        ax2.set_title("norm of the solution")
        fig.tight_layout()
    return fig
