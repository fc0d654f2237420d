"""Section 5, beyond the paper: double descent of min-norm least squares on random features."""

import json

import numpy as np
import pandas as pd
import pytest

from rethinking import plan as rc
from rethinking.data.corrupt import training_labels
from rethinking.data.sources import prepare
from rethinking.errors import ConfigError
from rethinking.plan.params import SECTION5_DEFAULTS
from rethinking.section5.random_features import (
    apply_features,
    draw_features,
    least_squares,
    peak_ratios,
    plot_random_features,
    random_features_curve,
)
from rethinking.section5.stages import kernels_stage

from conftest import REPO

GRID = "grid: [{name: a, models: [mlp_1x512], corruptions: [true_labels]}]\n"


@pytest.mark.parametrize("shape", [(40, 15), (15, 40), (30, 30)])
def test_min_norm_solution_equals_lstsq(shape):
    rng = np.random.default_rng(0)
    phi, y = rng.standard_normal(shape), rng.standard_normal((shape[0], 3))
    (a,) = least_squares(phi, y)
    ref = np.linalg.lstsq(phi, y, rcond=None)[0]
    np.testing.assert_allclose(a, ref, rtol=1e-8, atol=1e-10)
    if shape[1] >= shape[0]:  # interpolates
        np.testing.assert_allclose(phi @ a, y, atol=1e-8)


def test_min_norm_solution_of_a_rank_deficient_system_equals_lstsq():
    rng = np.random.default_rng(1)
    phi = rng.standard_normal((20, 5)) @ rng.standard_normal((5, 30))  # rank 5, N > n
    y = rng.standard_normal((20, 2))
    (a,) = least_squares(phi, y)
    np.testing.assert_allclose(a, np.linalg.lstsq(phi, y, rcond=None)[0], rtol=1e-6, atol=1e-9)


def test_ridge_solution_solves_the_normal_equations():
    rng = np.random.default_rng(2)
    for shape in ((40, 15), (15, 40)):
        phi, y = rng.standard_normal(shape), rng.standard_normal((shape[0], 2))
        zero, ridge = least_squares(phi, y, (0.0, 0.5))
        direct = np.linalg.solve(phi.T @ phi + 0.5 * np.eye(shape[1]), phi.T @ y)
        np.testing.assert_allclose(ridge, direct, rtol=1e-8, atol=1e-10)
        assert np.linalg.norm(ridge) < np.linalg.norm(zero)


def test_features_are_nested_and_scaled():
    rng = np.random.default_rng(3)
    f = rng.random((10, 64))
    for kind in ("relu", "fourier"):
        params = draw_features(f, 50, kind, seed=0)
        big, small = apply_features(f, params), apply_features(f, params, 20)
        np.testing.assert_allclose(small * np.sqrt(20), big[:, :20] * np.sqrt(50))
        assert np.array_equal(params["w"], draw_features(f, 50, kind, seed=0)["w"])
    assert (apply_features(f, draw_features(f, 50, "relu")) >= 0).all()
    with pytest.raises(ValueError, match="features: 'tanh'"):
        draw_features(f, 5, "tanh")


@pytest.fixture(scope="module")
def default_curve(digits):
    rf = SECTION5_DEFAULTS["random_features"]
    return random_features_curve(
        digits, rf["ratios"], rf["noise_levels"], n=rf["n"], ridge=rf["ridge"], seed=rf["seed"], num_classes=10
    )


def test_min_norm_peaks_at_the_interpolation_threshold(default_curve):
    """The done-when condition on the defaults: at 20% noise err(n) >= 1.5 err(n/4) and >= 1.5 err(10n)."""
    peak = peak_ratios(default_curve, 0.2, "min-norm")
    assert peak["peak_over_below"] >= 1.5 and peak["peak_over_above"] >= 1.5, peak  # measured 2.66, 2.79
    g = default_curve[(default_curve["level"] == 0.2) & (default_curve["solver"] == "min-norm")]
    norm = g.set_index("ratio")["norm"]
    assert norm[1.0] > 5 * max(norm[0.25], norm[10.0])  # measured 26,270 against 3,419 and 142
    assert (g.loc[g["ratio"] >= 1.0, "train_error"] == 0).all()  # interpolates the noisy labels from N = n on


