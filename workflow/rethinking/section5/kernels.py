"""Section 5 of the paper: minimum-norm kernel interpolation ("the kernel trick" solve).

What the paper says. For a kernel matrix K (K_ij = k(x_i, x_j)) and labels
Y, every model of the form f(x) = sum_i a_i k(x_i, x) that SGD started from
zero can reach satisfies K a = Y at convergence, and this a is the
minimum-RKHS-norm interpolant; it can be computed directly by solving the
linear system K a = Y (their eq. 3), with no regularization. The paper
reports 1.2% test error on MNIST (Gaussian kernel on pixels, no
preprocessing; it notes the kernel matrix needs about 30 GB), 0.6% after a
Gabor wavelet transform; on CIFAR-10 about 46% test
error with a Gaussian kernel on pixels, 17% on the features of a random
convolutional network with 32,000 random filters, and 15% with an added
l2 penalty. It stresses that the norm of the interpolant is not predictive
of generalization (the wavelet-preprocessed MNIST solution has the larger
norm and half the test error).

Choices where the paper is silent (also in the docstrings below):

- Targets are one-hot 0/1 vectors; the prediction is the argmax over classes.
- Features: "pixels" is x / 255 flattened (native channels, no centring), with
  inputs="raw" (the default, the paper's "no preprocessing", and kernels.csv).
  inputs="network" gives the networks' inputs instead (preprocess.prepare_all:
  the center crop preprocess.crop, then per-image standardization), flattened:
  the label-noise curve of Fig. 1c (kernel_noise.csv) uses these, so the kernel
  and the networks fit the same images.
- Label noise (kernel_label_noise): the training labels at level p are
  corrupt.training_labels(y_train, p, classes, seed), i.e. exactly the labels
  of the corrupted artifact the networks train on at that level (seeded
  [seed, 2, seed key, p] by plan.corruptions), drawn on the full training split and then
  restricted to the kernel's n_train subset; levels the grid has no artifact
  for are drawn the same way. Test labels stay true.
  "random-conv" is a Coates & Ng style random network: Gaussian filters of
  size `patch` x `patch` x C (5 for images up to 16 px, else 6), each made
  zero-mean and unit-norm (so a constant brightness offset gives no response),
  applied to x / 255 with stride 1 and no padding, ReLU, average-pooled to a
  `pool` x `pool` grid (default 2: quadrants), flattened (d = 4 * n_filters)
  and standardized per feature with the training mean and std. The paper's
  32,000 filters at pool 2 would give d = 128,000, i.e. 25.6 GB of float32
  training features at n = 50,000: at that scale use pool=1 (d = 32,000).
- gamma of k(x, x') = exp(-gamma |x - x'|^2): the paper's value for MNIST
  pixels in [0, 1] is 0.02 (pass it). With gamma=None we use the median
  heuristic gamma = 1 / median |x_i - x_j|^2 over the pairs of a seeded
  sample of 1,000 training points (measured: 0.0029 on CIFAR-10 pixels, 0.106
  on the 8x8 digits; for standardized random-conv features the median
  squared distance is about 2d, i.e. gamma ~ 1/(2 d var): 0.00049 at d = 1024
  on the digits).
- Solver. "cholesky64" (default for n <= 10,000): the dense float64 kernel and
  scipy's Cholesky, first with no jitter. "blocked32" (default above): the
  kernel's lower triangle is built in float32 in row blocks straight into one
  n x n buffer, factored in place by a right-looking blocked Cholesky over
  column panels, then solved by blocked forward/back substitution on the
  same buffer; no second n x n copy is ever made. "cg": conjugate gradients
  on the stored float32 kernel (a fallback; slow when K is ill conditioned).
- Jitter. float32 factorization adds jitter = 1e-6 x mean(diag K) to the
  diagonal (mean diag is 1 for the Gaussian kernel) and, if a pivot is not
  positive, rebuilds K and retries with 10x the jitter (up to 1e-2); float64
  starts at 0 and then tries 1e-12, 1e-10, ... The jitter used is reported;
  the interpolant solves (K + (ridge + jitter) I) a = Y, and the report's
  train error, RKHS norm and relative residual ||K a + ridge a - Y|| / ||Y||
  are computed from a fresh pass over K (built again in blocks), so they
  measure what was solved, not what was intended.
- ridge > 0 solves (K + ridge I) a = Y (the paper's l2-regularized variant).

Memory / time model of the blocked solver at n training points (float32,
4 bytes), d features, t test points, b = `block` (blocked_memory_model()):
    kernel buffer       4 n^2        (n = 50,000: 10.0 GB allocated; only the
                                      lower triangle and the diagonal blocks
                                      are ever written, so ~5.2 GB of pages
                                      are touched; measured at n = 16,000:
                                      +0.82 GB RSS for a 1.02 GB buffer)
    column panels       3 x 4 n b    (L21, the triangular solve's copy of the
                                      strided panel, an update temporary;
                                      b = 2,048: 3 x 0.41 GB)
    features            4 (n + t) d  (CIFAR pixels: 0.74 GB)
    float64 K block     8 b (b + d)  (0.08 GB, for the check pass and predicting)
    ~ 12.0 GB allocated (~7.3 GB resident) at n = 50,000 on CIFAR-10 pixels,
    plus the process's data (the uint8 CIFAR-10 arrays: 0.2 GB).
    flops: building K n^2 d, factorization n^3 / 3, each refinement step and
    the check pass 2 n^2 d in float64, prediction 2 t n d in float64. Measured
    on 2 shared CPU cores, CIFAR-10 pixels, n = 12,000: build 8.6 s, Cholesky
    12.4 s (n = 16,000: 28 s, ~49 GFLOP/s), check pass 33 s, one refinement
    step 33 s. Extrapolated to n = 50,000, t = 10,000: build ~150 s,
    Cholesky ~15 min, refinement ~10 min, check ~10 min, prediction ~2.5 min:
    ~40 min in all (refine=0 saves ~10 min at ~1e-2 relative residual).
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import pandas as pd
import scipy.linalg
import torch

from ..data.corrupt import training_labels
from ..data.sources import balanced_subset
from ..engine.precision import exact_float32

FEATURES = ("pixels", "random-conv")
INPUTS = ("raw", "network")  # raw: x / 255; network: the networks' crop + per-image standardization
SOLVERS = ("auto", "cholesky64", "blocked32", "cg")
AUTO_FLOAT64_MAX_N = 10_000


class NotPositiveDefinite(RuntimeError):
    """A Cholesky pivot was not positive; `column` is where the factorization stopped."""

    def __init__(self, column: int, jitter: float):
        super().__init__(f"kernel matrix not positive definite at column {column} with jitter {jitter:.3g}")
        self.column = column
        self.jitter = jitter


# ----------------------------------------------------------------------------
# features


def pixel_features(x: np.ndarray, device="cpu") -> torch.Tensor:
    """x / 255 flattened, float32 (N, C*H*W)."""
    return torch.from_numpy(np.ascontiguousarray(x).reshape(len(x), -1)).to(device=device, dtype=torch.float32) / 255.0


def random_filters(n_filters: int, channels: int, patch: int, seed: int) -> torch.Tensor:
    """(n_filters, C, patch, patch) Gaussian filters, each zero-mean and unit L2 norm, from a CPU generator."""
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(n_filters, channels, patch, patch, generator=g, dtype=torch.float32)
    w -= w.mean(dim=(1, 2, 3), keepdim=True)
    w /= w.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]
    return w


def random_conv_features(
    x: np.ndarray,
    n_filters: int = 256,
    patch: int | None = None,
    pool: int = 2,
    seed: int = 0,
    device="cpu",
    mem_bytes: int = 256 << 20,
) -> torch.Tensor:
    """Unstandardized random-convolution features, float32 (N, n_filters * pool * pool).

    conv2d(x / 255, random filters) -> ReLU -> adaptive average pooling to pool x pool,
    computed in image batches x filter chunks so the response maps stay under `mem_bytes`.
    The layout is (filter, pool row, pool col) per image. Same seed, same features.
    """
    n, c, h, w = x.shape
    patch = patch or (5 if max(h, w) <= 16 else 6)
    if patch > min(h, w):
        raise ValueError(f"patch {patch} is larger than the images ({h}x{w})")
    ho, wo = h - patch + 1, w - patch + 1
    if pool > min(ho, wo):
        raise ValueError(f"pool {pool} is larger than the {ho}x{wo} response maps")
    filters = random_filters(n_filters, c, patch, seed).to(device)
    out = torch.empty(n, n_filters, pool * pool, dtype=torch.float32, device=device)
    per_image_filter = ho * wo * 4
    chunk = max(1, min(n_filters, mem_bytes // (per_image_filter * 64)))
    batch = max(1, min(n, mem_bytes // (per_image_filter * chunk)))
    with torch.no_grad(), exact_float32():  # cuDNN's default TF32 would make these ~1e-3 off the CPU's
        for i in range(0, n, batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device=device, dtype=torch.float32) / 255.0
            for f in range(0, n_filters, chunk):
                r = torch.nn.functional.conv2d(xb, filters[f : f + chunk]).clamp_min_(0)
                out[i : i + batch, f : f + chunk] = torch.nn.functional.adaptive_avg_pool2d(r, pool).flatten(2)
    return out.reshape(n, -1)


def _column_stats(f: torch.Tensor, block: int = 4096):
    """Per-column mean and std (float64 accumulation, row blocks, no full copy)."""
    s = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
    s2 = torch.zeros_like(s)
    for i in range(0, len(f), block):
        fb = f[i : i + block].double()
        s += fb.sum(0)
        s2 += (fb * fb).sum(0)
    mean = s / len(f)
    var = (s2 / len(f) - mean * mean).clamp_min(0)
    return mean, var.sqrt()


def standardize(ftr: torch.Tensor, fte: torch.Tensor, eps: float = 1e-6):
    """In place: subtract the training mean and divide by the training std (constant features become 0)."""
    mean, std = _column_stats(ftr)
    mean, scale = mean.float(), (1.0 / std.clamp_min(eps)).float()
    for f in (ftr, fte):
        for i in range(0, len(f), 4096):
            f[i : i + 4096].sub_(mean).mul_(scale)
    return ftr, fte


def network_pixel_features(x: np.ndarray, crop: int | None, device="cpu") -> torch.Tensor:
    """The networks' inputs flattened, float32 (N, C*crop*crop): preprocess.prepare_all (center crop, x / 255,
    per-image standardization), the values the training engine evaluates on."""
    from ..data.preprocess import prepare_all

    return prepare_all(torch.from_numpy(np.ascontiguousarray(x)).to(device), crop).reshape(len(x), -1)


def make_features(
    x_train: np.ndarray,
    x_test: np.ndarray,
    features: str = "pixels",
    n_filters: int = 256,
    pool: int = 2,
    patch: int | None = None,
    seed: int = 0,
    device="cpu",
    inputs: str = "raw",
    crop: int | None = None,
):
    """(train, test) float32 feature tensors for `features` in FEATURES, from `inputs` in INPUTS.

    inputs="network" (features "pixels" only) uses the networks' preprocessing with center crop `crop`.
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs: {inputs!r} is unknown (allowed: {', '.join(INPUTS)})")
    if inputs == "network":
        if features != "pixels":
            raise ValueError(f"inputs='network' is only for features='pixels', not {features!r}")
        return network_pixel_features(x_train, crop, device), network_pixel_features(x_test, crop, device)
    if features == "pixels":
        return pixel_features(x_train, device), pixel_features(x_test, device)
    if features == "random-conv":
        ftr = random_conv_features(x_train, n_filters, patch, pool, seed, device)
        fte = random_conv_features(x_test, n_filters, patch, pool, seed, device)
        return standardize(ftr, fte)
    raise ValueError(f"features: {features!r} is unknown (allowed: {', '.join(FEATURES)})")


