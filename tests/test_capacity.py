"""The interpolation threshold of width sweeps (rethinking.analysis.capacity): capacity.csv on hand-made run
summaries, and the outputs existing only for grids that sweep a width."""

import pandas as pd
import pytest

from rethinking.analysis.capacity import CAPACITY_COLUMNS, capacity, family_of, has_width_sweep

META = {"classes": [str(i) for i in range(10)]}


def _runs(plan: dict, n: int = 1437) -> pd.DataFrame:
    """Summaries: {(model, level): [status per seed]}; parameters as an MLP 1x<w> on 7x7 inputs has them."""
    rows = []
    for (model, level), statuses in plan.items():
        family, width = family_of(model) or ("", 0)
        for seed, status in enumerate(statuses):
            rows.append(
                dict(
                    model=model,
                    dataset="digits",
                    n_train=n,
                    corruption="true-labels" if level == 0 else f"labels-{level:g}",
                    level=level,
                    regularizers="none",
                    variant="",
                    seed=seed,
                    status=status,
                    parameters=60 * width + 10,
                    input_shape=[1, 7, 7],
                )
            )
    return pd.DataFrame(rows)


def test_the_threshold_is_the_smallest_width_from_which_every_run_fits():
    F, M, D = "fitted", "max_epochs", "diverged"
    plan = {
        ("mlp_1x8", 0.0): [M, M],
        ("mlp_1x16", 0.0): [M, F],  # mixed seeds: below the threshold, listed, never averaged into it
        ("mlp_1x32", 0.0): [F, F],
        ("mlp_1x64", 0.0): [F, F],
        ("mlp_1x8", 0.2): [M, M],
        ("mlp_1x16", 0.2): [M, D],
        ("mlp_1x32", 0.2): [D, M],
        ("mlp_1x64", 0.2): [M, M],  # none fitted
        ("mlp_1x8", 0.1): [F, F],
        ("mlp_1x16", 0.1): [M, M],  # a width that did not fit above one that did: not the threshold
        ("mlp_1x32", 0.1): [F, F],
        ("mlp_1x64", 0.1): [F, F],
        ("alexnet", 0.0): [F, F],  # no width family: not in the table
    }
    table = capacity(_runs(plan), META)
    assert list(table.columns) == CAPACITY_COLUMNS and len(table) == 3
    t = table.set_index("level")
    assert t.loc[0.0, "state"] == "threshold (mixed below)" and t.loc[0.0, "fit_width"] == 32
    assert t.loc[0.0, "nofit_width"] == 16 and t.loc[0.0, "mixed_widths"] == "16"
    assert t.loc[0.0, "fit_parameters"] == 60 * 32 + 10 and t.loc[0.0, "nofit_parameters"] == 60 * 16 + 10
    assert t.loc[0.2, "state"] == "no width fitted" and pd.isna(t.loc[0.2, "fit_width"])
    assert t.loc[0.2, "mixed_widths"] == ""  # fitted seeds only count: max_epochs and diverged both "not fitted"
    assert t.loc[0.1, "state"] == "threshold (not fitted below)" and t.loc[0.1, "fit_width"] == 32
    assert (t["theorem1_2n_plus_d"] == 2 * 1437 + 49).all() and (t["n_times_k"] == 14_370).all()
    assert t.loc[0.0, "fit_parameters_over_2n_plus_d"] == pytest.approx((60 * 32 + 10) / 2923)
    assert (t["widths"] == "8 16 32 64").all() and (t["family"] == "mlp_1x").all() and (t["d"] == 49).all()


def test_every_width_fitted_says_so():
    t = capacity(_runs({("mlp_1x8", 0.0): ["fitted"], ("mlp_1x16", 0.0): ["fitted"]}), META)
    assert t["state"].tolist() == ["all fitted"] and t["fit_width"].tolist() == [8] and t["nofit_width"].isna().all()


def test_families_and_which_grids_sweep_a_width():
    assert family_of("mlp_3x512") == ("mlp_3x", 512) and family_of("resnet18_k16") == ("resnet18_k", 16)
    assert family_of("alexnet") is None and family_of("resnet18") is None
    grid = lambda *models: {"grid": [{"models": list(models)}]}  # noqa: E731
    assert has_width_sweep(grid("mlp_1x16", "mlp_1x32")) and has_width_sweep(grid("resnet18_k4", "resnet18_k8"))
    assert not has_width_sweep(grid("mlp_1x512", "mlp_3x512", "alexnet"))  # the default experiment: one each


def test_a_family_entry_expands_to_its_widths_with_todays_run_ids():
    from rethinking import plan as rc
    from rethinking.errors import ConfigError

    def grid(*models):
        return rc.validate(
            {
                "dataset": {"source": "digits"},
                "grid": [{"name": "w", "models": list(models), "corruptions": ["true_labels"]}],
            }
        )

    cfg = grid({"family": "mlp_1x", "widths": [16, 64]}, "alexnet", {"family": "resnet18", "widths": [4]})
    assert cfg["grid"][0]["models"] == ["mlp_1x16", "mlp_1x64", "alexnet", "resnet18_k4"]
    listed = grid("mlp_1x16", "mlp_1x64", "alexnet", "resnet18_k4")
    assert [r.id for r in rc.expand_runs(cfg)] == [r.id for r in rc.expand_runs(listed)]  # the same runs, ids
    assert has_width_sweep(cfg)
    with pytest.raises(ConfigError, match=r"grid\[0\]\.models\[0\]: family 'alexnet' is not a width family"):
        grid({"family": "alexnet", "widths": [2]})
    with pytest.raises(ConfigError, match=r"grid\[0\]\.models\[0\]"):
        grid({"family": "mlp_1x", "widths": [0]})


def test_the_figure_draws_width_and_epoch_panels():
    from rethinking.analysis.capacity import double_descent

    F, M = "fitted", "max_epochs"
    runs = _runs({("mlp_1x8", 0.2): [M], ("mlp_1x16", 0.2): [F], ("mlp_1x32", 0.2): [F]})
    runs = runs.assign(train_acc=[90.0, 100.0, 100.0], test_acc=[70.0, 60.0, 80.0])
    cap = capacity(runs, META)
    curves = pd.DataFrame(
        [
            dict(model=f"mlp_1x{w}", corruption="labels-0.2", seed=0, status=F, epoch=e, test_acc=0.5 + 0.01 * e)
            for w in (16, 32)
            for e in range(1, 6)
        ]
    )
    fig = double_descent(runs, cap, curves)
    top, bottom = fig.axes[0], fig.axes[1]
    assert [round(v, 6) for v in top.lines[0].get_ydata()] == [30.0, 40.0, 20.0]  # test error by width
    assert [line.get_label() for line in bottom.lines] == ["width 16 (threshold)", "width 32 (largest)"]
    assert list(bottom.lines[0].get_ydata()) == pytest.approx([49.0, 48.0, 47.0, 46.0, 45.0])
