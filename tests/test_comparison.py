"""paper_comparison: which runs a Table 1 / Table 4 cell compares, and how run states are reported.

Runs frames are built by hand as aggregate.load_summaries gives them (its `crop` column is the
random-crop flag; the center crop shows in input_shape)."""

import numpy as np
import pandas as pd
import pytest

from rethinking import plan as rc
from rethinking.analysis.aggregate import aggregate
from rethinking.analysis.paper import CIFAR10_CLASSES, COLUMNS, compare, setup_differences
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine.loop import train

from conftest import make_image_folder

TOL = {"train_acc": 1.0, "test_acc": 3.0}
LR = {"inception": 0.1, "inception_nobn": 0.1, "alexnet": 0.01, "mlp_3x512": 0.01, "mlp_1x512": 0.01}


def run(
    model="alexnet",
    corruption="true-labels",
    regularizers="none",
    variant="",
    seed=0,
    status="fitted",
    train_acc=100.0,
    test_acc=75.0,
    **over,
):
    """One row of runs.csv for a run of the paper's setup (override any key)."""
    regs = set(regularizers.split("-"))
    row = {
        "run": f"cifar10/{corruption}/{model}/{regularizers}{'_' + variant if variant else ''}/seed{seed}",
        "model": model,
        "corruption": corruption,
        "regularizers": regularizers,
        "variant": variant,
        "seed": seed,
        "status": status,
        "n_train": 50000,
        "n_test": 10000,
        "crop": "augment" if "augment" in regs else ("yes" if "crop" in regs else "no"),
        "input_shape": [3, 28, 28],
        "batch_size": 128,
        "max_epochs": 300 if variant else 150,
        "momentum": 0.9,
        "lr": LR[model],
        "lr_decay": 0.999 if variant == "table4" else 0.95,
        "lr_decay_images": None,
        "weight_decay": 5e-4 if "wd" in regs else 0.0,
        "dropout": 0.0,
        "train_acc": train_acc,
        "test_acc": test_acc,
    }
    row.update(over)
    if row["status"] == "diverged":  # load_summaries blanks a diverged run's accuracies
        row["train_acc"] = row["test_acc"] = np.nan
    return row


def frame(*rows):
    return pd.DataFrame(list(rows))


def cell(comp, table="table1", model="alexnet", labels="true", random_crop="no", weight_decay="no", dropout="no"):
    sel = comp[
        (comp["table"] == table)
        & (comp["model"] == model)
        & (comp["labels"] == labels)
        & (comp["random_crop"] == random_crop)
        & (comp["weight_decay"] == weight_decay)
        & (comp["dropout"] == dropout)
    ].set_index("metric")
    assert len(sel) >= 1
    return sel


def untouched(comp, touched):
    """Every cell but `touched` (a set of (table, model, labels, crop, wd, dropout)) reads not run."""
    keys = ["table", "model", "labels", "random_crop", "weight_decay", "dropout"]
    rest = comp[[tuple(k) not in touched for k in comp[keys].values.tolist()]]
    assert len(rest) == len(comp) - sum(1 for k in comp[keys].values.tolist() if tuple(k) in touched)
    assert rest["within_tolerance"].eq("not run").all() and rest["status"].eq("not run").all()
    assert rest["ours"].isna().all() and rest["diff"].isna().all()
    assert (rest[["seeds_fitted", "seeds_stopped", "seeds_diverged", "not_comparable"]] == 0).all().all()


ALEX_T1 = ("table1", "alexnet", "true", "no", "no", "no")


def test_full_setup_is_compared_within_tolerance_computed():
    comp = compare(
        frame(
            run(seed=0, train_acc=100.0, test_acc=75.0),
            run(seed=1, train_acc=100.0, test_acc=77.0),
            run(seed=2, train_acc=99.0, test_acc=70.0, status="max_epochs", model="mlp_1x512"),
        ),
        TOL,
    )
    assert list(comp.columns) == COLUMNS
    c = cell(comp)
    test, tr = c.loc["test_acc"], c.loc["train_acc"]
    assert test["paper"] == 76.07 and test["ours"] == pytest.approx(76.0) and test["diff"] == pytest.approx(-0.07)
    assert test["ours_sd"] == pytest.approx(np.std([75.0, 77.0], ddof=1))
    assert test["within_tolerance"] == "yes" and test["status"] == "fitted" and test["reason"] == ""
    assert (test["seeds_fitted"], test["seeds_stopped"], test["seeds_diverged"], test["not_comparable"]) == (2, 0, 0, 0)
    assert tr["ours"] == 100.0 and tr["diff"] == 0.0 and tr["within_tolerance"] == "yes"
    # a run stopped at its epoch limit is compared, and its state says so
    m = cell(comp, model="mlp_1x512")
    assert m.loc["test_acc", "status"] == "max_epochs" and m.loc["test_acc", "seeds_stopped"] == 1
    assert m.loc["test_acc", "ours"] == 70.0 and m.loc["test_acc", "diff"] == pytest.approx(70.0 - 50.51)
    assert m.loc["test_acc", "within_tolerance"] == "no"
    assert m.loc["train_acc", "diff"] == pytest.approx(99.0 - 100.0) and m.loc["train_acc", "within_tolerance"] == "yes"
    untouched(comp, {ALEX_T1, ("table1", "mlp_1x512", "true", "no", "no", "no")})


