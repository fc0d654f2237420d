"""Checkpoints: read with weights_only; a damaged one is moved aside to checkpoint.pt.corrupt and the run starts over.

Both engines resume through io.load_checkpoint. Damage is planted in a real checkpoint of a tiny run (100
digits, 3 epochs; an 8-step streamed run), and the damaged run, trained again through the CLI, must give
what an untouched run gave (CPU runs are deterministic).
"""

import json
import os
import random
import shlex
import shutil

import pandas as pd
import pytest
import torch
import yaml

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine import run as rn
from rethinking.engine import streamed as ts
from rethinking.files import load_checkpoint

from conftest import call_cli, torchrun_train
from test_imagenet import make_jpeg_tree, prepared
from test_imagenet import params as stream_params

PARAMS = """
results_dir: {results}
seeds: [0, 1, 2, 3]
dataset: {{source: digits, train_size: 100, test_size: 50, seed: 0}}
preprocess: {{crop: 7}}
training: {{batch_size: 25, max_epochs: 3, log_every: 2, eval_batch_size: 64, device: cpu}}
grid:
  - {{name: a, models: [mlp_1x512], corruptions: [true_labels]}}
"""
RUN = "digits-train100-test50/true-labels/mlp_1x512/none/seed0"
STREAM_RUN = "imagenet/random-labels/alexnet/none/seed0"
EPOCH_COLS = ["epoch", "step", "lr", "batch_train_acc", "train_loss", "train_acc", "test_loss", "test_acc"]
SUMMARY_KEYS = ("status", "epochs", "steps", "step_first_fit", "train_acc", "test_acc", "train_loss", "test_loss")


class Payload:
    """Unpickling this runs a shell command: what an unsafe checkpoint can carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _unsafe_copy(good, dst, marker):
    """`good`'s checkpoint, plus an object whose unpickling touches `marker`: with weights_only=False a resume
    would read it as a good checkpoint (right fingerprint, every key) and run the command."""
    ck = torch.load(good, map_location="cpu", weights_only=True)
    ck["note"] = Payload(f"touch {shlex.quote(str(marker))}")
    torch.save(ck, dst)


def _same_result(ref_dir, out_dir, cols=EPOCH_COLS, keys=SUMMARY_KEYS):
    a, b = (json.loads((d / "summary.json").read_text()) for d in (ref_dir, out_dir))
    for key in keys:
        assert a[key] == b[key], key
    pd.testing.assert_frame_equal(pd.read_csv(ref_dir / "epochs.csv")[cols], pd.read_csv(out_dir / "epochs.csv")[cols])
    pd.testing.assert_frame_equal(pd.read_csv(ref_dir / "steps.csv"), pd.read_csv(out_dir / "steps.csv"))


def _moved_aside(out, log, damaged: bytes, *needles):
    """The damaged file is checkpoint.pt.corrupt, byte for byte; one log line names it and why; the run
    started over and left a good checkpoint."""
    ckpt = out / rn.CHECKPOINT
    assert (out / "checkpoint.pt.corrupt").read_bytes() == damaged
    lines = [line for line in log.splitlines() if "cannot be used" in line]
    assert len(lines) == 1, log
    assert str(ckpt) in lines[0] and "moved it to checkpoint.pt.corrupt" in lines[0] and "starting over" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "resuming" not in log
    torch.load(ckpt, map_location="cpu", weights_only=True)  # the new checkpoint: tensors and plain data only


# ---------------------------------------------------------------------------- the in-memory engine


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An untouched run (trained in this process) and its data: (results folder, run folder)."""
    root = tmp_path_factory.mktemp("reference")
    path = root / "p.yaml"
    path.write_text(PARAMS.format(results=root / "results"))
    cfg = rc.load(path)
    prepare(cfg)
    corrupt(cfg, rc.Corruption.parse("true-labels"))
    out = tr.train(cfg, rc.find_run(cfg, RUN), log=lambda *_: None)
    return root / "results", out


def _fresh(tmp_path, reference, planted: dict[str, bytes] | None = None):
    """A results folder with the reference's data and no runs but `planted` ({run id: checkpoint bytes})."""
    results = tmp_path / "results"
    shutil.copytree(reference[0] / "data", results / "data")
    path = tmp_path / "p.yaml"
    path.write_text(PARAMS.format(results=results))
    for run_id, data in (planted or {}).items():
        (results / "runs" / run_id).mkdir(parents=True)
        (results / "runs" / run_id / rn.CHECKPOINT).write_bytes(data)
    return path, results


