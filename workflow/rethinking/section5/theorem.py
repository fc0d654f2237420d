"""Theorem 1 of the paper: finite-sample expressivity of a depth-2 ReLU network.

What the paper says. There exists a two-layer neural network with ReLU
activations and 2n + d weights that can represent any function on a sample
of size n in d dimensions. The proof's network is

    c(x) = sum_{j=1..n} w_j max(<a, x> - b_j, 0),   a in R^d, b, w in R^n,

built as follows: choose a so that the projections x_i = <a, z_i> of the n
sample points are distinct (almost every a does this when the points are
distinct), sort them x_(1) < ... < x_(n), and choose thresholds interleaved
with them, b_1 < x_(1) < b_2 < x_(2) < ... < b_n < x_(n). Then the n x n
matrix A_ij = max(x_(i) - b_j, 0) is lower triangular with a positive
diagonal, hence full rank, and w = A^{-1} y fits any labels y exactly.

Choices where the paper is silent:

- a is a seeded standard Gaussian vector scaled to unit norm, redrawn (up to
  `max_draws` times) until the sorted projections are separated by more than
  64 machine epsilons of their largest magnitude (the paper's "distinct",
  made resolvable in float64). Duplicate sample points can never be
  separated: they raise ValueError naming the rows.
- b_j = (x_(j-1) + x_(j)) / 2 (the middle of each gap) for j >= 2 and
  b_1 = x_(1) - (x_(2) - x_(1)) (one gap below the smallest projection; 1 when
  n = 1). The diagonal of A is then the half-gaps (the first: a full gap).
- w is found by forward substitution (scipy.linalg.solve_triangular) in
  float64; A is formed explicitly (8 n^2 bytes: fine up to n ~ 20,000).
- condition_number is the 2-norm condition number of A (np.linalg.cond) for
  n <= 4,000, above that LAPACK's 1-norm estimate for triangular matrices
  (dtrcon); condition_kind says which.
- The sweep uses training images flattened and scaled to [0, 1] (float64),
  a seeded random subset of size n, and labels as float class indices: the
  true ones or uniformly random ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.linalg

COND_EXACT_MAX_N = 4000


def _check_inputs(z: np.ndarray, y: np.ndarray):
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if z.ndim != 2:
        raise ValueError(f"Z must be 2-D (n, d); got shape {z.shape}")
    if len(y) != len(z):
        raise ValueError(f"y has {len(y)} values but Z has {len(z)} rows")
    if len(z) == 0:
        raise ValueError("Z has no rows")
    if not (np.isfinite(z).all() and np.isfinite(y).all()):
        raise ValueError("Z and y must be finite")
    _, first, inverse = np.unique(z, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(first) < len(z):
        dup = int(np.flatnonzero(first[inverse] != np.arange(len(z)))[0])
        raise ValueError(
            f"Z has duplicate rows (e.g. rows {int(first[inverse[dup]])} and {dup}): no projection "
            "can separate equal points, and Theorem 1 needs n distinct points "
            f"({len(first)} distinct of {len(z)})"
        )
    return z, y


def _thresholds(xs: np.ndarray) -> np.ndarray:
    """b_1 < x_(1) < b_2 < x_(2) < ... for sorted projections xs."""
    b = np.empty_like(xs)
    b[1:] = 0.5 * (xs[:-1] + xs[1:])
    b[0] = xs[0] - (xs[1] - xs[0] if len(xs) > 1 else 1.0)
    return b


def _direction(z: np.ndarray, seed: int, max_draws: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 6])
    for _ in range(max_draws):
        a = rng.standard_normal(z.shape[1])
        a /= np.linalg.norm(a)
        xs = np.sort(z @ a)
        tol = 64 * np.finfo(np.float64).eps * max(1.0, float(np.abs(xs).max()))
        if len(xs) < 2 or float(np.diff(xs).min()) > tol:
            return a
    raise ValueError(
        f"no direction among {max_draws} random draws separates the {len(z)} points "
        "(their projections coincide to float64 resolution)"
    )


def design_matrix(z: np.ndarray, a: np.ndarray, b: np.ndarray, sort: bool = True) -> np.ndarray:
    """A_ij = max(<a, z_i> - b_j, 0); rows in sorted projection order (lower triangular) when sort=True."""
    x = np.asarray(z, dtype=np.float64) @ a
    if sort:
        x = np.sort(x)
    return np.maximum(x[:, None] - b[None, :], 0.0)


def construct(Z: np.ndarray, y: np.ndarray, seed: int = 0, max_draws: int = 100):
    """(a, b, w) of Theorem 1's network fitting y on the rows of Z exactly (float64)."""
    z, y = _check_inputs(Z, y)
    a = _direction(z, seed, max_draws)
    x = z @ a
    order = np.argsort(x, kind="stable")
    b = _thresholds(x[order])
    A = np.maximum(x[order][:, None] - b[None, :], 0.0)
    A = np.tril(A)  # exact zeros above the diagonal already; tril makes the structure explicit
    w = scipy.linalg.solve_triangular(A, y[order], lower=True, check_finite=False)
    return a, b, w


