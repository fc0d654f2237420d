"""The per-epoch metric registry (rethinking.engine.metrics): a metric registered from a test file, as the
README's "Add a per-epoch metric" recipe does, reaches every run's epochs.csv through a single run and a pack,
with the value the checkpoint's model gives; and the engines' code lists are what their checkpoints depend on."""

import pandas as pd
import pytest
import torch

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt, load_corrupted
from rethinking.data.preprocess import prepare_all
from rethinking.data.sources import prepare
from rethinking.engine import loop
from rethinking.engine import run as rn
from rethinking.engine.metrics import Metric, evaluate, metric_columns, register, unregister
from rethinking.errors import ConfigError
from rethinking.models import build_model
from rethinking.plan.settings import ENGINE_SOURCES, STREAM_ENGINE_SOURCES

from conftest import REPO


def confidence_sums(logits, y, y_true, noisy):
    """The toy metric of the recipe: the softmax probability of the assigned label, summed over the batch,
    and over its corrupted examples, with their count."""
    p = logits.softmax(1).gather(1, y[:, None])[:, 0]
    return torch.stack([p.sum(), (p * noisy).sum(), noisy.sum()])


def confidence_values(sums, n):
    total, noisy_total, n_noisy = sums
    return {
        "confidence": 100 * total / n if n else float("nan"),
        "noisy_confidence": 100 * noisy_total / n_noisy if n_noisy else float("nan"),
    }


@pytest.fixture
def toy_metric():
    metric = register(Metric("confidence", ("confidence", "noisy_confidence"), confidence_sums, confidence_values))
    yield metric
    unregister("confidence")


def test_a_registered_metric_reaches_every_runs_epochs_csv(tmp_path, toy_metric):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["training"]["max_epochs"] = 2
    prepare(cfg)
    runs = [
        rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(c), "mlp_1x512", "none", 0)
        for c in ("labels-0.5", "random-labels", "true-labels")
    ]
    for r in runs:
        corrupt(cfg, r.corruption)
    loop.train(cfg, runs[0], log=lambda *_: None)  # a single run
    loop.train_runs(cfg, runs[1:], log=lambda *_: None)  # a pack of two
    for run in runs:
        e = pd.read_csv(rc.run_dir(cfg, run) / "epochs.csv")
        assert list(e.columns[-5:]) == [*metric_columns()] and metric_columns()[-2:] == toy_metric.columns
        assert e["confidence"].between(0, 100).all() and len(e) == 2
        # the last epoch's value is the checkpoint's model on the training set
        _, arr = load_corrupted(cfg, run.corruption)
        x = prepare_all(torch.from_numpy(arr["x_train"]), cfg["preprocess"]["crop"])
        model = build_model(run.model, tuple(x.shape[1:]), num_classes=10)
        model.load_state_dict(torch.load(rc.run_dir(cfg, run) / rn.CHECKPOINT, weights_only=True)["model"])
        with torch.no_grad():
            p = model.eval()(x).softmax(1).gather(1, torch.from_numpy(arr["y_train"])[:, None])[:, 0]
        assert e["confidence"].iloc[-1] == pytest.approx(100 * float(p.mean()), rel=1e-5)
        if run.corruption.kind == "true_labels":  # no corrupted example: blank
            assert e["noisy_confidence"].isna().all()


def test_the_registry_refuses_a_name_or_column_twice(toy_metric):
    with pytest.raises(ConfigError, match="registered already"):
        register(Metric("confidence", ("other",), confidence_sums, confidence_values))
    with pytest.raises(ConfigError, match="registered already"):
        register(Metric("again", ("clean_acc",), confidence_sums, confidence_values))


def test_evaluate_gives_the_same_numbers_in_any_batching(toy_metric):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 5, generator=g), torch.randint(0, 3, (37,), generator=g)
    y_true = torch.where(torch.rand(37, generator=g) < 0.3, (y + 1) % 3, y)
    model = torch.nn.Linear(5, 3)
    results = [
        evaluate(model, [(x[i : i + b], y[i : i + b], y_true[i : i + b]) for i in range(0, 37, b)], metrics=True)
        for b in (4, 37)
    ]
    assert results[0].keys() == results[1].keys() >= {"loss", "acc", "correct", "n", *metric_columns()}
    assert results[0] == pytest.approx(results[1], rel=1e-6, nan_ok=True)  # float32 sums per batch


def test_each_engine_restarts_only_on_its_own_code():
    """A checkpoint depends on the code that decides its run's numbers: an edit of the in-memory loop leaves
    streamed (ImageNet) checkpoints alone, and an edit of the metrics restarts both."""
    assert "engine/loop.py" in ENGINE_SOURCES and "engine/loop.py" not in STREAM_ENGINE_SOURCES
    assert "engine/streamed.py" in STREAM_ENGINE_SOURCES and "engine/streamed.py" not in ENGINE_SOURCES
    for shared in ("engine/run.py", "engine/metrics.py", "engine/optim.py", "engine/precision.py"):
        assert shared in ENGINE_SOURCES and shared in STREAM_ENGINE_SOURCES