def test_a_truncated_checkpoint_is_moved_aside_and_the_run_retrains_to_the_same_result(tmp_path, reference):
    good = (reference[1] / rn.CHECKPOINT).read_bytes()
    cut = good[: len(good) // 2]
    params, results = _fresh(tmp_path, reference, {RUN: cut})
    proc = call_cli("train", "--params", params, "--run", RUN, cwd=tmp_path, check=True)
    out = results / "runs" / RUN
    _moved_aside(out, proc.stdout, cut, "RuntimeError", "PytorchStreamReader failed reading zip archive")
    assert f"{RUN}: epoch 1 step 4 " in proc.stdout  # from the first epoch
    _same_result(reference[1], out)


def test_an_unsafe_checkpoint_is_refused_and_its_code_never_runs(tmp_path, reference):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _unsafe_copy(reference[1] / rn.CHECKPOINT, evil, marker)
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.is_file()
    marker.unlink()

    params, results = _fresh(tmp_path, reference, {RUN: evil.read_bytes()})
    proc = call_cli("train", "--params", params, "--run", RUN, cwd=tmp_path, check=True)
    assert not marker.exists(), "loading the checkpoint ran the code it carried"
    out = results / "runs" / RUN
    _moved_aside(out, proc.stdout, evil.read_bytes(), "UnpicklingError", "weights_only refused it", "posix.system")
    _same_result(reference[1], out)


def test_packed_runs_each_heal_their_own_damaged_checkpoint(tmp_path, reference):
    """A pack resumes through the same loop: random bytes, a text file, a torch file holding a list and one holding
    a dict without a checkpoint's keys, one per member, each moved aside with its own reason."""
    ids = [RUN.replace("seed0", f"seed{s}") for s in range(4)]
    damage = {ids[0]: _random_bytes(4096), ids[1]: b"this is not a checkpoint\n"}
    for run_id, obj in ((ids[2], [torch.zeros(3), 1]), (ids[3], {"weights": torch.zeros(3)})):
        torch.save(obj, tmp_path / "x.pt")
        damage[run_id] = (tmp_path / "x.pt").read_bytes()
    params, results = _fresh(tmp_path, reference, damage)
    args = [a for r in ids for a in ("--run", r)]
    proc = call_cli("train", "--params", params, *args, cwd=tmp_path, check=True)
    reasons = {ids[0]: "UnpicklingError", ids[1]: "Error", ids[2]: "it holds a list", ids[3]: "it has no fingerprint"}
    for run_id in ids:
        out = results / "runs" / run_id
        log = "\n".join(line for line in proc.stdout.splitlines() if line.startswith(f"{run_id}: "))
        _moved_aside(out, log, damage[run_id], reasons[run_id])
        s = json.loads((out / "summary.json").read_text())
        assert (s["epochs"], s["steps"]) == (3, 12)
    ref = json.loads((reference[1] / "summary.json").read_text())
    s0 = json.loads((results / "runs" / ids[0] / "summary.json").read_text())
    assert s0["train_acc"] == pytest.approx(ref["train_acc"], abs=1.0) and s0["status"] == ref["status"]


def test_a_checkpoint_of_other_settings_is_not_moved_aside(tmp_path, reference):
    ck = torch.load(reference[1] / rn.CHECKPOINT, map_location="cpu", weights_only=True)
    ck["fingerprint"] = "0" * 64
    params, results = _fresh(tmp_path, reference)
    out = results / "runs" / RUN
    out.mkdir(parents=True)
    torch.save(ck, out / rn.CHECKPOINT)
    cfg = rc.load(params)
    lines = []
    tr.train(cfg, rc.find_run(cfg, RUN), log=lines.append)
    assert f"{RUN}: checkpoint was made with other settings or code; starting over" in lines
    assert not (out / "checkpoint.pt.corrupt").exists() and not any("cannot be used" in line for line in lines)
    _same_result(reference[1], out)


# ---------------------------------------------------------------------------- load_checkpoint itself


def _random_bytes(n: int) -> bytes:
    """Noise that is surely no pickle: 0xff is no pickle opcode, so the first byte is refused (UnpicklingError).
    os.urandom alone made the reason depend on the draw: about 1 draw in 12 starts with a valid opcode and fails
    later (IndexError, KeyError, UnicodeDecodeError), which once failed CI."""
    return b"\xff" + random.Random(n).randbytes(n - 1)


def _damaged(kind, good: bytes, tmp_path) -> bytes:
    if kind == "truncated":
        return good[:-100]
    if kind == "empty":
        return b""
    if kind == "random bytes":
        return _random_bytes(2048)
    if kind == "text":
        return b"epoch: 3\n"
    obj = {
        "list": [1, 2],
        "no fingerprint": {"model": {}},
        "lacks keys": {"fingerprint": "fp", "model": {}},
        "unsafe": {"fingerprint": "fp", "model": {}, "x": Payload(f"touch {shlex.quote(str(tmp_path / 'pwned'))}")},
    }[kind]
    torch.save(obj, tmp_path / "obj.pt")
    return (tmp_path / "obj.pt").read_bytes()


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("truncated", "RuntimeError: PytorchStreamReader"),
        ("empty", "EOFError: the file ends early"),
        ("random bytes", "UnpicklingError"),
        ("text", "Error"),
        ("list", "it holds a list"),
        ("no fingerprint", "it has no fingerprint"),
        ("lacks keys", "it lacks 'optimizer'"),
        ("unsafe", "weights_only refused it: Trying to load unsupported GLOBAL posix.system"),
    ],
)
def test_load_checkpoint_moves_a_damaged_file_aside_with_its_reason(tmp_path, reference, kind, reason):
    path = tmp_path / "checkpoint.pt"
    (tmp_path / "checkpoint.pt.corrupt").write_bytes(b"an older damaged file")
    data = _damaged(kind, (reference[1] / rn.CHECKPOINT).read_bytes(), tmp_path)
    path.write_bytes(data)
    lines = []
    assert load_checkpoint(path, "fp", ["model", "optimizer"], lines.append, name="r") is None
    assert not path.exists() and (tmp_path / "checkpoint.pt.corrupt").read_bytes() == data  # the older one replaced
    assert len(lines) == 1 and lines[0].startswith(f"r: checkpoint {path} cannot be used (") and reason in lines[0]
    assert len(lines[0]) < 400 and "\n" not in lines[0]
    assert not (tmp_path / "pwned").exists()


