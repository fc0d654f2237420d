"""metrics.json: the headline numbers DVC users compare between experiments, few and honest about run states."""

import pandas as pd
import pytest

from rethinking.analysis.aggregate import metrics
from rethinking.plan import expand_runs, load
from rethinking.section5.stages import kernel_metrics, theorem_metrics

from conftest import REPO


def runs_frame(cfg, status="fitted"):
    """A runs.csv-like frame for every run of a config, as load_summaries gives it."""
    rows = []
    for r in expand_runs(cfg):
        random = r.corruption.id == "random-labels"
        rows.append(
            {
                "run": r.id,
                "model": r.model,
                "corruption": r.corruption.id,
                "regularizers": r.regularizers,
                "variant": r.variant,
                "seed": r.seed,
                "status": status,
                "train_acc": 100.0,
                "test_acc": 10.0 if random else 90.0,
                "step_first_fit": 300 if random else 100,
                "steps": 300 if random else 100,
                "epochs": 10,
                "diverged_step": None,
                "corruption_kind": r.corruption.kind,
                "label_level": r.corruption.label_level,
            }
        )
    return pd.DataFrame(rows)


def numbers(d):
    return [v for x in d.values() for v in (numbers(x) if isinstance(x, dict) else [x])]


@pytest.mark.parametrize(
    "name", ["params.yaml", "config/paper-cifar10.yaml", "config/tiny.yaml", "config/cifar10-jpeg-mlp.yaml"]
)
def test_a_few_dozen_numbers_at_most(name):
    cfg = load(REPO / name)
    m = metrics(runs_frame(cfg))
    assert len(numbers(m)) + 4 + 2 <= 40  # + Section 5: kernel test errors (2 features x 2), theorem (2 labels)
    assert m["runs"] == {"fitted": len(expand_runs(cfg)), "max_epochs": 0, "diverged": 0}


def test_default_headline_per_model():
    m = metrics(runs_frame(load(REPO / "params.yaml")))
    assert set(m) == {"mlp_1x512", "mlp_3x512", "alexnet", "runs"}
    assert m["alexnet"] == {
        "true_test_acc": 90.0,
        "random_train_acc": 100.0,
        "random_test_acc": 10.0,
        "random_fit_ratio": 3.0,
    }


def test_runs_that_did_not_fit_give_no_ratio_and_mixed_states_no_mean():
    runs = runs_frame(load(REPO / "params.yaml"))
    rand = (runs["model"] == "mlp_1x512") & (runs["corruption"] == "random-labels")
    runs.loc[rand, ["status", "train_acc", "step_first_fit"]] = ["max_epochs", 71.5, None]
    m = metrics(runs)
    assert m["mlp_1x512"]["random_fit_ratio"] is None  # the steps are a lower bound, not a ratio
    assert m["mlp_1x512"]["random_train_acc"] == 71.5  # one state: its mean is what happened
    assert m["runs"]["max_epochs"] == 1
    # two seeds that ended differently are not averaged into one number
    two = pd.concat([runs, runs[rand].assign(seed=1, status="fitted", train_acc=100.0, step_first_fit=250)])
    two = pd.concat([two, two[(two["model"] == "mlp_1x512") & (two["corruption"] == "true-labels")].assign(seed=1)])
    m = metrics(two)
    assert m["mlp_1x512"]["random_train_acc"] is None and m["mlp_1x512"]["random_fit_ratio"] is None
    assert m["mlp_1x512"]["true_test_acc"] == 90.0


def test_diverged_runs_have_no_accuracy():
    runs = runs_frame(load(REPO / "params.yaml"))
    sel = (runs["model"] == "alexnet") & (runs["corruption"] == "random-labels")
    runs.loc[sel, ["status", "train_acc", "test_acc", "step_first_fit"]] = ["diverged", None, None, None]
    m = metrics(runs)
    assert m["alexnet"]["random_train_acc"] is None and m["alexnet"]["random_fit_ratio"] is None
    assert m["runs"]["diverged"] == 1


def test_section5_metrics_names():
    rows = [
        {"features": "pixels", "ridge": 0.0, "test_error": 10.25},
        {"features": "random-conv", "ridge": 0.01, "test_error": 8.0},
    ]
    assert kernel_metrics(rows) == {"kernel": {"pixels_test_error": 10.25, "random_conv_l2_test_error": 8.0}}
    frame = pd.DataFrame({"labels": ["random", "random", "true"], "max_abs_error": [1e-12, 3e-11, 2e-12]})
    assert theorem_metrics(frame) == {
        "theorem": {"random_labels_max_abs_error": 3e-11, "true_labels_max_abs_error": 2e-12}
    }
