"""One trainer per run: a run folder's .train.lock, with real processes.

A second trainer of a run stops at once naming the first (pid and host); the first finishes as if alone. A
holder killed with SIGKILL leaves the run free. A pack is refused as a whole when one member is held, and
keeps no lock. A streamed run under torchrun is refused by its process 0, and torchrun stops the others.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine.slots import RUN_LOCK, lock_runs
from rethinking.errors import RunBusyError

from conftest import run_cli, torchrun_train, tree_files
from test_checkpoints import streamed_params

PARAMS = """
results_dir: {results}
seeds: [0, 1]
dataset: {{source: digits, train_size: 1000, test_size: 50, seed: 0}}
preprocess: {{crop: 7}}
training: {{batch_size: 25, max_epochs: {epochs}, log_every: 10, eval_batch_size: 256, device: cpu}}
grid:
  - {{name: a, models: [mlp_1x512], corruptions: [random_labels]}}
"""
RUN = "digits-train1000-test50/random-labels/mlp_1x512/none/seed0"
RUN1 = RUN.replace("seed0", "seed1")
HOST = socket.gethostname()

# takes a run's lock through the package, as a trainer does, says so, then holds it
HOLDER = """
import sys, time
from pathlib import Path
from rethinking.engine.slots import lock_runs
lock = lock_runs({sys.argv[1]: Path(sys.argv[2])})
print("locked", flush=True)
time.sleep(300)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The run's data (random labels on 1,000 digits), prepared once."""
    root = tmp_path_factory.mktemp("lock-data")
    cfg = rc.load(_params(root, root / "results"))
    prepare(cfg)
    corrupt(cfg, rc.Corruption.parse("random-labels"))
    return root / "results" / "data"


def _params(folder, results, epochs=40):
    path = folder / "p.yaml"
    path.write_text(PARAMS.format(results=results, epochs=epochs))
    return path


def _fresh(tmp_path, data, name="results", epochs=40):
    results = tmp_path / name
    shutil.copytree(data, results / "data")
    folder = tmp_path / f"{name}-params"
    folder.mkdir()
    return _params(folder, results, epochs), results


def _holder(run_id, folder):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_id, str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = p.stdout.readline()
    assert line.strip() == "locked", p.stderr.read()
    return p


def _busy_line(stderr, run_id, pid):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"error: run {run_id} is being trained by another process (pid {pid} on host {HOST})"), (
        lines[0]
    )


@pytest.mark.slow
def test_a_second_trainer_of_a_run_stops_at_once_and_the_first_finishes(tmp_path, data):
    params, results = _fresh(tmp_path, data)
    out = results / "runs" / RUN
    lock = out / RUN_LOCK
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "rethinking", "train", "--params", str(params), "--run", RUN],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().split()[:1] == [str(first.pid)]):
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.002)
        # pause the first trainer while it holds the lock (it trains for seconds; its summary comes before
        # its lock is let go), so the second meets a held lock however slowly this machine starts it
        os.kill(first.pid, signal.SIGSTOP)
        assert not (out / "summary.json").exists(), "the first run ended before the second could start"
        assert lock.read_text() == f"{first.pid} {HOST}\n"

        t0 = time.monotonic()
        second = run_cli("train", "--params", params, "--run", RUN, cwd=tmp_path, timeout=120)
        took = time.monotonic() - t0
        assert second.returncode == 2
        _busy_line(second.stderr, RUN, first.pid)
        assert second.stdout == ""  # it read no checkpoint, trained nothing
        assert took < 60, took  # no waiting (the first is paused: a waiting second would never return)
        assert first.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
        try:
            first.wait(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
            log.close()
    said = (tmp_path / "first.log").read_text()
    assert first.returncode == 0, said
    assert "resuming" not in said and "starting over" not in said
    assert f"{RUN}: max_epochs after 40 epochs, 1600 steps" in said

    # what the same run gives when it trains alone
    ref_params, _ = _fresh(tmp_path, data, "alone")
    cfg = rc.load(ref_params)
    alone = tr.train(cfg, rc.find_run(cfg, RUN), log=lambda *_: None)
    cols = ["epoch", "step", "lr", "batch_train_acc", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(alone / "epochs.csv")[cols], pd.read_csv(out / "epochs.csv")[cols])
    pd.testing.assert_frame_equal(pd.read_csv(alone / "steps.csv"), pd.read_csv(out / "steps.csv"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (alone, out))
    for key in ("status", "epochs", "steps", "train_acc", "test_acc", "train_loss", "test_loss"):
        assert a[key] == b[key], key


def test_a_holder_killed_with_sigkill_leaves_the_run_free(tmp_path, data):
    params, results = _fresh(tmp_path, data, epochs=2)
    out = results / "runs" / RUN
    holder = _holder(RUN, out)
    try:
        cfg = rc.load(params)
        run = rc.find_run(cfg, RUN)
        with pytest.raises(
            RunBusyError,
            match=rf"^run {RUN} is being trained by another process "
            rf"\(pid {holder.pid} on host {HOST}\)",
        ):
            tr.train(cfg, run, log=lambda *_: None)
        assert tree_files(out) == [RUN_LOCK]  # refused before reading or writing anything
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lines = []
    tr.train(cfg, run, log=lines.append)  # the kernel dropped the dead holder's lock
    assert (out / "summary.json").is_file() and any("max_epochs after 2 epochs" in line for line in lines)
    assert (out / RUN_LOCK).read_text() == f"{os.getpid()} {HOST}\n"
    with lock_runs({RUN: out}):  # and this trainer let go of it when it returned
        pass


def test_a_pack_with_a_held_member_is_refused_and_keeps_no_lock(tmp_path, data):
    params, results = _fresh(tmp_path, data, epochs=2)
    out0, out1 = results / "runs" / RUN, results / "runs" / RUN1
    holder = _holder(RUN1, out1)
    try:
        proc = run_cli("train", "--params", params, "--run", RUN, "--run", RUN1, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and proc.stdout == ""
        _busy_line(proc.stderr, RUN1, holder.pid)
        assert tree_files(results / "runs") == [f"{RUN}/{RUN_LOCK}", f"{RUN1}/{RUN_LOCK}"]  # nothing written
        # in one process: the member it locked (the first) is released again when the second is refused
        cfg = rc.load(params)
        with pytest.raises(RunBusyError, match=RUN1):
            tr.train_runs(cfg, [rc.find_run(cfg, RUN), rc.find_run(cfg, RUN1)], log=lambda *_: None)
        with lock_runs({RUN: out0}):
            pass
        with pytest.raises(RunBusyError, match=RUN1):  # all or none: nothing is kept of a refused set
            lock_runs({RUN: out0, RUN1: out1})
        with lock_runs({RUN: out0}):
            pass
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_streamed_run_under_torchrun_is_refused_by_process_0(tmp_path):
    p = streamed_params(tmp_path, tmp_path / "tree", "results")  # refused before any data is read
    raw = yaml.safe_load(p.read_text())
    raw["training"]["gpus_per_run"] = 2
    p.write_text(yaml.safe_dump(raw))
    run_id = "imagenet/random-labels/alexnet/none/seed0"
    out = tmp_path / "results" / "runs" / run_id
    holder = _holder(run_id, out)
    try:
        t0 = time.monotonic()
        proc = torchrun_train(p, run_id, cwd=tmp_path, timeout=120)
        took = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert f"error: run {run_id} is being trained by another process (pid {holder.pid} on host {HOST})" in said
    assert took < 90, took  # process 1, waiting for process 0 to meet it, was stopped by torchrun
    assert tree_files(out) == [RUN_LOCK]