def test_load_checkpoint_of_other_processes_only_reads(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"garbage")
    lines = []
    assert load_checkpoint(path, "fp", [], lines.append, move_aside=False) is None
    assert path.read_bytes() == b"garbage" and lines == []
    assert load_checkpoint(tmp_path / "none.pt", "fp", [], lines.append) is None and lines == []  # no file: no line


def test_both_engines_write_checkpoints_that_load_with_weights_only(reference, stream_reference):
    for ck_path, keys in (
        (reference[1] / rn.CHECKPOINT, rn.CHECKPOINT_KEYS),
        (stream_reference[1] / rn.CHECKPOINT, rn.CHECKPOINT_KEYS),
    ):
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        assert isinstance(ck, dict) and set(keys) <= set(ck) and isinstance(ck["fingerprint"], str)


# ---------------------------------------------------------------------------- the streaming engine


def streamed_params(tmp_path, tree, results):
    """A streamed config of alexnet at 32x32 on the JPEG tree: 6 steps of 4 images, a checkpoint every 2."""
    p = stream_params(tmp_path, tree, results, batch_size=4, max_epochs=1, checkpoint_every=2, image_size=32)
    p.write_text(p.read_text().replace("inception_v3", "alexnet"))
    return p


@pytest.fixture(scope="module")
def stream_tree(tmp_path_factory):
    return make_jpeg_tree(tmp_path_factory.mktemp("imagenet") / "tree")


@pytest.fixture(scope="module")
def stream_reference(tmp_path_factory, stream_tree):
    root = tmp_path_factory.mktemp("stream-reference")
    cfg = prepared(streamed_params(root, stream_tree, "results"), "random-labels")
    out = ts.train(cfg, rc.find_run(cfg, STREAM_RUN), log=lambda *_: None)
    return root / "results", out


@pytest.mark.parametrize("kind", ["truncated", "unsafe"])
def test_a_damaged_streamed_checkpoint_is_moved_aside_and_the_run_retrains(
    tmp_path, stream_tree, stream_reference, kind
):
    marker = tmp_path / "pwned"
    good = stream_reference[1] / rn.CHECKPOINT
    if kind == "truncated":
        damaged, needles = good.read_bytes()[:5000], ("Error: ",)  # torch says OSError or RuntimeError
    else:
        _unsafe_copy(good, tmp_path / "evil.pt", marker)
        damaged, needles = (tmp_path / "evil.pt").read_bytes(), ("weights_only refused it", "posix.system")
    params = streamed_params(tmp_path, stream_tree, "results")
    shutil.copytree(stream_reference[0] / "data", tmp_path / "results" / "data")
    out = tmp_path / "results" / "runs" / STREAM_RUN
    out.mkdir(parents=True)
    (out / rn.CHECKPOINT).write_bytes(damaged)
    proc = call_cli("train", "--params", params, "--run", STREAM_RUN, cwd=tmp_path, check=True)
    assert not marker.exists()
    _moved_aside(out, proc.stdout, damaged, *needles)
    assert f"{STREAM_RUN}: step 1 (1/6 of epoch 1)" in proc.stdout
    _same_result(stream_reference[1], out, keys=SUMMARY_KEYS + ("test_top5",))


@pytest.mark.slow
def test_two_processes_agree_to_start_over_from_a_damaged_checkpoint(tmp_path, stream_tree, stream_reference):
    """torchrun, 2 gloo processes: every process reads the damaged file, process 0 alone moves it aside (the
    other may find it gone), and both start over: the run completes as a 2-process run from scratch."""
    p = streamed_params(tmp_path, stream_tree, "results")
    raw = yaml.safe_load(p.read_text())
    raw["training"]["gpus_per_run"] = 2
    p.write_text(yaml.safe_dump(raw))
    shutil.copytree(stream_reference[0] / "data", tmp_path / "results" / "data")
    out = tmp_path / "results" / "runs" / STREAM_RUN
    out.mkdir(parents=True)
    damaged = (stream_reference[1] / rn.CHECKPOINT).read_bytes()[:-64]
    (out / rn.CHECKPOINT).write_bytes(damaged)
    proc = torchrun_train(p, STREAM_RUN, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _moved_aside(out, proc.stdout, damaged, "RuntimeError")
    s = json.loads((out / "summary.json").read_text())
    assert s["processes"] == 2 and s["epochs"] == 1 and s["steps"] == 6  # 24 images, 4 per step (2 + 2)