def test_ridge_has_no_peak(default_curve):
    peak = peak_ratios(default_curve, 0.2, "ridge")
    assert peak["peak_over_below"] < 1.0, peak  # measured 0.72: the ridge error still falls at N = n
    mn = peak_ratios(default_curve, 0.2, "min-norm")
    assert peak["at_n"] < mn["at_n"] / 2


def test_curve_uses_the_corrupted_artifacts_labels(default_curve, digits):
    row = default_curve[default_curve["level"] == 0.2].iloc[0]
    assert row["n_train"] == 200 and row["n_test"] == 360
    noisy = training_labels(digits["y_train"], 0.2, 10, 0)
    changed = float(np.mean(noisy != digits["y_train"]))
    assert abs(row["labels_changed"] - changed) < 0.08  # the subset's share of the artifact's changed labels
    assert (default_curve.loc[default_curve["level"] == 0.0, "labels_changed"] == 0).all()
    assert set(default_curve["solver"]) == {"min-norm", "ridge"}
    assert len(default_curve) == 2 * 2 * len(SECTION5_DEFAULTS["random_features"]["ratios"])


def test_figure_draws(default_curve):
    import matplotlib.pyplot as plt

    fig = plot_random_features(default_curve)
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log"
    plt.close(fig)


@pytest.mark.parametrize(
    "block, key",
    [
        ("{features: tanh}", r"section5\.random_features\.features"),
        ("{ratios: []}", r"section5\.random_features\.ratios"),
        ("{ratios: [0.5, -1]}", r"section5\.random_features\.ratios\[1\]"),
        ("{noise_levels: [1.5]}", r"section5\.random_features\.noise_levels\[0\]"),
        ("{n: 5}", r"section5\.random_features\.n"),
        ("{ridge: 0}", r"section5\.random_features\.ridge"),
        ("{seed: 0.5}", r"section5\.random_features\.seed"),
        ("{width: 3}", r"section5\.random_features"),
    ],
)
def test_params_refuse_bad_values(tmp_path, block, key):
    p = tmp_path / "params.yaml"
    p.write_text(f"section5: {{random_features: {block}}}\n{GRID}")
    with pytest.raises(ConfigError, match=key) as exc:
        rc.load(p)
    assert "\n" not in str(exc.value)


def test_params_defaults_fill_in(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("section5: {random_features: {n: 50}}\n" + GRID)
    rf = rc.load(p)["section5"]["random_features"]
    assert rf["n"] == 50 and rf["features"] == "relu" and rf["ridge"] == 0.01 and 1.0 in rf["ratios"]


def test_kernels_stage_writes_the_table_and_figure(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["section5"]["random_features"].update(ratios=[0.25, 1.0, 4.0], noise_levels=[0.2])
    prepare(cfg)
    tables = kernels_stage(cfg)
    frame = pd.read_csv(tables / "random_features.csv")
    assert sorted(frame["n_features"].unique()) == [25, 100, 400]  # tiny.yaml: 100 training digits
    assert set(frame["solver"]) == {"min-norm", "ridge"} and set(frame["level"]) == {0.2}
    assert (frame.loc[frame["n_features"] >= 100, "train_error"].where(frame["solver"] == "min-norm", 0) == 0).all()
    assert (tmp_path / "results" / "figures" / "random_features.png").stat().st_size > 1000
    metrics = json.loads((tables / "random_features_metrics.json").read_text())["random_features"]
    assert set(metrics) == {"noise_0.2_min_norm", "noise_0.2_ridge"}
    mn = frame[(frame["solver"] == "min-norm") & (frame["n_features"] == 100)]
    assert metrics["noise_0.2_min_norm"]["test_error_n"] == pytest.approx(float(mn["test_error"].iloc[0]))