def test_all_seeds_diverged():
    comp = compare(frame(run(seed=0, status="diverged"), run(seed=1, status="diverged")), TOL)
    for _metric, row in cell(comp).iterrows():
        assert row["status"] == "diverged" and row["within_tolerance"] == "diverged"
        assert np.isnan(row["ours"]) and np.isnan(row["ours_sd"]) and np.isnan(row["diff"])
        assert (row["seeds_fitted"], row["seeds_stopped"], row["seeds_diverged"]) == (0, 0, 2)
    untouched(comp, {ALEX_T1})


def test_mixed_states_give_no_mean():
    comp = compare(
        frame(
            run(seed=0, test_acc=76.0),
            run(seed=1, status="diverged"),
            run(seed=2, status="max_epochs", train_acc=90.0, test_acc=60.0),
        ),
        TOL,
    )
    for _metric, row in cell(comp).iterrows():
        assert row["status"] == "mixed" and row["within_tolerance"] == "mixed"
        assert np.isnan(row["ours"]) and np.isnan(row["diff"])
        assert (row["seeds_fitted"], row["seeds_stopped"], row["seeds_diverged"]) == (1, 1, 1)
    # fitted and stopped seeds are not averaged either
    comp = compare(frame(run(seed=0), run(seed=1, status="max_epochs", train_acc=90.0)), TOL)
    row = cell(comp).loc["train_acc"]
    assert row["status"] == "mixed" and np.isnan(row["ours"])
    assert (row["seeds_fitted"], row["seeds_stopped"], row["seeds_diverged"]) == (1, 1, 0)


def test_table4_takes_only_its_variant():
    t4 = dict(model="inception", corruption="random-labels", regularizers="wd")
    comp = compare(
        frame(run(variant="table4", train_acc=99.5, **t4), run(variant="decay98", lr_decay=0.98, train_acc=40.0, **t4)),
        TOL,
    )
    c = cell(comp, table="table4", model="inception", labels="random", weight_decay="yes")
    assert list(c.index) == ["train_acc"]
    row = c.loc["train_acc"]
    assert row["paper"] == 100.0 and row["ours"] == 99.5 and row["diff"] == pytest.approx(-0.5)
    assert row["within_tolerance"] == "yes" and row["status"] == "fitted"
    assert (row["seeds_fitted"], row["seeds_stopped"], row["seeds_diverged"], row["not_comparable"]) == (1, 0, 0, 1)
    assert row["reason"] == (
        "1 run(s) left out: variant decay98, the paper's table4 runs are variant table4; "
        "lr_decay 0.98, the paper's 0.999"
    )
    untouched(comp, {("table4", "inception", "random", "no", "yes", "no")})
    # the decay98 run alone is not comparable, and neither is a "table4" run of another decay
    comp = compare(frame(run(variant="decay98", lr_decay=0.98, **t4)), TOL)
    row = cell(comp, table="table4", model="inception", labels="random", weight_decay="yes").loc["train_acc"]
    assert row["within_tolerance"] == "not comparable" and row["status"] == "not comparable"
    assert np.isnan(row["ours"]) and row["not_comparable"] == 1 and row["seeds_fitted"] == 0
    assert "variant decay98" in row["reason"]
    comp = compare(frame(run(variant="table4", lr_decay=0.95, **t4)), TOL)
    row = cell(comp, table="table4", model="inception", labels="random", weight_decay="yes").loc["train_acc"]
    assert row["within_tolerance"] == "not comparable" and row["reason"] == "lr_decay 0.95, the paper's 0.999"


def test_table1_takes_only_runs_without_variant():
    comp = compare(frame(run(variant="table4", lr_decay=0.999)), TOL)
    for _metric, row in cell(comp).iterrows():
        assert row["within_tolerance"] == "not comparable" and np.isnan(row["ours"])
        assert row["reason"] == (
            "variant table4, the paper's table1 runs are no variant; lr_decay 0.999, the paper's 0.95"
        )
    untouched(comp, {ALEX_T1})


def test_a_500_image_subset_is_not_comparable():
    comp = compare(frame(run(n_train=500, n_test=100, seed=0), run(n_train=500, n_test=100, seed=1)), TOL)
    for _metric, row in cell(comp).iterrows():
        assert row["within_tolerance"] == "not comparable" and row["status"] == "not comparable"
        assert np.isnan(row["ours"]) and np.isnan(row["diff"]) and row["not_comparable"] == 2
        assert (row["seeds_fitted"], row["seeds_stopped"], row["seeds_diverged"]) == (0, 0, 0)
        assert row["reason"] == "n_train 500, the paper's 50,000; n_test 100, the paper's 10,000"
    untouched(comp, {ALEX_T1})


