"""`python -m rethinking examples RUN_FOLDER`: a run's training examples, most likely mislabeled first, from a
record written by hand (engine.examples.write_record): an image-folder run, whose origins are file paths."""

import io

import numpy as np
import pandas as pd
import pytest

from rethinking.engine.examples import EXAMPLES, write_record

from conftest import call_cli, run_cli
from test_noise_detection import fake_record

CLASSES = ["airplane", "automobile", "bird"]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 40)
    label = true.copy()
    label[::4] = (true[::4] + 1) % 3  # every fourth label corrupted
    rec = fake_record(rng, label, true, epochs=12)
    rec["origin"] = np.array([f"train/{CLASSES[c]}/img_{i:03d}.png" for i, c in enumerate(true)])
    out = tmp_path / "runs" / "imagefolder-x" / "labels-0.25" / "mlp_1x512" / "none" / "seed0"
    out.mkdir(parents=True)
    write_record(out, {"run": "x", "epochs": 12, "classes": CLASSES, "origin": "path", "source": "imagefolder"}, rec)
    return out, rec


def test_csv_ranks_by_the_score_most_suspect_first(folder):
    out, rec = folder
    proc = call_cli("examples", out, "--by", "aum", "--top", "10", "--csv", cwd=out.parent, check=True)
    got = pd.read_csv(io.StringIO(proc.stdout))
    want = np.argsort(rec["aum"], kind="stable")[:10]  # lowest margin first
    assert got["index"].tolist() == want.tolist() and got["rank"].tolist() == list(range(1, 11))
    assert got["origin"].tolist() == rec["origin"][want].tolist()
    assert got["label"].tolist() == [CLASSES[c] for c in rec["label"][want]]
    assert got["original"].tolist() == [CLASSES[c] for c in rec["label_true"][want]]
    assert got["corrupted"].tolist() == (rec["label"] != rec["label_true"])[want].tolist()
    np.testing.assert_allclose(got["score_aum"], -rec["aum"][want], rtol=1e-6)
    np.testing.assert_allclose(got["aum"], rec["aum"][want], rtol=1e-6)
    assert got["corrupted"].mean() >= 0.8  # the fabricated margins separate them


def test_every_score_ranks_and_top_zero_gives_all(folder):
    out, rec = folder
    proc = call_cli("examples", out, "--by", "learned", "--top", "0", "--csv", cwd=out.parent, check=True)
    got = pd.read_csv(io.StringIO(proc.stdout))
    learned = np.where(rec["learned_epoch"] < 0, 13, rec["learned_epoch"])
    assert len(got) == 40 and got["index"].tolist() == np.argsort(-learned, kind="stable").tolist()
    proc = call_cli("examples", out, "--by", "loss", "--top", "3", "--csv", cwd=out.parent, check=True)
    assert pd.read_csv(io.StringIO(proc.stdout))["index"].tolist() == np.argsort(-rec["final_loss"])[:3].tolist()


def test_the_table_prints_the_file_paths_and_class_names(folder):
    out, rec = folder
    proc = run_cli("examples", out, "--top", "5", cwd=out.parent, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 6 and lines[0].split()[:5] == ["rank", "index", "origin", "label", "original"]
    first = int(np.argsort(rec["aum"], kind="stable")[0])
    assert rec["origin"][first] in lines[1] and CLASSES[rec["label"][first]] in lines[1].split()
    never = np.argsort(rec["aum"], kind="stable")[:5]
    assert ("never" in proc.stdout) == bool((rec["learned_epoch"][never] < 0).any())


def test_a_run_folder_without_a_record_is_one_line(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    for folder, says in (
        (tmp_path / "old", f"no {EXAMPLES}: the run was trained before"),
        (tmp_path / "no", "no such"),
    ):
        proc = call_cli("examples", folder, cwd=tmp_path)
        assert proc.returncode == 2 and not proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1 and says in proc.stderr, proc.stderr


def test_a_negative_top_is_one_line(folder):
    out, _ = folder
    proc = call_cli("examples", out, "--top", "-3", cwd=out.parent)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: --top: -3 is negative (a number of examples, or 0 for every example)"
    )


def test_an_unknown_score_is_refused(folder):
    out, _ = folder
    proc = run_cli("examples", out, "--by", "margin", cwd=out.parent)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "aum" in proc.stderr
