"""Section 5: min-norm kernel interpolation, the blocked float32 solver and random-conv features."""

import numpy as np
import pytest
import torch

from rethinking.section5.kernels import (
    NotPositiveDefinite,
    blocked_cholesky_,
    cholesky_solve_blocked,
    gaussian_kernel,
    kernel_label_noise,
    kernel_matmul,
    make_features,
    plot_kernel_noise,
    random_conv_features,
    run_kernel,
)


@pytest.fixture(scope="module")
def full_pixels(digits):
    return run_kernel(digits, features="pixels", gamma=0.02)


def test_pixels_interpolate_and_generalize(full_pixels):
    r = full_pixels
    assert r["n_train"] == 1437 and r["n_test"] == 360 and r["d"] == 64
    assert r["solver"] == "cholesky64" and r["jitter"] == 0.0
    assert r["train_error"] == 0.0  # K a = Y: every training label is reproduced
    assert r["residual"] < 1e-8
    assert r["test_error"] < 5.0  # measured 1.39% (5 of 360)
    assert r["norm"] > 0 and r["peak_rss_gb"] > 0


def test_blocked32_solver_matches_float64_on_digits(digits, full_pixels):
    r = run_kernel(digits, features="pixels", gamma=0.02, solver="blocked32", block=512)  # 3 panels, ragged
    assert r["solver"] == "blocked32" and r["jitter"] == pytest.approx(1e-6)
    assert r["train_error"] == 0.0
    assert abs(r["test_error"] - full_pixels["test_error"]) <= 0.6  # at most 2 of 360 test points differ
    assert r["residual"] < 1e-2  # cond(K) ~ 1e8 here: float32 + one refinement step
    assert r["norm"] == pytest.approx(full_pixels["norm"], rel=1e-2)


def test_blocked_cholesky_agrees_with_float64():
    rng = np.random.default_rng(0)
    n = 300
    x = rng.standard_normal((n, 10))
    k = np.exp(-0.05 * ((x[:, None] - x[None]) ** 2).sum(-1)) + 0.1 * np.eye(n)
    y = rng.standard_normal((n, 3))
    ref_l = np.linalg.cholesky(k)
    ref_a = np.linalg.solve(k, y)
    buf = torch.tensor(k, dtype=torch.float32)
    buf[np.triu_indices(n, 1)] = float("nan")  # only the lower triangle may be read
    blocked_cholesky_(buf, block=64)  # 5 panels, the last one ragged
    lo = torch.tril(buf).double().numpy()
    assert np.isfinite(lo).all()
    assert np.linalg.norm(lo - ref_l) / np.linalg.norm(ref_l) < 1e-5
    a, z = cholesky_solve_blocked(buf, torch.tensor(y), block=64)
    assert np.linalg.norm(a.double().numpy() - ref_a) / np.linalg.norm(ref_a) < 1e-4
    # z = L^{-1} y, so ||z||^2 = y^T K^{-1} y
    assert float((z.double() ** 2).sum()) == pytest.approx(float((y * ref_a).sum()), rel=1e-4)


def test_blocked_cholesky_reports_the_failing_column():
    a = torch.eye(100)
    a[70, 70] = -1.0
    with pytest.raises(NotPositiveDefinite) as exc:
        blocked_cholesky_(a, block=32)
    assert exc.value.column == 70


def test_blocked_kernel_equals_direct_formula():
    rng = np.random.default_rng(1)
    x, z = rng.random((53, 7)), rng.random((31, 7))
    gamma = 0.7
    direct = np.exp(-gamma * ((x[:, None] - z[None]) ** 2).sum(-1))
    xt, zt = torch.tensor(x), torch.tensor(z)
    np.testing.assert_allclose(gaussian_kernel(xt, zt, gamma, block=8).numpy(), direct, rtol=0, atol=1e-13)
    square = np.exp(-gamma * ((x[:, None] - x[None]) ** 2).sum(-1))
    low = gaussian_kernel(xt, xt, gamma, block=8, lower=True).numpy()
    np.testing.assert_allclose(np.tril(low), np.tril(square), rtol=0, atol=1e-13)
    assert low[0, -1] == 0.0  # blocks above the diagonal blocks are never written
    a = rng.standard_normal((31, 4))
    np.testing.assert_allclose(
        kernel_matmul(xt.float(), zt.float(), gamma, torch.tensor(a), block=8).numpy(), direct @ a, rtol=0, atol=1e-6
    )


def test_ridge_reduces_the_norm(digits):
    r0 = run_kernel(digits, gamma=0.02, n_train=400, seed=1)
    r1 = run_kernel(digits, gamma=0.02, n_train=400, seed=1, ridge=1e-2)
    assert r0["n_train"] == r1["n_train"] == 400
    assert r1["norm"] < 0.5 * r0["norm"]
    assert r0["train_error"] == 0.0


def test_random_labels_are_fitted_but_do_not_generalize(digits):
    frame = kernel_label_noise(digits, [0.0, 1.0], gamma=0.02)
    assert list(frame.columns[:4]) == ["level", "test_error", "train_error", "norm"]
    true, rand = frame.iloc[0], frame.iloc[1]
    assert (frame["train_error"] == 0.0).all()
    assert rand["test_error"] > 70.0  # chance is 90%
    assert true["test_error"] < 5.0
    assert rand["labels_changed"] > 0.8
    assert rand["norm"] > true["norm"]  # fitting noise takes a larger RKHS norm
    fig = plot_kernel_noise(frame)
    assert len(fig.axes) == 2


def test_random_conv_features_size_and_seed(digits):
    x = digits["x_train"][:50]
    f = random_conv_features(x, n_filters=16, pool=2, seed=3)
    assert f.shape == (50, 64) and f.dtype == torch.float32
    assert torch.equal(f, random_conv_features(x, n_filters=16, pool=2, seed=3))
    assert not torch.equal(f, random_conv_features(x, n_filters=16, pool=2, seed=4))
    assert (f >= 0).all()  # ReLU then average pooling
    ftr, fte = make_features(digits["x_train"][:200], digits["x_test"][:20], "random-conv", n_filters=8, seed=0)
    assert ftr.shape == (200, 32) and fte.shape == (20, 32)
    live = ftr.std(0) > 0
    assert torch.allclose(ftr.mean(0), torch.zeros(32), atol=1e-4)
    assert torch.allclose(ftr.std(0, unbiased=False)[live], torch.ones(int(live.sum())), atol=1e-3)


def test_random_conv_kernel_fits_and_generalizes(digits):
    r = run_kernel(digits, features="random-conv", n_filters=32, n_train=500)
    assert r["d"] == 128 and r["features"] == "random-conv"
    assert r["gamma"] > 0  # the median heuristic
    assert r["train_error"] == 0.0
    assert r["test_error"] < 10.0


def test_cg_fallback_agrees_on_a_well_conditioned_problem(digits):
    kw = dict(gamma=0.02, n_train=300, ridge=0.1, seed=2)
    ref = run_kernel(digits, solver="cholesky64", **kw)
    cg = run_kernel(digits, solver="cg", **kw)
    assert cg["solver"] == "cg" and cg["cg_residual"] < 1e-5
    assert cg["norm"] == pytest.approx(ref["norm"], rel=1e-4)
    assert cg["test_error"] == ref["test_error"]
