"""The per-example record (rethinking.engine.examples): its scores against a direct numpy computation from a
run's logits, exact resumes, packs and the streamed engine, origins, and old artifacts."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import examples as ex
from rethinking.engine import loop as tr
from rethinking.errors import ArtifactError
from rethinking.files import load_npz, save_npz

from conftest import REPO, call_cli, check_record, make_image_folder, reference_record, train_until_killed

FLOATS = ("confidence", "variability", "aum", "final_loss")
EXACT = ("index", "origin", "label", "label_true", "learned_epoch", "forgetting", "final_correct", "correct_bits")


def _cfg(tmp_path, name="results", **training):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / name)
    cfg["training"].update({"max_epochs": 8, "lr": {"mlp_1x512": 0.05}, **training})
    prepare(cfg)
    return cfg


def _run(cfg, corruption="labels-0.5", model="mlp_1x512", seed=0):
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(corruption), model, "none", seed)
    corrupt(cfg, run.corruption)
    return run


def _logging_adds(monkeypatch) -> list:
    """Every batch the record is given, as (epoch, logits, labels) on the CPU."""
    seen = []
    real = ex.ExampleRecord.add

    def add(self, logits, y, right=None):
        seen.append((self.epoch, logits.detach().double().cpu().numpy(), y.cpu().numpy()))
        real(self, logits, y, right)

    monkeypatch.setattr(ex.ExampleRecord, "add", add)
    return seen


def _by_epoch(seen):
    epochs = sorted({e for e, _, _ in seen})
    logits = [np.concatenate([z for e, z, _ in seen if e == k]) for k in epochs]
    return logits, np.concatenate([y for e, _, y in seen if e == epochs[0]])


def _assert_reference(arrays, ref, epochs):
    for key in ("learned_epoch", "forgetting", "final_correct"):
        np.testing.assert_array_equal(arrays[key], ref[key], err_msg=key)
    for key in FLOATS:
        np.testing.assert_allclose(arrays[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(ex.correct_matrix(arrays["correct_bits"], epochs), ref["correct"])


def _same_record(a, b, exact=True):
    (ma, xa), (mb, xb) = ex.read_record(a), ex.read_record(b)
    assert ma == mb
    for key in EXACT:
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)
    for key in FLOATS:
        if exact:
            np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)
        else:
            np.testing.assert_allclose(xa[key], xb[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_scores_are_the_numpy_computation_from_the_logged_logits(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    run = _run(cfg)
    seen = _logging_adds(monkeypatch)
    out = tr.train(cfg, run, log=lambda *_: None)
    meta, arrays = check_record(out)
    logits, y = _by_epoch(seen)
    assert len(logits) == meta["epochs"] == 8
    np.testing.assert_array_equal(y, arrays["label"])
    ref = reference_record(logits, y)
    _assert_reference(arrays, ref, meta["epochs"])
    # a run of this length has examples forgotten, learned late and never, and corrupted ones among them
    assert arrays["forgetting"].max() >= 1 and (arrays["learned_epoch"] == -1).any()
    assert (arrays["learned_epoch"] > 1).any() and (arrays["label"] != arrays["label_true"]).sum() > 20
    # origins: each image's index in sklearn's load_digits; labels: the base's and the artifact's
    _, base = load_npz(rc.base_artifact(cfg))
    np.testing.assert_array_equal(arrays["origin"], base["origin_train"])
    np.testing.assert_array_equal(arrays["label_true"], base["y_train"])
    assert meta["origin"] == "index" and meta["source"] == "sklearn.datasets.load_digits"
    assert meta["classes"] == [str(i) for i in range(10)]


def test_a_killed_and_resumed_run_writes_the_record_of_an_uninterrupted_one(tmp_path, monkeypatch):
    full, killed = _cfg(tmp_path, "full"), _cfg(tmp_path, "killed")
    run = _run(full)
    _run(killed)
    tr.train(full, run, log=lambda *_: None)
    train_until_killed(killed, run, 3, monkeypatch)
    assert not (rc.run_dir(killed, run) / ex.EXAMPLES).exists()
    lines = []
    tr.train(killed, run, log=lines.append)
    assert any("resuming after epoch 3" in line for line in lines)
    _same_record(rc.run_dir(full, run), rc.run_dir(killed, run), exact=True)


def test_packed_runs_write_the_records_of_single_runs(tmp_path):
    single, packed = _cfg(tmp_path, "single"), _cfg(tmp_path, "packed")
    runs = [_run(single, c, seed=s) for c in ("labels-0.5", "gaussian") for s in (0, 1)]
    for r in runs:
        _run(packed, r.corruption.id, seed=r.seed)
        tr.train(single, r, log=lambda *_: None)
    tr.train_runs(packed, runs, log=lambda *_: None)
    for r in runs:
        check_record(rc.run_dir(packed, r))
        _same_record(rc.run_dir(single, r), rc.run_dir(packed, r), exact=False)


def test_an_image_folder_records_file_paths(tmp_path):
    root = make_image_folder(tmp_path / "folder")
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["dataset"].update(source="imagefolder", root=str(root), train_size=None, test_size=None)
    cfg["preprocess"]["crop"] = None
    cfg["training"]["max_epochs"] = 2
    prepare(cfg)
    out = tr.train(cfg, _run(cfg, "random-labels"), log=lambda *_: None)
    meta, arrays = check_record(out)
    assert meta["origin"] == "path" and meta["source"] == str(root.resolve())
    for origin, label in zip(arrays["origin"], arrays["label_true"]):
        split, cls, name = origin.split("/")
        assert split == "train" and (root / origin).is_file() and meta["classes"][label] == cls
    # `examples` lists them, most suspect first: the files to open
    proc = call_cli("examples", str(out), "--top", "0", "--csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = pd.read_csv(io.StringIO(proc.stdout))
    assert sorted(listed["origin"]) == sorted(arrays["origin"]) and len(listed) == 18
    assert set(listed["original"]) == {"cat", "dog", "frog"}


def test_a_base_artifact_without_origins_gives_indices(tmp_path):
    cfg = _cfg(tmp_path, max_epochs=1)
    path = rc.base_artifact(cfg)
    meta, arrays = load_npz(path)
    del arrays["origin_train"]
    save_npz(path, meta, **arrays)  # as prepare wrote it before origins were stored
    out = tr.train(cfg, _run(cfg, "true-labels"), log=lambda *_: None)
    meta, arrays = check_record(out)
    assert meta["origin"] == "index" and "(index)" in meta["source"]
    np.testing.assert_array_equal(arrays["origin"], np.arange(len(arrays["label"])))


def test_a_run_folder_without_a_record_reads_as_none_and_a_foreign_file_is_named(tmp_path):
    assert ex.read_record(tmp_path) is None
    save_npz(tmp_path / ex.EXAMPLES, {"kind": "base"}, x=np.zeros(3))
    with pytest.raises(ArtifactError, match="examples.npz: not a run's per-example record"):
        ex.read_record(tmp_path)


def test_the_record_takes_ties_and_one_class_models_as_evaluate_counts_them():
    rec = ex.ExampleRecord(3, 4, torch.device("cpu"))
    rec.begin(1)
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 0.0, 1.0]])
    rec.add(logits, torch.tensor([0, 2, 0]))
    rec.end()
    a = rec.arrays(1)
    # argmax takes the first of tied logits: example 0 right (margin 0), example 1 wrong (margin 0)
    np.testing.assert_array_equal(a["final_correct"], [True, False, True])
    np.testing.assert_allclose(a["aum"], [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(a["learned_epoch"], [1, -1, 1])
    with pytest.raises(RuntimeError, match="2 examples evaluated at epoch 2, expected 3"):
        rec.begin(2)
        rec.add(logits[:2], torch.tensor([0, 2]))
        rec.end()