def evaluate(Z: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray, block: int = 2048) -> np.ndarray:
    """c(z) = sum_j w_j max(<a, z> - b_j, 0) for every row of Z (row blocks bound the memory)."""
    x = np.asarray(Z, dtype=np.float64) @ a
    out = np.empty(len(x))
    for i in range(0, len(x), block):
        out[i : i + block] = np.maximum(x[i : i + block, None] - b[None, :], 0.0) @ w
    return out


def weights_count(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> int:
    """Number of weights of the network: d + 2n."""
    return int(np.size(a) + np.size(b) + np.size(w))


def condition_number(A: np.ndarray) -> tuple[float, str]:
    """(cond, kind): 2-norm condition number up to COND_EXACT_MAX_N, else a 1-norm estimate (dtrcon)."""
    if len(A) <= COND_EXACT_MAX_N:
        return float(np.linalg.cond(A)), "2-norm"
    rcond, info = scipy.linalg.lapack.dtrcon(np.asfortranarray(A), norm="1", uplo="L", diag="N")
    if info != 0:
        raise RuntimeError(f"dtrcon failed (info={info})")
    return (float(1.0 / rcond) if rcond > 0 else float("inf")), "1-norm estimate"


def theorem_report(Z: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Build the network for (Z, y) and report n, d, weights, max_abs_error, condition_number(_kind)."""
    z, y = _check_inputs(Z, y)
    a, b, w = construct(z, y, seed)
    err = float(np.abs(evaluate(z, a, b, w) - y).max())
    cond, kind = condition_number(design_matrix(z, a, b, sort=True))
    return {
        "n": int(len(z)),
        "d": int(z.shape[1]),
        "weights": weights_count(a, b, w),
        "max_abs_error": err,
        "condition_number": cond,
        "condition_kind": kind,
        "max_abs_weight": float(np.abs(w).max()),
    }


def theorem_sweep(data: dict, ns, labels: str = "random", seed: int = 0) -> pd.DataFrame:
    """Theorem 1 on nested seeded subsets of the training images, one row per n.

    Z = x_train flattened / 255 (float64); labels "true" (class indices) or "random" (uniform class
    indices, drawn once for the largest n, so subsets are nested). Columns: n, d, weights, max_abs_error,
    condition_number, condition_kind, max_abs_weight, labels.
    """
    if labels not in ("random", "true"):
        raise ValueError(f"labels: {labels!r} is unknown (allowed: random, true)")
    x, ytrue = data["x_train"], np.asarray(data["y_train"])
    ns = [int(n) for n in ns]
    if max(ns) > len(x):
        raise ValueError(f"n = {max(ns)} is larger than the training split ({len(x)} images)")
    num_classes = int(ytrue.max()) + 1
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(x))[: max(ns)]
    z_all = x[order].reshape(len(order), -1).astype(np.float64) / 255.0
    y_all = (
        ytrue[order].astype(np.float64)
        if labels == "true"
        else rng.integers(0, num_classes, size=len(order)).astype(np.float64)
    )
    rows = []
    for n in ns:
        rep = theorem_report(z_all[:n], y_all[:n], seed)
        rep["labels"] = labels
        rows.append(rep)
    return pd.DataFrame(rows)


def plot_theorem(frame: pd.DataFrame):
    """Figure: condition number of A and the max abs fitting error against n (both log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    hue = "labels" if "labels" in frame and frame["labels"].nunique() > 1 else None
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
        sns.lineplot(data=frame, x="n", y="condition_number", hue=hue, marker="o", ax=ax1)
        ax1.set_yscale("log")
        ax1.set_xscale("log")
        ax1.set_ylabel("condition number of A")
        ax1.set_title("Theorem 1: conditioning")
        d = frame.assign(max_abs_error=frame["max_abs_error"].clip(lower=1e-18))  # exact zeros on a log axis
        sns.lineplot(data=d, x="n", y="max_abs_error", hue=hue, marker="o", ax=ax2)
        ax2.set_yscale("log")
        ax2.set_xscale("log")
        ax2.set_ylabel("max |c(z_i) - y_i|")
        ax2.set_title("Theorem 1: fitting error (float64)")
        fig.tight_layout()
    return fig
