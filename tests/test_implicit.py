"""Section 5: SGD on underdetermined least squares finds the min-norm solution only from zero."""

import numpy as np
import pytest

from rethinking.data.sources import load_digits
from rethinking.section5.implicit import (
    implicit_bias_experiment,
    min_norm_solution,
    null_projection,
    plot_implicit,
    sgd_least_squares,
)


@pytest.fixture(scope="module")
def frame():
    xtr, ytr, xte, yte, _, _, _ = load_digits(0.2, seed=0)
    data = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    return implicit_bias_experiment(data, n=20, features="pixels", steps=20000, seed=0)


def _final(frame, start):
    g = frame[frame["start"] == start]
    return g.iloc[-1], g


def test_from_zero_sgd_converges_to_the_min_norm_solution(frame):
    last, g = _final(frame, "zero")
    assert last["step"] == 20000 and g["step"].iloc[0] == 0
    assert last["n"] == 20 and last["d"] == 64
    assert last["dist_to_minnorm"] / last["minnorm_norm"] < 1e-3  # measured 8e-8
    assert last["residual"] < 1e-3  # it interpolates
    assert last["norm"] == pytest.approx(last["minnorm_norm"], rel=1e-3)
    assert g["dist_to_minnorm"].iloc[0] == pytest.approx(last["minnorm_norm"])  # started at w = 0


def test_from_a_random_start_sgd_interpolates_elsewhere(frame):
    last, _ = _final(frame, "random")
    assert last["residual"] < 1e-3  # it interpolates too ...
    assert last["dist_to_minnorm"] / last["minnorm_norm"] > 0.1  # ... but not at X^+ y
    # the distance that remains is the start's null-space component, which SGD never touches
    assert last["dist_to_minnorm"] == pytest.approx(last["null_component"], rel=1e-3)
    assert last["norm"] > last["minnorm_norm"]


def test_min_norm_solution_is_the_pseudo_inverse():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 30)), rng.standard_normal(8)
    w = min_norm_solution(X, y)
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, atol=1e-12)
    np.testing.assert_allclose(X @ w, y, atol=1e-12)
    assert np.linalg.norm(null_projection(X, w)) < 1e-12  # it lies in the row space
    v = rng.standard_normal(30)
    np.testing.assert_allclose(X @ null_projection(X, v), 0.0, atol=1e-12)


def test_sgd_vector_targets_and_minibatches():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((10, 40)), rng.standard_normal(10)
    f = sgd_least_squares(X, y, steps=3000, batch_size=2, lr=0.02, record_every=1000)
    assert list(f.columns) == ["step", "dist_to_minnorm", "norm", "residual"]
    assert list(f["step"]) == [0, 1000, 2000, 3000]
    assert f["dist_to_minnorm"].iloc[-1] < 1e-3 * np.linalg.norm(min_norm_solution(X, y))


def test_overdetermined_is_refused():
    xtr, ytr, xte, yte, _, _, _ = load_digits(0.2, seed=0)
    with pytest.raises(ValueError, match="underdetermined"):
        implicit_bias_experiment({"x_train": xtr, "y_train": ytr}, n=100, features="pixels", steps=10)


def test_plot(frame):
    fig = plot_implicit(frame)
    assert len(fig.axes) == 2
