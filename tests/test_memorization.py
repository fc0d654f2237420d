"""Memorization under label noise: which labels are corrupted, the split of the training-set evaluation in the
in-memory engine, packs and the streaming engine, and the memorization / early-stopping tables and figures.

The end-to-end Snakemake and DVC runs of config/tiny.yaml (tests/test_pipeline.py) and of a streamed tree
(tests/test_imagenet.py) check the new tables, figures and DVC plots too."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rethinking import plan as rc
from rethinking.analysis import aggregate as ag
from rethinking.analysis import figures as F
from rethinking.data.corrupt import _rng, corrupt, corrupted_mask, load_corrupted
from rethinking.data.preprocess import prepare_all
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine import run as rn
from rethinking.engine.metrics import evaluate, metric_columns
from rethinking.files import load_npz, write_csv

from conftest import REPO, train_until_killed

QUIET = dict(log=lambda *_: None)


def _tiny(tmp_path, name="results", **training):
    """config/tiny.yaml (100 training digits: a subset) with its base artifact in a temporary results folder."""
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / name)
    cfg["training"].update(training)
    prepare(cfg)
    return cfg


def _run(cfg, corruption="labels-0.5", seed=0, model="mlp_1x512"):
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(corruption), model, "none", seed)
    corrupt(cfg, run.corruption)
    return run


# ---------------------------------------------------------------------------- which labels are corrupted


@pytest.mark.parametrize("cid", ["labels-0.5", "random-labels"])
def test_the_mask_is_exactly_the_labels_that_differ(tmp_path, cid):
    cfg = _tiny(tmp_path)
    c = rc.Corruption.parse(cid)
    corrupt(cfg, c)
    meta, arrays = load_corrupted(cfg, c)
    _, base = load_npz(rc.base_artifact(cfg))
    mask = corrupted_mask(arrays)
    assert mask.dtype == bool and len(mask) == len(base["y_train"]) == 100  # the train_size subset
    np.testing.assert_array_equal(arrays["y_train_true"], base["y_train"])
    np.testing.assert_array_equal(mask, arrays["y_train"] != base["y_train"])
    assert mask.mean() == pytest.approx(meta["labels_changed"])
    # the draw itself (corrupt_labels): a label replaced by a class equal to the true one is not corrupted
    rng = _rng(cfg["dataset"]["seed"], c)
    replaced = rng.random(100) < c.level
    drawn = rng.integers(0, len(meta["classes"]), size=100)
    gave_back = replaced & (drawn == base["y_train"])
    assert gave_back.any() and not mask[gave_back].any()
    np.testing.assert_array_equal(mask, replaced & (drawn != base["y_train"]))


def test_true_labels_and_pixel_corruptions_corrupt_no_label(tmp_path):
    cfg = _tiny(tmp_path)
    for cid in ("true-labels", "shuffled-pixels"):
        c = rc.Corruption.parse(cid)
        corrupt(cfg, c)
        assert not corrupted_mask(load_corrupted(cfg, c)[1]).any()


def test_the_aggregate_split_columns_are_the_engines():
    assert [c for c in ag.memorization_columns() if c in metric_columns()] == list(metric_columns())


# ---------------------------------------------------------------------------- the split, in-memory engine and packs


def _numpy_split(pred, y, y_true):
    noisy = y != y_true
    return {
        "clean_acc": 100 * np.mean(pred[~noisy] == y[~noisy]),
        "noisy_memorized": 100 * np.mean(pred[noisy] == y[noisy]),
        "noisy_true": 100 * np.mean(pred[noisy] == y_true[noisy]),
    }


def test_evaluate_splits_its_own_predictions():
    g = torch.Generator().manual_seed(0)
    n, k = 53, 4  # batches of 10: the last one partial
    x = torch.randn(n, 6, generator=g)
    y_true = torch.randint(0, k, (n,), generator=g)
    y = torch.where(torch.rand(n, generator=g) < 0.5, torch.randint(0, k, (n,), generator=g), y_true)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, k)

    def batches(labels):
        return [(x[i : i + 10], labels[i : i + 10], y_true[i : i + 10]) for i in range(0, n, 10)]

    ev = evaluate(model, batches(y), metrics=True)
    split = {c: ev[c] for c in metric_columns()}
    plain = evaluate(model, batches(y))
    assert (ev["loss"], ev["acc"], ev["correct"]) == (plain["loss"], plain["acc"], plain["correct"])
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    want = _numpy_split(pred, y.numpy(), y_true.numpy())
    assert split == pytest.approx(want) and 0 < want["noisy_memorized"] < 100
    assert list(split) == list(metric_columns())
    # no corrupted example: the two shares of the corrupted ones are blank
    clean = evaluate(model, batches(y_true), metrics=True)
    assert clean["clean_acc"] == pytest.approx(100 * np.mean(pred == y_true.numpy()))
    assert math.isnan(clean["noisy_memorized"]) and math.isnan(clean["noisy_true"])


def _split_of_checkpoint(cfg, run):
    """The split of the last epoch recomputed from the run's checkpoint: its model on the training set, numpy."""
    from rethinking.models import build_model

    _, arr = load_corrupted(cfg, run.corruption)
    x = prepare_all(torch.from_numpy(arr["x_train"]), cfg["preprocess"]["crop"])
    model = build_model(run.model, tuple(x.shape[1:]), num_classes=10, dropout=0.0)
    ck = torch.load(rc.run_dir(cfg, run) / rn.CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    return _numpy_split(pred, arr["y_train"], arr["y_train_true"]), corrupted_mask(arr)


def test_runs_and_packs_write_the_split_of_their_training_set(tmp_path):
    single, packed = _tiny(tmp_path, "single"), _tiny(tmp_path, "packed")
    runs = [_run(single, seed=s) for s in (0, 1)]
    _run(packed)
    for run in runs:
        tr.train(single, run, **QUIET)
    tr.train_runs(packed, runs, **QUIET)
    masks = []
    for run in runs:
        e = pd.read_csv(rc.run_dir(single, run) / "epochs.csv")
        s = json.loads((rc.run_dir(single, run) / "summary.json").read_text())
        assert list(e.columns[-3:]) == list(metric_columns()) and e[list(metric_columns())].notna().all().all()
        want, mask = _split_of_checkpoint(single, run)
        masks.append(mask)
        assert e[list(want)].iloc[-1].to_dict() == pytest.approx(want)
        assert s["n_corrupted"] == mask.sum() and 0 < mask.sum() < 100
        n_noisy = mask.sum()  # train_acc is the two groups together
        np.testing.assert_allclose(
            100 * e["train_acc"], (e["clean_acc"] * (100 - n_noisy) + e["noisy_memorized"] * n_noisy) / 100
        )
        # the pack writes the same columns, the same numbers up to an example on a rounding-sized margin
        p = pd.read_csv(rc.run_dir(packed, run) / "epochs.csv")
        assert list(p.columns) == list(e.columns)
        tol = 100 / min(n_noisy, 100 - n_noisy) + 1e-9
        assert (p[list(metric_columns())] - e[list(metric_columns())]).abs().max().max() <= tol
    np.testing.assert_array_equal(masks[0], masks[1])  # every seed splits by the same examples


def test_a_resumed_checkpoint_without_the_split_leaves_its_rows_blank(tmp_path, monkeypatch):
    cfg = _tiny(tmp_path)
    run = _run(cfg)
    train_until_killed(cfg, run, 2, monkeypatch)
    # as a checkpoint of an engine from before the split: its rows lack the columns
    path = rc.run_dir(cfg, run) / rn.CHECKPOINT
    ck = torch.load(path, map_location="cpu", weights_only=True)
    ck["progress"]["epochs_rows"] = [
        {k: v for k, v in row.items() if k not in metric_columns()} for row in ck["progress"]["epochs_rows"]
    ]
    torch.save(ck, path)
    lines = []
    tr.train(cfg, run, log=lines.append)
    assert any("resuming after epoch 2" in line for line in lines)
    e = pd.read_csv(rc.run_dir(cfg, run) / "epochs.csv")
    assert list(e["epoch"]) == [1, 2, 3]
    assert e.loc[:1, list(metric_columns())].isna().all().all() and e.loc[2, list(metric_columns())].notna().all()


# ---------------------------------------------------------------------------- the streaming engine


def test_the_streaming_engine_splits_the_images_it_evaluates(tmp_path):
    from rethinking.data import stream
    from rethinking.engine import streamed as ts

    from test_imagenet import make_jpeg_tree, params, prepared

    tree = make_jpeg_tree(tmp_path / "tree")
    p = params(tmp_path, tree, batch_size=4, max_epochs=1, image_size=32, train_eval_size=10)
    p.write_text(p.read_text().replace("inception_v3", "alexnet"))
    cfg = prepared(p, "random-labels")
    run = rc.find_run(cfg, "imagenet/random-labels/alexnet/none/seed0")
    out = ts.train(cfg, run, **QUIET)
    e = pd.read_csv(out / "epochs.csv")
    s = json.loads((out / "summary.json").read_text())
    assert list(e.columns[-3:]) == list(metric_columns())
    d = stream.load_streamed(cfg, run.corruption)
    idx = ts.train_eval_indices(len(d["y_train"]), 10, run.seed)
    mask = corrupted_mask(d)[idx]
    assert s["n_train_eval"] == 10 and s["n_corrupted"] == mask.sum() and 0 < mask.sum() < 10
    # the same numbers from the checkpoint's model on those ten images
    model = ts.build_stream_model("alexnet", 32, len(d["classes"]), 0.0)
    model.load_state_dict(torch.load(out / rn.CHECKPOINT, map_location="cpu", weights_only=True)["model"])
    images = stream.StreamImages(d["root"], d["train_files"], d["y_train"], 32, augment=False)
    batch = next(iter(stream.make_loader(images, [[(int(i), 0) for i in idx]], workers=0)))
    x, _ = stream.to_input(batch, images, torch.device("cpu"))
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    want = _numpy_split(pred, d["y_train"][idx], d["y_train_true"][idx])
    got = e.iloc[-1][list(metric_columns())].to_dict()
    assert got["clean_acc"] == pytest.approx(want["clean_acc"])
    assert got["noisy_memorized"] == pytest.approx(want["noisy_memorized"])
    assert got["noisy_true"] == pytest.approx(want["noisy_true"])


# ---------------------------------------------------------------------------- tables and figures

# (model, corruption) -> per seed (status, steps, train_acc, test_acc) for test_states.write_run
PLAN = {
    ("mlp_1x512", "true-labels"): [("fitted", 20, 100, 80), ("fitted", 20, 100, 84), ("fitted", 25, 100, 82)],
    ("mlp_1x512", "labels-0.5"): [("fitted", 40, 100, 40), ("fitted", 40, 100, 44), ("max_epochs", 50, 90, 30)],
    ("mlp_1x512", "random-labels"): [("fitted", 50, 100, 10), ("fitted", 50, 100, 12), ("diverged", 10, 0, 0)],
    ("mlp_3x512", "true-labels"): [("fitted", 20, 100, 80)] * 3,  # no label-corrupted run: not in the tables
}
OLD = ("mlp_1x512", "random-labels", 1)  # a run folder from before the split: epochs.csv without its columns
PEAK = 90.0  # every new run's test accuracy peaks at its second epoch


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    from test_states import SPE, write_run

    root = tmp_path_factory.mktemp("memorization")
    cfg = rc.validate(
        {
            "results_dir": str(root / "results"),
            "seeds": [0, 1, 2],
            "dataset": {"source": "digits", "train_size": 60, "test_size": 40, "seed": 0},
            "preprocess": {"crop": 7},
            "training": {"device": "cpu"},
            "grid": [
                {"name": "a", "models": ["mlp_1x512"], "corruptions": ["labels"], "levels": [0.0, 0.5, 1.0]},
                {"name": "b", "models": ["mlp_3x512"], "corruptions": ["true_labels"]},
            ],
        }
    )
    prepare(cfg)
    for run in rc.expand_runs(cfg):
        out, summary = write_run(cfg, run, *PLAN[(run.model, run.corruption.id)][run.seed])
        (out / "summary.json").write_text(json.dumps(summary))
        if (run.model, run.corruption.id, run.seed) != OLD:
            e = pd.read_csv(out / "epochs.csv")
            if len(e) > 2:
                e.loc[1, "test_acc"] = PEAK / 100
            n = len(e)
            e["clean_acc"], e["noisy_memorized"], e["noisy_true"] = (
                np.linspace(50, 100, n),
                np.linspace(5, 100, n),
                np.linspace(20, 0, n),
            )
            e.to_csv(out / "epochs.csv", index=False)
    assert SPE == 5
    tables = ag.aggregate(cfg)
    read = lambda name: pd.read_csv(tables / name, dtype={"variant": str})  # noqa: E731
    return cfg, read("memorization.csv"), read("early_stopping.csv")


def test_memorization_table_has_every_epoch_of_the_label_corrupted_runs(hand_made):
    cfg, mem, _ = hand_made
    assert list(mem.columns) == ag.memorization_columns()
    assert set(mem["corruption"]) == {"labels-0.5", "random-labels"} and set(mem["model"]) == {"mlp_1x512"}
    assert sorted(mem["level"].unique()) == [0.5, 1.0]
    epochs = {
        (s, seed): -(-PLAN[("mlp_1x512", c)][seed][1] // 5)
        for c, s in (("labels-0.5", 0.5), ("random-labels", 1.0))
        for seed in range(3)
    }
    assert mem.groupby(["level", "seed"]).size().to_dict() == epochs
    statuses = mem.groupby(["corruption", "seed"])["status"].first()
    assert statuses[("labels-0.5", 2)] == "max_epochs" and statuses[("random-labels", 2)] == "diverged"
    old = mem[(mem["corruption"] == "random-labels") & (mem["seed"] == 1)]
    assert old[list(metric_columns())].isna().all().all() and old["train_acc"].notna().all()
    new = mem[(mem["corruption"] == "labels-0.5") & (mem["seed"] == 0)]
    assert new["noisy_memorized"].iloc[-1] == 100 and new["train_acc"].iloc[-1] == pytest.approx(100)  # percent
    assert new["test_acc"].max() == pytest.approx(PEAK)


def test_early_stopping_keeps_the_best_epoch_and_never_averages_across_states(hand_made):
    cfg, _, es = hand_made
    assert list(es.columns) == ag.EARLY_STOPPING_COLUMNS
    # the label-corrupted runs and, at level 0, the true-label runs of the same model; not mlp_3x512's
    assert set(zip(es["model"], es["corruption"])) == {
        ("mlp_1x512", c) for c in ("true-labels", "labels-0.5", "random-labels")
    }
    row = es[(es["corruption"] == "labels-0.5") & (es["seed"] == 0)].iloc[0]
    assert (row["best_test_acc"], row["best_epoch"], row["best_step"]) == (PEAK, 2, 10)
    assert row["final_test_acc"] == pytest.approx(40) and row["gap"] == pytest.approx(PEAK - 40)
    true = es[es["corruption"] == "true-labels"]
    assert (true["cell_status"] == "fitted").all() and (true["seeds"] == 3).all()
    assert true["best_test_acc_mean"].iloc[0] == pytest.approx(PEAK)
    assert true["final_test_acc_mean"].iloc[0] == pytest.approx(82)
    assert true["gap_ci95"].notna().all() and true["level"].eq(0).all()
    # seeds that ended differently have no mean; a diverged run has no numbers at all
    for c in ("labels-0.5", "random-labels"):
        cell = es[es["corruption"] == c]
        assert (cell["cell_status"] == "mixed").all()
        assert cell[[k for k in es.columns if k.endswith(("_mean", "_sd", "_ci95"))]].isna().all().all()
    diverged = es[es["status"] == "diverged"].iloc[0]
    assert diverged[["best_test_acc", "best_epoch", "final_test_acc", "gap"]].isna().all()
    stopped = es[es["status"] == "max_epochs"].iloc[0]
    assert stopped["final_test_acc"] == pytest.approx(30) and stopped["gap"] == pytest.approx(PEAK - 30)


def test_the_figures_mark_each_state(hand_made):
    cfg, mem, es = hand_made
    fig = F.memorization(mem)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in axes] == ["MLP 1x512, none: p = 0.5", "MLP 1x512, none: p = 1"]
    half, rand = axes
    ends = lambda ax: {c.get_gid() for c in ax.collections if (c.get_gid() or "").startswith("end:")}  # noqa: E731
    assert ends(half) == {"end:fitted", "end:max_epochs"} and ends(rand) == {"end:fitted", "end:diverged"}
    assert {line.get_label() for line in half.lines} >= set(F.SPLIT_SERIES.values())
    fig = F.early_stopping(es)
    (ax,) = [a for a in fig.axes if a.axison]
    gids = {a.get_gid() for a in ax.lines + ax.collections}
    assert {
        "fitted:best during training",
        "fitted:at the end of training",
        "stopped:best during training",
        "diverged:at the end of training",
    } <= gids
    best = [line for line in ax.lines if line.get_gid() == "fitted:best during training"][0]
    assert best.get_xydata()[:, 0].tolist() == [0.0, 0.5, 1.0]  # the mean over the fitted seeds only
    np.testing.assert_allclose(best.get_xydata()[1], [0.5, PEAK])


def test_without_label_corrupted_runs_the_tables_are_their_header(tmp_path):
    cfg = _tiny(tmp_path)
    runs = pd.DataFrame(
        {
            "run": ["x"],
            "model": ["mlp_1x512"],
            "regularizers": ["none"],
            "variant": [""],
            "corruption": ["true-labels"],
            "label_level": [0.0],
            "seed": [0],
            "status": ["fitted"],
            "epochs": [3],
        }
    )
    for table, columns in (
        (ag.memorization(cfg, runs), ag.memorization_columns()),
        (ag.early_stopping(cfg, runs), ag.EARLY_STOPPING_COLUMNS),
    ):
        assert table.empty and list(table.columns) == columns
    path = tmp_path / "empty.csv"
    write_csv(path, ag.memorization(cfg, runs))
    F.memorization(pd.read_csv(path, dtype={"variant": str}))
    write_csv(path, ag.early_stopping(cfg, runs))
    F.early_stopping(pd.read_csv(path, dtype={"variant": str}))
