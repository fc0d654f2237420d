"""Theorem 1: a depth-2 ReLU network with 2n + d weights fits any labels of n distinct points."""

import numpy as np
import pytest

from rethinking.section5.theorem import (
    construct,
    design_matrix,
    evaluate,
    plot_theorem,
    theorem_report,
    theorem_sweep,
    weights_count,
)


@pytest.fixture(scope="module")
def sweep(digits):
    return theorem_sweep(digits, [10, 100, 500], labels="random", seed=0)


def test_random_labels_fitted_exactly_on_digits(sweep):
    assert list(sweep["n"]) == [10, 100, 500]
    assert (sweep["weights"] == 2 * sweep["n"] + 64).all()
    assert (sweep["max_abs_error"] < 1e-6).all()  # measured <= 3e-8 at n = 500
    assert (sweep["condition_number"] > 1).all() and np.isfinite(sweep["condition_number"]).all()
    assert sweep["condition_number"].is_monotonic_increasing  # nested subsets: gaps only shrink
    assert set(sweep.columns) >= {"n", "weights", "max_abs_error", "condition_number"}


def test_true_labels_and_real_valued_targets(digits):
    t = theorem_sweep(digits, [200], labels="true", seed=1)
    assert t["max_abs_error"].iloc[0] < 1e-6 and t["labels"].iloc[0] == "true"
    rng = np.random.default_rng(2)
    z = digits["x_train"][:300].reshape(300, -1) / 255.0
    y = rng.standard_normal(300)  # any function on the sample, not only class indices
    rep = theorem_report(z, y, seed=3)
    assert rep["max_abs_error"] < 1e-6 and rep["weights"] == 2 * 300 + 64 and rep["d"] == 64


def test_construction_structure(digits):
    z = digits["x_train"][:60].reshape(60, -1) / 255.0
    y = np.random.default_rng(0).integers(0, 10, 60).astype(float)
    a, b, w = construct(z, y, seed=5)
    assert a.shape == (64,) and b.shape == (60,) and w.shape == (60,)
    assert weights_count(a, b, w) == 64 + 2 * 60
    xs = np.sort(z @ a)
    assert (b[0] < xs[0]) and (b[1:] > xs[:-1]).all() and (b < xs).all()  # b_1 < x_(1) < b_2 < x_(2) < ...
    A = design_matrix(z, a, b)
    assert np.array_equal(A, np.tril(A)) and (np.diag(A) > 0).all()
    np.testing.assert_allclose(evaluate(z, a, b, w), y, atol=1e-8)
    a2, b2, w2 = construct(z, y, seed=5)
    assert np.array_equal(a, a2) and np.array_equal(w, w2)  # seeded
    assert not np.array_equal(a, construct(z, y, seed=6)[0])


def test_duplicate_points_are_refused():
    z = np.random.default_rng(0).random((6, 4))
    z[5] = z[2]
    with pytest.raises(ValueError, match=r"duplicate rows \(e.g. rows 2 and 5\)"):
        construct(z, np.arange(6.0))
    with pytest.raises(ValueError, match="y has 5 values"):
        construct(z[:4], np.arange(5.0))


def test_plot(sweep):
    fig = plot_theorem(sweep)
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"


def test_large_n_condition_number_is_a_one_norm_estimate(monkeypatch):
    import rethinking.section5.theorem as th

    z = np.random.default_rng(4).random((40, 3))
    a, b, _ = construct(z, np.zeros(40), seed=0)
    A = design_matrix(z, a, b)
    exact, kind = th.condition_number(A)
    assert kind == "2-norm" and exact == pytest.approx(np.linalg.cond(A))
    monkeypatch.setattr(th, "COND_EXACT_MAX_N", 10)
    est, kind = th.condition_number(A)
    assert kind == "1-norm estimate"
    true1 = np.linalg.cond(A, 1)
    assert true1 / 10 <= est <= true1 * 1.0001  # LAPACK's estimate is a lower bound, usually within 3x
