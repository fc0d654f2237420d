"""Training: the schedule, the stop rule, run outputs, and resume after a kill."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine import run as rn

from conftest import REPO, copy_tiny, train_until_killed


def test_learning_rate_per_epoch_and_per_images():
    assert rn.learning_rate(0, 0.1, 0.95, None, 50_000) == pytest.approx(0.1)
    assert rn.learning_rate(3, 0.1, 0.95, None, 50_000) == pytest.approx(0.1 * 0.95**3)
    # per 50,000 images: one CIFAR-10 epoch is one decay step, 1,437 digits are 1437/50000 of one
    assert rn.learning_rate(3, 0.1, 0.95, 50_000, 50_000) == pytest.approx(0.1 * 0.95**3)
    assert rn.learning_rate(10, 0.01, 0.95, 50_000, 1437) == pytest.approx(0.01 * 0.95 ** (10 * 1437 / 50_000))


def test_stop_rule_is_every_example():
    assert rn.fitted(100, 100)
    assert not rn.fitted(99, 100)
    assert not rn.fitted(0, 0)


@pytest.fixture
def tiny(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    prepare(cfg)
    return cfg


def _run(cfg, corruption="true-labels", model="mlp_1x512", regs="none"):
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(corruption), model, regs, 0)
    corrupt(cfg, run.corruption)
    return run


def test_run_outputs(tiny):
    run = _run(tiny)
    out = tr.train(tiny, run, log=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())
    epochs = pd.read_csv(out / "epochs.csv")
    steps = pd.read_csv(out / "steps.csv")
    assert summary["status"] in ("fitted", "max_epochs") and summary["epochs"] == len(epochs) <= 3
    assert summary["steps"] == 4 * len(epochs)  # 100 images at batch 25
    assert summary["parameters"] == 49 * 512 + 512 + 512 * 10 + 10
    assert list(epochs.columns[:4]) == ["epoch", "step", "lr", "batch_train_acc"]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "wall_time"} <= set(epochs.columns)
    assert list(steps["step"]) == list(range(2, summary["steps"] + 1, 2))  # every log_every=2 steps
    assert summary["train_acc"] == pytest.approx(100 * epochs["train_acc"].iloc[-1])
    assert (out / rn.CHECKPOINT).is_file()


def test_fitting_stops_and_records_first_fit(tiny):
    tiny["training"]["max_epochs"] = 60
    run = _run(tiny)
    summary = json.loads((tr.train(tiny, run, log=lambda *_: None) / "summary.json").read_text())
    assert summary["status"] == "fitted" and summary["train_acc"] == 100.0
    assert summary["step_first_fit"] == summary["steps"] and summary["epochs"] < 60


def test_same_seed_same_metrics_on_cpu(tiny, tmp_path):
    run = _run(tiny, "random-labels", "alexnet", "crop-wd")
    a = pd.read_csv(tr.train(tiny, run, log=lambda *_: None) / "epochs.csv")
    other = dict(tiny, results_dir=str(tmp_path / "again"))
    prepare(other)
    corrupt(other, run.corruption)
    b = pd.read_csv(tr.train(other, run, log=lambda *_: None) / "epochs.csv")
    cols = ["step", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_resume_after_kill_gives_the_same_result(tiny, tmp_path, monkeypatch):
    run = _run(tiny, "labels-0.5", "mlp_1x512", "dropout")
    tiny["training"]["max_epochs"] = 4
    full = json.loads((tr.train(tiny, run, log=lambda *_: None) / "summary.json").read_text())

    other = dict(tiny, results_dir=str(tmp_path / "killed"))
    prepare(other)
    corrupt(other, run.corruption)
    train_until_killed(other, run, 2, monkeypatch)
    assert not (rc.run_dir(other, run) / "summary.json").exists()
    lines = []
    resumed = json.loads((tr.train(other, run, log=lines.append) / "summary.json").read_text())
    assert any("resuming after epoch 2" in line for line in lines)
    for key in ("steps", "epochs", "train_acc", "test_acc", "train_loss", "test_loss", "status"):
        assert resumed[key] == full[key], key


def test_finished_run_is_not_trained_further(tiny):
    run = _run(tiny)
    first = json.loads((tr.train(tiny, run, log=lambda *_: None) / "summary.json").read_text())
    again = json.loads((tr.train(tiny, run, log=lambda *_: None) / "summary.json").read_text())
    assert again["steps"] == first["steps"] and again["test_loss"] == first["test_loss"]


def test_all_models_train_a_step_on_digits(tiny):
    tiny["training"]["max_epochs"] = 1
    for model in ("mlp_3x512", "inception", "inception_nobn"):
        s = json.loads((tr.train(tiny, _run(tiny, model=model), log=lambda *_: None) / "summary.json").read_text())
        assert s["epochs"] == 1 and math.isfinite(s["train_loss"])


def test_divergence_is_a_result_not_a_crash(tiny, tmp_path):
    from rethinking.analysis.aggregate import aggregate
    from rethinking.analysis.figures import figures

    tiny["training"]["lr"]["alexnet"] = 1e12  # plants inf/NaN losses within a few steps
    tiny["training"]["max_epochs"] = 5
    diverging = _run(tiny, "true-labels", "alexnet", "crop-wd")
    summary = json.loads((tr.train(tiny, diverging, log=lambda *_: None) / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] is not None and summary["diverged_step"] <= summary["steps"]
    assert summary["epochs"] < 5 or summary["diverged_step"] <= 4
    # the rest of the grid trains normally; the tables mark the run instead of averaging it in
    for run in rc.expand_runs(tiny):
        if run != diverging:
            corrupt(tiny, run.corruption)
            tr.train(tiny, run, log=lambda *_: None)
    out = aggregate(tiny)
    runs = pd.read_csv(out / "runs.csv")
    row = runs[runs["run"] == diverging.id].iloc[0]
    assert row["status"] == "diverged" and math.isnan(row["test_acc"])
    t1 = pd.read_csv(out / "table1.csv")
    alex = t1[t1["model"] == "alexnet"].iloc[0]
    assert alex["diverged"] == 1 and math.isnan(alex["test_acc"])
    assert t1[t1["model"] == "mlp_1x512"]["diverged"].eq(0).all()
    assert runs["status"].eq("diverged").sum() == 1
    figures(tiny)  # draws with the diverged run marked, no error


def test_a_checkpoint_write_cut_short_leaves_nothing_after_the_rerun(tiny):
    """kill -9 during torch.save leaves atomic_path's temp file; the next run of that run removes it."""
    run = _run(tiny)
    out = rc.run_dir(tiny, run)
    out.mkdir(parents=True)
    stale = out / ".checkpoint.pt.x1y2z3.pt.tmp"
    stale.write_bytes(b"half a checkpoint")
    tr.train(tiny, run, log=lambda *_: None)
    assert not stale.exists() and (out / rn.CHECKPOINT).is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "summary.json", "epochs.csv", "steps.csv", "examples.npz", ".train.lock"]
    )


