"""The interpolation threshold of width sweeps (rethinking.analysis.capacity): capacity.csv on hand-made run
summaries, and the outputs existing only for grids that sweep a width."""

import pandas as pd
import pytest

from rethinking.analysis.capacity import (
    CAPACITY_COLUMNS,
    CURVE_COLUMNS,
    FIT_SIZE_COLUMNS,
    capacity,
    family_of,
    fit_sizes,
    has_size_sweep,
    has_width_sweep,
)

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
                    dataset="digits" if n == 1437 else f"digits-n{n}",
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


def test_a_widest_width_that_did_not_fit_every_seed_leaves_no_threshold():
    """A narrower width fitted, the widest did not in one seed: no width from which every wider one fitted."""
    F, M = "fitted", "max_epochs"
    t = capacity(_runs({("mlp_1x16", 0.1): [M, M], ("mlp_1x64", 0.1): [F, F], ("mlp_1x128", 0.1): [F, M]}), META)
    assert t["state"].tolist() == ["no threshold (widest mixed)"] and t["fit_width"].isna().all()
    assert t["mixed_widths"].tolist() == ["128"]


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
            dict(
                dataset="digits",
                model=f"mlp_1x{w}",
                corruption="labels-0.2",
                seed=0,
                status=F,
                epoch=e,
                test_acc=0.5 + 0.01 * e,
            )
            for w in (16, 32)
            for e in range(1, 6)
        ]
    )
    fig = double_descent(runs, cap, curves)
    top, bottom = fig.axes[0], fig.axes[1]
    assert [round(v, 6) for v in top.lines[0].get_ydata()] == [30.0, 40.0, 20.0]  # test error by width
    assert [line.get_label() for line in bottom.lines] == ["width 16 (threshold)", "width 32 (largest)"]
    assert list(bottom.lines[0].get_ydata()) == pytest.approx([49.0, 48.0, 47.0, 46.0, 45.0])


def test_the_figure_has_one_column_per_training_set_and_never_mixes_them():
    from rethinking.analysis.capacity import double_descent

    F, M = "fitted", "max_epochs"
    small = _runs({("mlp_1x8", 0.0): [F], ("mlp_1x16", 0.0): [F]}, n=400).assign(train_acc=100.0, test_acc=[60.0, 70.0])
    full = _runs({("mlp_1x8", 0.0): [M], ("mlp_1x16", 0.0): [F]}).assign(train_acc=[90.0, 100.0], test_acc=80.0)
    runs = pd.concat([full, small], ignore_index=True)
    fig = double_descent(runs, capacity(runs, META), pd.DataFrame(columns=CURVE_COLUMNS))
    titles = [ax.get_title() for ax in fig.axes[:2]]
    assert titles == ["mlp_1x<width>, n = 400 (digits-n400)", "mlp_1x<width>, n = 1437 (digits)"]
    assert [round(v, 6) for v in fig.axes[0].lines[0].get_ydata()] == [40.0, 30.0]  # n = 400's test error only
    assert [round(v, 6) for v in fig.axes[1].lines[0].get_ydata()] == [20.0, 20.0]


def test_several_seeds_draw_the_t_band_of_the_mean():
    from rethinking.analysis.capacity import double_descent

    runs = _runs({("mlp_1x8", 0.0): ["fitted"] * 3, ("mlp_1x16", 0.0): ["fitted"] * 3})
    runs = runs.assign(train_acc=100.0, test_acc=[60.0, 62.0, 64.0, 70.0, 70.0, 73.0])
    fig = double_descent(runs, capacity(runs, META), pd.DataFrame(columns=CURVE_COLUMNS))
    (band,) = fig.axes[0].collections[:1]
    at8 = [y for x, y in band.get_paths()[0].vertices if x == 8]
    low, high = min(at8), max(at8)
    half = 4.303 * 2.0 / 3**0.5  # t(0.975, 2) x sd / sqrt(3) at width 8 (sd of 60, 62, 64 is 2)
    assert low == pytest.approx(38.0 - half, abs=1e-2) and high == pytest.approx(38.0 + half, abs=1e-2)