def test_another_crop_or_schedule_is_not_comparable():
    comp = compare(frame(run(input_shape=[3, 24, 24])), TOL)
    row = cell(comp).loc["test_acc"]
    assert row["within_tolerance"] == "not comparable" and row["reason"] == "input 3x24x24, the paper's 3x28x28"
    comp = compare(frame(run(crop=24, input_shape=[3, 24, 24])), TOL)  # a summary's own crop size
    assert cell(comp).loc["test_acc", "reason"] == "crop 24, the paper's 28; input 3x24x24, the paper's 3x28x28"
    comp = compare(frame(run(crop=None, input_shape="[3, 32, 32]")), TOL)  # no center crop; runs.csv's text
    assert cell(comp).loc["train_acc", "reason"] == "input 3x32x32, the paper's 3x28x28"
    comp = compare(frame(run(lr=0.05, lr_decay_images=10000)), TOL)
    assert cell(comp).loc["train_acc", "reason"] == (
        "lr 0.05, the paper's 0.01; lr decay per 10,000 images, the paper's per epoch"
    )
    # per 50,000 images seen on the full split is the paper's per-epoch decay
    comp = compare(frame(run(lr_decay_images=50000)), TOL)
    assert cell(comp).loc["test_acc", "within_tolerance"] == "yes"


def test_setup_not_recorded_is_not_comparable():
    row = run()
    for key in ("n_train", "n_test", "input_shape", "lr", "momentum", "lr_decay"):
        del row[key]
    assert setup_differences(row, "table1") == [
        "n_train not recorded",
        "n_test not recorded",
        "input shape not recorded",
        "lr not recorded",
        "momentum not recorded",
        "lr_decay not recorded",
    ]
    assert setup_differences(run(), "table1") == [] and setup_differences(run(variant="table4"), "table4") == []


def test_aggregate_header_states_the_split(tmp_path):
    root = make_image_folder(tmp_path / "cifar", size=(32, 32), classes=CIFAR10_CLASSES, n_train=2, n_test=1)
    cfg = rc.validate(
        {
            "results_dir": str(tmp_path / "results"),
            "seeds": [0],
            "dataset": {"source": "imagefolder", "root": str(root), "name": "cifar10"},
            "preprocess": {"crop": 28},
            "training": {"batch_size": 10, "max_epochs": 1, "log_every": 1, "device": "cpu"},
            "grid": [{"name": "t1", "models": ["mlp_1x512"], "corruptions": ["true_labels"]}],
        }
    )
    prepare(cfg)
    runs = rc.expand_runs(cfg)
    for c in rc.corruptions_of(runs):
        corrupt(cfg, c)
    for r in runs:
        train(cfg, r, log=lambda *_: None)
    out = aggregate(cfg)
    text = (out / "paper_comparison.md").read_text()
    assert "n_train 20, n_test 10 (the paper's 50,000 / 10,000)" in text
    comp = pd.read_csv(out / "paper_comparison.csv", keep_default_na=False)
    mlp = comp[
        (comp["table"] == "table1")
        & (comp["model"] == "mlp_1x512")
        & (comp["labels"] == "true")
        & (comp["weight_decay"] == "no")
    ]
    assert len(mlp) == 2 and mlp["within_tolerance"].eq("not comparable").all() and mlp["ours"].eq("").all()
    assert mlp["reason"].eq("n_train 20, the paper's 50,000; n_test 10, the paper's 10,000").all()
    assert set(comp["within_tolerance"]) == {"not run", "not comparable"}


def test_table2_gives_no_mean_across_states():
    """Table 2 (ImageNet): a cell whose seeds fitted and stopped has no mean; one state keeps its mean."""
    import pandas as pd

    from rethinking.analysis.paper import table2

    base = {
        "model": "inception_v3",
        "corruption": "true-labels",
        "variant": "",
        "regularizers": "none",
        "train_acc": 90.0,
        "test_acc": 70.0,
        "test_top5": 88.0,
        "best_test_acc": 71.0,
    }
    mixed = pd.DataFrame(
        [{**base, "seed": 0, "status": "fitted"}, {**base, "seed": 1, "status": "max_epochs", "test_acc": 60.0}]
    )
    t2 = table2(mixed)
    row = t2[(t2["labels"] == "true") & (t2["seeds"] == 2)].iloc[0]
    assert row["status"] == "mixed (fitted, max_epochs)" and pd.isna(row["test_top1"]) and pd.isna(row["train_top1"])
    one = table2(mixed.assign(status="max_epochs"))
    row = one[(one["labels"] == "true") & (one["seeds"] == 2)].iloc[0]
    assert row["status"] == "max_epochs" and row["test_top1"] == 65.0
