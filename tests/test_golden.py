"""Results unchanged by the redesign: config/tiny.yaml through Snakemake gives the run ids, artifact bytes,
epochs.csv, steps.csv and summary.json values recorded at 7d86318, before it (tests/data/golden/tiny.json,
written by tests/golden.py). Floats are compared within 1e-6 (another CPU may sum in another order); on the
machine that recorded them they are equal to the bit."""

import json

import pytest

from conftest import REPO
from golden import compare, snapshot

GOLDEN = REPO / "tests" / "data" / "golden" / "tiny.json"
# summary keys the redesign added (both engines now write the same keys): not in the golden values
ADDED = {"best_test_acc", "n_train_eval", "processes"}  # (and train_images_per_s, measured: golden.VOLATILE)


@pytest.mark.slow
def test_tiny_grid_gives_the_values_recorded_before_the_redesign(tiny_snakemake):
    want = json.loads(GOLDEN.read_text())
    got = snapshot(tiny_snakemake / "results" / "tiny")
    for run in got["runs"].values():
        added = {k: run["summary"].pop(k) for k in ADDED}
        epochs = run["epochs"]
        assert added["best_test_acc"] == pytest.approx(100 * max(e["test_acc"] for e in epochs))
        assert added["n_train_eval"] == run["summary"]["n_train"] and added["processes"] == 1
    assert sorted(got["runs"]) == sorted(want["runs"]) and got["artifacts"] == want["artifacts"]
    differences = compare(want, got)
    assert not differences, "\n".join(differences[:30])


def test_the_comparison_finds_a_changed_value():
    """The golden comparison can fail: a float moved by more than the tolerance, a row gone, a key added."""
    want = {"runs": {"r": {"epochs": [{"train_loss": 1.0, "epoch": 1}], "summary": {"status": "fitted"}}}}
    same = json.loads(json.dumps(want))
    assert compare(want, same) == []
    same["runs"]["r"]["epochs"][0]["train_loss"] = 1.0 + 1e-9
    assert compare(want, same) == []
    moved = json.loads(json.dumps(want))
    moved["runs"]["r"]["epochs"][0]["train_loss"] = 1.001
    assert compare(want, moved) == ["/runs/r/epochs[0]/train_loss: 1.0 != 1.001"]
    moved["runs"]["r"]["epochs"].append({})
    moved["runs"]["r"]["summary"]["new"] = 1
    assert compare(want, moved) == ["/runs/r/epochs: 1 rows != 2 rows", "/runs/r/summary/new: unexpected"]