def test_the_largest_training_set_a_model_fits():
    F, M, D = "fitted", "max_epochs", "diverged"
    rows = []
    for n, plan in {
        100: {("mlp_1x8", 0.0): [F, F], ("mlp_1x64", 0.0): [F, F], ("mlp_1x8", 1.0): [M, M], ("mlp_1x64", 1.0): [F, F]},
        400: {("mlp_1x8", 0.0): [F, M], ("mlp_1x64", 0.0): [F, F], ("mlp_1x8", 1.0): [M, D], ("mlp_1x64", 1.0): [F, F]},
        1437: {
            ("mlp_1x8", 0.0): [F, F],
            ("mlp_1x64", 0.0): [F, F],
            ("mlp_1x8", 1.0): [F, F],
            ("mlp_1x64", 1.0): [M, M],
        },
    }.items():
        rows.append(_runs(plan, n=n))
    table = fit_sizes(pd.concat(rows, ignore_index=True), META)
    assert list(table.columns) == FIT_SIZE_COLUMNS and len(table) == 4
    t = table.set_index(["width", "level"])
    # mixed seeds at 400: the largest size it fits is 100, and 1437 (fitted again) is listed, not hidden
    assert t.loc[(8, 0.0), "state"] == "fits up to n (mixed above)" and t.loc[(8, 0.0), "fit_n"] == 100
    assert t.loc[(8, 0.0), "nofit_n"] == 400 and t.loc[(8, 0.0), "mixed_sizes"] == "400"
    assert t.loc[(8, 0.0), "fitted_sizes"] == "100 1437"
    assert t.loc[(64, 0.0), "state"] == "all fitted" and t.loc[(64, 0.0), "fit_n"] == 1437
    assert t.loc[(8, 1.0), "state"] == "no size fitted up from the smallest (smallest not fitted)"
    assert pd.isna(t.loc[(8, 1.0), "fit_n"]) and t.loc[(8, 1.0), "fitted_sizes"] == "1437"  # listed, not hidden
    assert t.loc[(64, 1.0), "state"] == "fits up to n (not fitted above)" and t.loc[(64, 1.0), "nofit_n"] == 1437
    assert (t["sizes"] == "100 400 1437").all()
    assert t.loc[(64, 0.0), "theorem1_n"] == (60 * 64 + 10 - 49) // 2
    assert t.loc[(64, 0.0), "parameters_over_k"] == pytest.approx((60 * 64 + 10) / 10)
    capacity_rows = capacity(pd.concat(rows, ignore_index=True), META)  # one threshold row per size and level
    assert sorted(set(capacity_rows["n_train"])) == [100, 400, 1437] and len(capacity_rows) == 6


def test_which_grids_sweep_a_training_set_size():
    from rethinking import plan as rc

    def cfg(**group):
        base = {"name": "w", "models": ["mlp_1x8"], "corruptions": ["true_labels"]}
        return rc.validate({"dataset": {"source": "digits"}, "grid": [{**base, **group}]})

    assert not has_size_sweep(cfg()) and not has_size_sweep(cfg(train_sizes=[400]))
    assert has_size_sweep(cfg(train_sizes=[400, None]))


NETS = """\
from torch import nn


def wide(in_shape, num_classes, width):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))


def fixed(in_shape, num_classes):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
"""


def test_a_users_factory_is_a_width_family(tmp_path):
    from rethinking import models
    from rethinking import plan as rc
    from rethinking.errors import ConfigError, ModelError

    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "params.yaml").write_text(
        "dataset: {source: digits}\n"
        "grid:\n"
        "  - name: w\n"
        "    models: [{family: nets.py:wide, widths: [4, 16]}, nets.py:fixed]\n"
        "    corruptions: [true_labels]\n"
    )
    cfg = rc.load(tmp_path / "params.yaml")
    assert cfg["grid"][0]["models"] == ["nets.py:wide@4", "nets.py:wide@16", "nets.py:fixed"]
    assert has_width_sweep(cfg) and family_of("nets.py:wide@16") == ("nets.py:wide@", 16)
    ids = sorted(r.id for r in rc.expand_runs(cfg))
    family_hash = models.short_hash("nets.py:wide")  # every width shares it: the folder names sort by family
    assert ids == sorted(
        [
            "digits/true-labels/fixed-" + models.short_hash("nets.py:fixed") + "/none/seed0",
            f"digits/true-labels/wide-{family_hash}-w16/none/seed0",
            f"digits/true-labels/wide-{family_hash}-w4/none/seed0",
        ]
    )
    counts = [
        models.count_parameters(models.build_model(f"nets.py:wide@{w}", (1, 7, 7), 10, base=tmp_path)) for w in (4, 16)
    ]
    assert counts == [49 * 4 + 4 + 4 * 10 + 10, 49 * 16 + 16 + 16 * 10 + 10]  # called with width=
    with pytest.raises(ModelError, match=r"'nets.py:fixed@4': fixed takes no width= keyword"):
        models.build_model("nets.py:fixed@4", (1, 7, 7), 10, base=tmp_path)
    with pytest.raises(ConfigError, match=r"grid\[0\]\.models\[0\]: family 'nets\.py' is not a width family"):
        rc.validate(
            {"grid": [{"name": "w", "models": [{"family": "nets.py", "widths": [2]}], "corruptions": ["true_labels"]}]}
        )