def median_gamma(f: torch.Tensor, seed: int = 0, sample: int = 1000) -> float:
    """gamma = 1 / median squared distance over the pairs of a seeded sample of rows."""
    rng = np.random.default_rng([seed, 5])
    idx = np.sort(rng.choice(len(f), size=min(sample, len(f)), replace=False))
    s = f[torch.from_numpy(idx).to(f.device)].double()
    d2 = torch.cdist(s, s).pow(2)
    iu = torch.triu_indices(len(s), len(s), offset=1, device=s.device)
    med = float(d2[iu[0], iu[1]].median())
    if not med > 0:
        raise ValueError("median gamma: the sampled points are all identical")
    return 1.0 / med


# ----------------------------------------------------------------------------
# kernel blocks


def _sqnorms(f: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """Squared row norms, float64 (accumulated over row blocks)."""
    return torch.cat([(f[i : i + block].double() ** 2).sum(1) for i in range(0, len(f), block)])


def _kernel_rows(
    out: torch.Tensor, xb: torch.Tensor, xnb: torch.Tensor, z: torch.Tensor, zn: torch.Tensor, gamma: float
) -> torch.Tensor:
    """out <- exp(-gamma |xb_i - z_j|^2), in place (out may be a strided view); norms in out's dtype."""
    if out.is_contiguous():
        torch.mm(xb, z.T, out=out)
    else:
        out.copy_(xb @ z.T)
    out.mul_(-2.0).add_(xnb[:, None]).add_(zn[None, :]).clamp_(min=0.0).mul_(-gamma).exp_()
    return out


@exact_float32()
def gaussian_kernel(
    x: torch.Tensor,
    z: torch.Tensor,
    gamma: float,
    block: int = 2048,
    out: torch.Tensor | None = None,
    lower: bool = False,
) -> torch.Tensor:
    """K(x, z) = exp(-gamma |x_i - z_j|^2) in x's dtype, built in row blocks (temporaries O(block x m)).

    lower=True (x is z, square K): only the row blocks' columns up to their diagonal are written (the
    lower triangle plus the upper halves of the diagonal blocks); the rest of `out` is left as it was
    (the blocked Cholesky never reads it). The diagonal is set to exactly 1.
    """
    n, m = len(x), len(z)
    if out is None:
        out = (torch.zeros if lower else torch.empty)(n, m, dtype=x.dtype, device=x.device)
    xn = _sqnorms(x).to(x.dtype)
    zn = xn if z is x else _sqnorms(z).to(x.dtype)
    for i in range(0, n, block):
        j = min(i + block, n)
        cols = j if lower else m
        _kernel_rows(out[i:j, :cols], x[i:j], xn[i:j], z[:cols], zn[:cols], gamma)
        if lower:
            idx = torch.arange(i, j, device=out.device)
            out[idx, idx] = 1.0
    if not lower and z is x:
        out.diagonal().fill_(1.0)
    return out


def kernel_matmul(
    x: torch.Tensor,
    z: torch.Tensor,
    gamma: float,
    a: torch.Tensor,
    block: int = 2048,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """K(x, z) @ a in `dtype` without storing K: blocks of K (block x block) are built, used and dropped.

    Features are cast to `dtype` one block at a time, so float32 features never get a float64 copy.
    float64 (the default) makes the residual of a float32 solve measurable: float32 kernel entries
    carry ~1e-7 relative error, which times a large ||a|| swamps the residual.
    """
    a = a.to(device=x.device, dtype=dtype)
    xn, zn = _sqnorms(x).to(dtype), _sqnorms(z).to(dtype)
    out = torch.zeros(len(x), a.shape[1], dtype=dtype, device=x.device)
    buf = torch.empty(min(block, len(x)), min(block, len(z)), dtype=dtype, device=x.device)
    for c in range(0, len(z), block):
        c2 = min(c + block, len(z))
        zc = z[c:c2].to(dtype)
        for i in range(0, len(x), block):
            j = min(i + block, len(x))
            kb = _kernel_rows(buf[: j - i, : c2 - c], x[i:j].to(dtype), xn[i:j], zc, zn[c:c2], gamma)
            out[i:j] += kb @ a[c:c2]
    return out


# ----------------------------------------------------------------------------
# blocked in-place Cholesky and triangular solves (lower triangle only)


@exact_float32()
def blocked_cholesky_(a: torch.Tensor, block: int = 2048, jitter: float = 0.0) -> torch.Tensor:
    """Factor a = L L^T in place, right-looking over column panels; returns a (its lower triangle is L).

    Only the lower triangle of `a` is read and written (diagonal blocks get zeros above the diagonal);
    `jitter` is added to the diagonal first. Extra memory: one n x block panel. Raises
    NotPositiveDefinite with the failing column.
    """
    n = a.shape[0]
    if jitter:
        a.diagonal().add_(jitter)
    for k in range(0, n, block):
        e = min(k + block, n)
        d = a[k:e, k:e]
        low = torch.tril(d)
        low = low + torch.tril(low, -1).T  # symmetric from the lower triangle
        l11, info = torch.linalg.cholesky_ex(low)
        if int(info) != 0:
            raise NotPositiveDefinite(k + int(info) - 1, jitter)
        d.copy_(l11)
        if e == n:
            break
        # L21 = A21 L11^{-T}
        l21 = torch.linalg.solve_triangular(l11.T, a[e:, k:e], upper=True, left=False)
        a[e:, k:e] = l21
        # trailing lower triangle: A22 -= L21 L21^T, one row block at a time (columns up to the block's end)
        for i in range(e, n, block):
            i2 = min(i + block, n)
            a[i:i2, e:i2].addmm_(l21[i - e : i2 - e], l21[: i2 - e].T, alpha=-1.0)
        del l21
    return a


@exact_float32()
def cholesky_solve_blocked(factor: torch.Tensor, y: torch.Tensor, block: int = 2048):
    """Solve L L^T x = y with L the lower triangle of `factor`; returns (x, z) with z = L^{-1} y."""
    n = factor.shape[0]
    y = y.to(factor.dtype)
    z = torch.empty_like(y)
    for i in range(0, n, block):
        j = min(i + block, n)
        rhs = y[i:j] - factor[i:j, :i] @ z[:i] if i else y[i:j].clone()
        z[i:j] = torch.linalg.solve_triangular(torch.tril(factor[i:j, i:j]), rhs, upper=False)
    x = torch.empty_like(z)
    starts = list(range(0, n, block))
    for i in reversed(starts):
        j = min(i + block, n)
        rhs = z[i:j] - factor[j:, i:j].T @ x[j:] if j < n else z[i:j].clone()
        x[i:j] = torch.linalg.solve_triangular(torch.tril(factor[i:j, i:j]).T, rhs, upper=True)
    return x, z


def conjugate_gradients(matvec, y: torch.Tensor, tol: float = 1e-6, max_iter: int = 1000):
    """Independent CG on every column of y (vectorized); returns (x, iterations, max relative residual)."""
    x = torch.zeros_like(y)
    r = y.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    ynorm = y.norm(dim=0).clamp_min(1e-30)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (the count of iterations is returned)
        ap = matvec(p)
        alpha = rr / (p * ap).sum(0).clamp_min(1e-30)
        x += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(0)
        if float((rr_new.sqrt() / ynorm).max()) < tol:
            rr = rr_new
            break
        p = r + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return x, it, float((rr.sqrt() / ynorm).max())


# ----------------------------------------------------------------------------
# the solve


@exact_float32()
def solve_interpolant(
    ftr: torch.Tensor,
    y: torch.Tensor,
    gamma: float,
    ridge: float = 0.0,
    solver: str = "auto",
    block: int = 2048,
    jitter: float | None = None,
    refine: int | None = None,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 2000,
) -> dict:
    """a with (K + ridge I) a = y up to the jitter, K the Gaussian kernel of the rows of ftr.

    solver: "auto" (cholesky64 up to n = 10,000, else blocked32), "cholesky64", "blocked32", "cg".
    jitter: None for the schedule in the module docstring, or a fixed value (no retries).
    refine: steps of iterative refinement for blocked32 (None: 1): r = y - (K + ridge I) a with K
    rebuilt in float64 block by block, a += (L L^T)^{-1} r. Each step costs one pass over K (2 n^2 d
    flops in float64) and moves a from the jittered system toward the exact one.
    Returns dict(a (float64, n x k), jitter, solver, attempts, refine, factor_seconds[, cg_iterations,
    cg_residual]).
    """
    n = len(ftr)
    if solver not in SOLVERS:
        raise ValueError(f"solver: {solver!r} is unknown (allowed: {', '.join(SOLVERS)})")
    if solver == "auto":
        solver = "cholesky64" if n <= AUTO_FLOAT64_MAX_N else "blocked32"
    t0 = time.perf_counter()
    if solver == "cholesky64":
        info = _solve_cholesky64(ftr, y, gamma, ridge, block, jitter)
    elif solver == "blocked32":
        info = _solve_blocked32(ftr, y, gamma, ridge, block, jitter, refine)
    else:  # cg
        f = ftr.float()
        buf = gaussian_kernel(f, f, gamma, block)
        jit = 0.0 if jitter is None else float(jitter)
        if ridge + jit:
            buf.diagonal().add_(ridge + jit)
        x, iters, res = conjugate_gradients(lambda p: buf @ p, y.float().to(buf.device), cg_tol, cg_max_iter)
        del buf
        info = dict(a=x.double().cpu(), jitter=jit, attempts=1, refine=0, cg_iterations=iters, cg_residual=res)
    info["solver"] = solver
    info["factor_seconds"] = time.perf_counter() - t0
    return info


def _solve_cholesky64(ftr, y, gamma: float, ridge: float, block: int, jitter: float | None) -> dict:
    """LAPACK's Cholesky in float64 on the CPU, with the jitter schedule (or one fixed jitter)."""
    n = len(ftr)
    f = ftr.double().cpu()
    k = gaussian_kernel(f, f, gamma, block).numpy()
    k[np.diag_indices(n)] += ridge
    schedule = [float(jitter)] if jitter is not None else [0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4]
    for attempt, jit in enumerate(schedule, 1):
        kj = k.copy()
        kj[np.diag_indices(n)] += jit
        try:
            c = scipy.linalg.cho_factor(kj, lower=True, overwrite_a=True, check_finite=False)
            break
        except np.linalg.LinAlgError:
            if attempt == len(schedule):
                raise NotPositiveDefinite(-1, jit) from None
    del k
    a = scipy.linalg.cho_solve(c, y.double().cpu().numpy(), check_finite=False)
    return dict(a=torch.from_numpy(a), jitter=jit, attempts=attempt, refine=0)


def _solve_blocked32(ftr, y, gamma: float, ridge: float, block: int, jitter: float | None, refine: int | None) -> dict:
    """The blocked float32 Cholesky in place on the features' device, with jitter retries and iterative
    refinement against the float64 kernel."""
    n = len(ftr)
    f = ftr.float()
    jit = 1e-6 if jitter is None else float(jitter)  # relative to mean diag = 1 (Gaussian kernel)
    refine = 1 if refine is None else int(refine)
    # uninitialized: only the lower triangle is ever written, so about half the pages are touched
    buf = torch.empty(n, n, dtype=torch.float32, device=f.device)
    attempt, t_build, t_chol = 0, 0.0, 0.0
    while True:
        attempt += 1
        t1 = time.perf_counter()
        gaussian_kernel(f, f, gamma, block, out=buf, lower=True)
        if ridge:
            buf.diagonal().add_(ridge)
        t2 = time.perf_counter()
        t_build += t2 - t1
        try:
            blocked_cholesky_(buf, block, jit)
            t_chol += time.perf_counter() - t2
            break
        except NotPositiveDefinite:
            t_chol += time.perf_counter() - t2
            if jitter is not None or jit >= 1e-2:
                raise
            jit *= 10.0
    t1 = time.perf_counter()
    yd = y.to(device=buf.device, dtype=torch.float64)
    x = cholesky_solve_blocked(buf, yd, block)[0].double()
    t_solve = time.perf_counter() - t1
    for _ in range(refine):  # iterative refinement against K + ridge I (removes most of the jitter's bias)
        r = yd - kernel_matmul(f, f, gamma, x, block) - ridge * x  # float64 kernel
        x += cholesky_solve_blocked(buf, r, block)[0].double()
    del buf
    return dict(
        a=x.cpu(),
        jitter=jit,
        attempts=attempt,
        refine=refine,
        timings={"build": t_build, "cholesky": t_chol, "solve": t_solve, "refine": time.perf_counter() - t1 - t_solve},
    )


def blocked_memory_model(n: int, d: int, n_test: int = 0, block: int = 2048) -> dict:
    """Bytes the blocked32 path holds at once (the terms of the module docstring) and its flop counts."""
    terms = {
        "kernel_buffer": 4 * n * n,
        "kernel_buffer_touched": 4 * (n * (n + 1) // 2 + n * block // 2),  # lower triangle + diagonal blocks
        "panels": 3 * 4 * n * block,  # L21, the solve's copy of the strided panel, a trailing-update temporary
        "features": 4 * (n + n_test) * d,
        "kernel_block_float64": 8 * block * block + 8 * block * d,
        "solution_float64": 8 * n * 3 * 10,  # a, the residual and a solve's temporaries for 10 classes
    }
    peak = (
        terms["kernel_buffer"]
        + terms["panels"]
        + terms["features"]
        + terms["kernel_block_float64"]
        + terms["solution_float64"]
    )
    flops = {
        "build": float(n) * n * d,
        "factor": n**3 / 3.0,
        "check_pass_float64": 2.0 * n * n * d,
        "predict_float64": 2.0 * n_test * n * d,
    }
    return {"bytes": terms, "peak_bytes": peak, "peak_gb": peak / 1e9, "flops": flops}


def _one_hot(y: np.ndarray, num_classes: int) -> torch.Tensor:
    out = torch.zeros(len(y), num_classes, dtype=torch.float64)
    out[torch.arange(len(y)), torch.from_numpy(np.asarray(y, dtype=np.int64))] = 1.0
    return out


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _prepare(
    data: dict,
    features,
    gamma,
    n_train,
    n_test,
    seed,
    n_filters,
    pool,
    patch,
    device,
    inputs="raw",
    crop=None,
    num_classes=None,
):
    """Subsets, features and gamma; also the training subset's indices into data's y_train (None: all)."""
    xtr, ytr, xte, yte = data["x_train"], np.asarray(data["y_train"]), data["x_test"], np.asarray(data["y_test"])
    num_classes = num_classes or int(max(ytr.max(), yte.max())) + 1
    rng = np.random.default_rng([seed, 4])
    train_index = None
    if n_train is not None and n_train < len(ytr):
        train_index = balanced_subset(ytr, n_train, num_classes, rng, "train")
        xtr, ytr = xtr[train_index], ytr[train_index]
    if n_test is not None and n_test < len(yte):
        i = balanced_subset(yte, n_test, num_classes, rng, "test")
        xte, yte = xte[i], yte[i]
    ftr, fte = make_features(
        xtr,
        xte,
        features,
        n_filters=n_filters,
        pool=pool,
        patch=patch,
        seed=seed,
        device=device,
        inputs=inputs,
        crop=crop,
    )
    if gamma is None:
        gamma = median_gamma(ftr, seed)
    return ftr, fte, ytr, yte, num_classes, float(gamma), train_index


def _fit(ftr, fte, targets: list[np.ndarray], num_classes, gamma, ridge, solver, block, jitter, refine):
    """One factorization for several label vectors; per target: a, train/test predictions, norm, residual."""
    y = torch.cat([_one_hot(t, num_classes) for t in targets], dim=1)
    sol = solve_interpolant(ftr, y, gamma, ridge, solver, block, jitter, refine)
    a = sol["a"]
    # the check pass: K a from a fresh float64 build of K, block by block
    t0 = time.perf_counter()
    ka = kernel_matmul(ftr, ftr, gamma, a, block).cpu()
    t1 = time.perf_counter()
    test_pred = kernel_matmul(fte, ftr, gamma, a, block).cpu()
    sol.setdefault("timings", {}).update(check=t1 - t0, predict=time.perf_counter() - t1)
    out = []
    for g in range(len(targets)):
        cols = slice(g * num_classes, (g + 1) * num_classes)
        yg, ag, kag = y[:, cols], a[:, cols], ka[:, cols]
        out.append(
            {
                "train_pred": kag.argmax(1).numpy(),
                "test_pred": test_pred[:, cols].argmax(1).numpy(),
                "norm": math.sqrt(max(float((ag * kag).sum()), 0.0)),
                "residual": float((kag + ridge * ag - yg).norm() / yg.norm()),
            }
        )
    return sol, out


def run_kernel(
    data: dict,
    features: str = "pixels",
    gamma: float | None = None,
    ridge: float = 0.0,
    n_train: int | None = None,
    seed: int = 0,
    n_filters: int = 256,
    device="cpu",
    block: int = 2048,
    solver: str = "auto",
    jitter: float | None = None,
    n_test: int | None = None,
    pool: int = 2,
    patch: int | None = None,
    refine: int | None = None,
) -> dict:
    """Min-norm (ridge = 0) or ridge kernel interpolation of the training labels; errors in percent.

    data: x_train, x_test uint8 (N, C, H, W); y_train, y_test int. n_train / n_test take seeded
    class-balanced subsets. Returns test_error, train_error, norm (sqrt(trace(a^T K a))), n_train, n_test,
    d, features, gamma, ridge, jitter, solver, seconds, peak_rss_gb (the process's peak so far), residual.
    """
    t0 = time.perf_counter()
    ftr, fte, ytr, yte, num_classes, gamma, _ = _prepare(
        data, features, gamma, n_train, n_test, seed, n_filters, pool, patch, device
    )
    sol, (res,) = _fit(ftr, fte, [ytr], num_classes, gamma, ridge, solver, block, jitter, refine)
    out = {
        "test_error": 100.0 * float(np.mean(res["test_pred"] != yte)),
        "train_error": 100.0 * float(np.mean(res["train_pred"] != ytr)),
        "norm": res["norm"],
        "residual": res["residual"],
        "n_train": int(len(ytr)),
        "n_test": int(len(yte)),
        "d": int(ftr.shape[1]),
        "features": features,
        "gamma": gamma,
        "ridge": float(ridge),
        "jitter": sol["jitter"],
        "solver": sol["solver"],
        "attempts": sol["attempts"],
        "refine": sol["refine"],
        "factor_seconds": sol["factor_seconds"],
        "timings": {k: round(v, 3) for k, v in sol["timings"].items()},
        "seconds": time.perf_counter() - t0,
        "peak_rss_gb": _peak_rss_gb(),
    }
    if "cg_iterations" in sol:
        out.update(cg_iterations=sol["cg_iterations"], cg_residual=sol["cg_residual"])
    return out


def kernel_label_noise(
    data: dict,
    levels,
    features: str = "pixels",
    gamma: float | None = None,
    ridge: float = 0.0,
    n_train: int | None = None,
    seed: int = 0,
    n_filters: int = 256,
    device="cpu",
    block: int = 2048,
    solver: str = "auto",
    jitter: float | None = None,
    n_test: int | None = None,
    pool: int = 2,
    patch: int | None = None,
    refine: int | None = None,
    inputs: str = "raw",
    crop: int | None = None,
    num_classes: int | None = None,
) -> pd.DataFrame:
    """Interpolate the networks' noisy training labels at each level; test labels stay true.

    The labels at level p are corrupt.training_labels(data's y_train, p, num_classes, seed): those of the
    corrupted artifact Corruption.make("labels", p) of a base artifact holding `data` with dataset seed
    `seed` (drawn on the whole training split, then restricted to the n_train subset). num_classes is the
    artifact's class count (default: len(data["classes"]) when present, else the largest label + 1).
    inputs / crop: as make_features (the stage passes "network" and preprocess.crop).
    K does not depend on the labels, so one factorization serves every level. Columns: level, test_error,
    train_error, norm, residual, labels_changed, n_train, gamma, jitter, solver, inputs, crop.
    """
    if num_classes is None and data.get("classes") is not None:
        num_classes = len(data["classes"])
    ftr, fte, ytr, yte, num_classes, gamma, idx = _prepare(
        data, features, gamma, n_train, n_test, seed, n_filters, pool, patch, device, inputs, crop, num_classes
    )
    levels = [float(p) for p in levels]
    y_full = np.asarray(data["y_train"])
    noisy = []
    for p in levels:
        yn = np.asarray(training_labels(y_full, p, num_classes, seed), dtype=np.int64)
        noisy.append(yn if idx is None else yn[idx])
    sol, res = _fit(ftr, fte, noisy, num_classes, gamma, ridge, solver, block, jitter, refine)
    rows = []
    for p, yn, r in zip(levels, noisy, res):
        rows.append(
            {
                "level": p,
                "test_error": 100.0 * float(np.mean(r["test_pred"] != yte)),
                "train_error": 100.0 * float(np.mean(r["train_pred"] != yn)),
                "norm": r["norm"],
                "residual": r["residual"],
                "labels_changed": float(np.mean(yn != ytr)),
                "n_train": int(len(ytr)),
                "gamma": gamma,
                "jitter": sol["jitter"],
                "solver": sol["solver"],
                "inputs": inputs,
                "crop": crop if inputs == "network" else None,
            }
        )
    return pd.DataFrame(rows)


def plot_kernel_noise(frame: pd.DataFrame):
    """Figure: test (and train) error (%) against label corruption; the RKHS norm on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4))
        sns.lineplot(data=frame, x="level", y="test_error", marker="o", ax=ax1, label="test")
        sns.lineplot(data=frame, x="level", y="train_error", marker="s", ax=ax1, label="train", linestyle="--")
        ax1.set_xlabel("label corruption")
        ax1.set_ylabel("error (%)")
        ax1.set_ylim(0, 100)
        ax1.set_xlim(-0.02, 1.02)
        ax1.set_title("min-norm kernel interpolation")
        sns.lineplot(data=frame, x="level", y="norm", marker="o", ax=ax2)
        ax2.set_xlabel("label corruption")
        ax2.set_ylabel(r"RKHS norm $\sqrt{\mathrm{tr}(a^\top K a)}$")
        ax2.set_xlim(-0.02, 1.02)
        ax2.set_title("norm of the interpolant")
        fig.tight_layout()
    return fig
