"""Section 5 of the paper: the implicit bias of SGD on underdetermined least squares.

What the paper says. For a linear model fit by SGD to the squared loss with
n < d (more parameters than points), every update is a multiple of a data
point, w_{t+1} = w_t - eta_t e_t x_{i_t}, so started from w_0 = 0 the iterate
stays in the span of the data, w = X^T alpha. If it interpolates (X w = y),
then alpha solves X X^T alpha = y (the kernel system), and the solution is
unique: SGD from zero converges to the minimum-l2-norm solution X^+ y. The
paper uses this to argue that SGD finds a particular interpolant, and that
the norm of that interpolant alone does not explain generalization.

This module makes the argument measurable: from zero the distance to the
pseudo-inverse solution X^+ y goes to 0; from a random start w_0 the iterates
converge to the interpolant w_0 + X^+ (y - X w_0) = X^+ y + P_null w_0, so the
distance stays at ||P_null w_0|| (P_null: projection onto the null space of X).

Choices where the paper is silent:
- Plain SGD over single examples (batch_size 1 by default), sampled without
  replacement within each epoch (a seeded permutation per epoch), constant
  step size lr; lr=None gives 1 / max_i ||x_i||^2, the largest step that is
  stable for every example (with this step each update solves its own
  equation exactly when ||x_i|| is the largest: randomized Kaczmarz).
  Loss per example: (x_i . w - y_i)^2 / 2. Everything in float64.
- Targets are the one-hot labels (n x C), so w is d x C and norms are
  Frobenius norms; each column is an independent least-squares problem.
- The random start is a seeded Gaussian w_0 rescaled to ||w_0|| = ||X^+ y||.
- Features: "pixels" (x / 255 flattened: d = 64 on digits, so n < 64);
  "rff", random Fourier features of the Gaussian kernel (gamma by the median
  heuristic on the subset's pixels), the linear-model view of Section 5's
  kernel solve (X X^T approximates K); or "random-conv", the ReLU-pooled
  random-filter features of rethinking.section5.kernels without standardization
  (centring n rows drops the rank to n - 1, and then no interpolant exists).
  The rows are scaled to unit mean norm so lr is comparable across kinds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.sources import balanced_subset

FEATURES = ("pixels", "rff", "random-conv")


def min_norm_solution(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """X^+ y, the minimum-norm least-squares solution (lstsq, float64)."""
    return np.linalg.lstsq(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), rcond=None)[0]


def null_projection(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P_null v: the component of v orthogonal to the row space of X."""
    X = np.asarray(X, dtype=np.float64)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    rank = int((s > s.max() * max(X.shape) * np.finfo(np.float64).eps).sum()) if len(s) else 0
    basis = vt[:rank]
    return v - basis.T @ (basis @ v)