def test_run_tables_are_written_as_pandas_writes_them(tmp_path):
    """io.write_rows (the engines' epochs.csv and steps.csv, without importing pandas) is byte for byte
    pandas' to_csv of the same rows: key order, blanks for NaN/None/missing, float repr, int columns
    with a blank as floats, quoting, numpy scalars."""
    import numpy as np

    from rethinking.files import write_csv, write_rows

    rows = [
        {
            "epoch": 1,
            "step": 45,
            "lr": 0.01,
            "acc": 0.43771746694502434,
            "x": 1e-05,
            "big": 1.5e20,
            "s": "a,b",
            "flag": True,
            "nan": float("nan"),
            "np": np.float64(0.1),
            "npi": np.int64(3),
            "f32": np.float32(0.1),
        },
        {
            "epoch": 2,
            "step": 90,
            "lr": 0.009985269167730945,
            "acc": 100.0,
            "x": None,
            "big": 3,
            "s": "plain",
            "flag": False,
            "nan": float("nan"),
            "np": np.float64(2),
            "npi": np.int64(4),
            "extra": 5,
            "f32": np.float32(2.5),
        },
        {
            "epoch": 3,
            "step": 135,
            "lr": 0.0,
            "acc": -0.0,
            "s": 'q"uote',
            "flag": True,
            "np": float("inf"),
            "npi": 7,
            "extra": None,
        },
    ]
    for name, columns in (("all", None), ("chosen", ["step", "lr", "missing", "epoch"])):
        write_rows(tmp_path / f"{name}.csv", rows, columns)
        write_csv(tmp_path / f"{name}_pd.csv", pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows))
        assert (tmp_path / f"{name}.csv").read_bytes() == (tmp_path / f"{name}_pd.csv").read_bytes()
    write_rows(tmp_path / "empty.csv", [], ["step", "epoch", "train_loss"])
    assert (tmp_path / "empty.csv").read_text() == "step,epoch,train_loss\n"


def test_a_training_process_imports_neither_pandas_nor_dynamo(tiny):
    """Every training job is a fresh process: pandas (0.26 s) and torch._dynamo (1.8 s, torch.optim's
    optimizers) are not imported by `train`."""
    import subprocess
    import sys

    import yaml

    run = _run(tiny)
    params = copy_tiny(
        Path(tiny["results_dir"]).parent / "params",
        yaml.safe_dump({k: v for k, v in tiny.items() if not k.startswith("_")}),
    )
    code = (
        "import sys; from rethinking import cli; code = cli.main(sys.argv[1:]); "
        "print(code, sorted(m for m in ('pandas', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "train", "--params", params, "--run", run.id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().splitlines()[-1] == "0 []"
    assert (rc.run_dir(tiny, run) / "summary.json").is_file()