def sgd_least_squares(
    X: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float | None = None,
    w0: np.ndarray | None = None,
    seed: int = 0,
    record_every: int | None = None,
    batch_size: int = 1,
) -> pd.DataFrame:
    """SGD on sum_i (x_i . w - y_i)^2 / 2 from w0 (default 0); one row every `record_every` steps.

    Columns: step, dist_to_minnorm (||w - X^+ y||), norm (||w||), residual (||X w - y||); Frobenius norms
    when y is (n, k). Step 0 is the start.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    vector = y.ndim == 1
    Y = y[:, None] if vector else y
    w = np.zeros((d, Y.shape[1])) if w0 is None else np.array(w0, dtype=np.float64).reshape(d, Y.shape[1])
    if lr is None:
        lr = 1.0 / float((X * X).sum(1).max())
    record_every = record_every or max(1, steps // 200)
    w_mn = min_norm_solution(X, Y)
    rng = np.random.default_rng([seed, 8])
    rows = []

    def record(step):
        rows.append(
            {
                "step": step,
                "dist_to_minnorm": float(np.linalg.norm(w - w_mn)),
                "norm": float(np.linalg.norm(w)),
                "residual": float(np.linalg.norm(X @ w - Y)),
            }
        )

    record(0)
    perm, pos = rng.permutation(n), 0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        if batch_size == 1:
            x = X[idx[0]]
            w -= (lr * (x @ w - Y[idx[0]]))[None, :] * x[:, None]
        else:
            xb = X[idx]
            w -= (lr / batch_size) * (xb.T @ (xb @ w - Y[idx]))
        if step % record_every == 0 or step == steps:
            record(step)
    return pd.DataFrame(rows)


def _features(x: np.ndarray, features: str, n_features: int, seed: int) -> np.ndarray:
    if features not in FEATURES:
        raise ValueError(f"features: {features!r} is unknown (allowed: {', '.join(FEATURES)})")
    f = x.reshape(len(x), -1).astype(np.float64) / 255.0
    if features == "rff":  # random Fourier features of the Gaussian kernel: f f^T ~ K
        import torch

        from .kernels import median_gamma

        gamma = median_gamma(torch.from_numpy(f), seed)
        rng = np.random.default_rng([seed, 10])
        w = rng.standard_normal((f.shape[1], n_features)) * np.sqrt(2.0 * gamma)
        b = rng.uniform(0.0, 2.0 * np.pi, n_features)
        f = np.sqrt(2.0 / n_features) * np.cos(f @ w + b)
    elif features == "random-conv":  # ReLU-pooled random filters, not centred (centring drops the rank)
        from .kernels import random_conv_features

        f = random_conv_features(x, n_filters=max(1, n_features // 4), seed=seed).double().numpy()
    return f / np.sqrt((f * f).sum(1).mean())


def implicit_bias_experiment(
    data: dict,
    n: int = 20,
    features: str = "pixels",
    steps: int = 20000,
    seed: int = 0,
    lr: float | None = None,
    n_features: int = 1024,
    record_every: int | None = None,
) -> pd.DataFrame:
    """SGD from zero and from a random start on n training points (one-hot targets), d > n.

    features: "pixels" (d = C H W), "rff" (n_features random Fourier features), "random-conv"
    (n_features // 4 random filters x 4 quadrants). SGD's speed is set by the smallest singular value
    of X: on digits pixels n = 20 reaches 1e-7 of ||X^+ y|| in 20,000 steps, n = 32 only 5e-2;
    "rff" with n = 100 needs ~1e5 steps for 1e-3.

    Returns the sgd_least_squares rows of both runs with columns start ("zero" / "random"),
    null_component (||P_null w_0||: the distance the random start keeps in the limit), minnorm_norm
    (||X^+ y||), n, d, features.
    """
    x, y = data["x_train"], np.asarray(data["y_train"])
    num_classes = int(y.max()) + 1
    rng = np.random.default_rng([seed, 9])
    idx = balanced_subset(y, n, num_classes, rng, "train")
    X = _features(x[idx], features, n_features, seed)
    if X.shape[1] <= n:
        raise ValueError(
            f"n = {n} points with d = {X.shape[1]} {features} features is not underdetermined (need n < d)"
        )
    Y = np.eye(num_classes)[y[idx]]
    w_mn = min_norm_solution(X, Y)
    w_rand = rng.standard_normal(w_mn.shape)
    w_rand *= np.linalg.norm(w_mn) / np.linalg.norm(w_rand)
    frames = []
    for start, w0 in (("zero", None), ("random", w_rand)):
        f = sgd_least_squares(X, Y, steps, lr=lr, w0=w0, seed=seed, record_every=record_every)
        f["start"] = start
        f["null_component"] = 0.0 if w0 is None else float(np.linalg.norm(null_projection(X, w0)))
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    out["minnorm_norm"] = float(np.linalg.norm(w_mn))
    out["n"], out["d"], out["features"] = n, X.shape[1], features
    return out


def plot_implicit(frame: pd.DataFrame):
    """Figure: distance to X^+ y and ||w|| against SGD steps, one line per start (dotted: the predicted limits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
        d = frame.assign(dist_to_minnorm=frame["dist_to_minnorm"].clip(lower=1e-16))
        sns.lineplot(data=d, x="step", y="dist_to_minnorm", hue="start", ax=ax1)
        ax1.set_yscale("log")
        ax1.set_ylabel(r"$\|w - X^+ y\|$")
        ax1.set_title("distance to the min-norm solution")
        sns.lineplot(data=frame, x="step", y="norm", hue="start", ax=ax2)
        ax2.set_ylabel(r"$\|w\|$")
        ax2.set_title("norm of the iterate")
        if "minnorm_norm" in frame:
            ax2.axhline(
                float(frame["minnorm_norm"].iloc[0]), color="black", linestyle=":", linewidth=1, label=r"$\|X^+ y\|$"
            )
            ax2.legend()
        if "null_component" in frame:
            for v in frame.loc[frame["null_component"] > 0, "null_component"].unique():
                ax1.axhline(float(v), color="black", linestyle=":", linewidth=1)
        fig.tight_layout()
    return fig
