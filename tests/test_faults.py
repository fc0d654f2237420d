"""Faults: kill -9 mid-run, a kill while an artifact is written, fuzzed params."""

import contextlib
import copy
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rethinking import cli
from rethinking import plan as rc
from rethinking.files import load_npz, save_npz

from conftest import REPO, call_cli, run_cli, tiny_params, tree_files

KILL_PARAMS = """
results_dir: {results}
dataset: {{source: digits, train_size: 300, test_size: 50}}
preprocess: {{crop: 7}}
training: {{batch_size: 25, max_epochs: 14, log_every: 3, device: cpu}}
grid:
  - {{name: k, models: [alexnet], corruptions: [random_labels]}}
"""
RUN = "digits-train300-test50/random-labels/alexnet/none/seed0"


def _prepare(tmp_path, name):
    params = tmp_path / f"{name}.yaml"
    params.write_text(KILL_PARAMS.format(results=tmp_path / name))
    call_cli("prepare", "--params", params, cwd=tmp_path, check=True)
    call_cli("corrupt", "--params", params, "--corruption", "random-labels", cwd=tmp_path, check=True)
    return params


@pytest.mark.slow
def test_kill_9_mid_run_resumes_to_the_same_result(tmp_path):
    full = _prepare(tmp_path, "full")
    run_cli("train", "--params", full, "--run", RUN, cwd=tmp_path, check=True)

    killed = _prepare(tmp_path, "killed")
    run_dir = tmp_path / "killed" / "runs" / RUN
    proc = subprocess.Popen(
        [sys.executable, "-m", "rethinking", "train", "--params", str(killed), "--run", RUN],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    resumed = run_cli("train", "--params", killed, "--run", RUN, cwd=tmp_path, check=True)
    assert "resuming after epoch" in resumed.stdout
    a = json.loads((tmp_path / "full" / "runs" / RUN / "summary.json").read_text())
    b = json.loads((run_dir / "summary.json").read_text())
    for key in ("status", "epochs", "steps", "train_acc", "test_acc", "train_loss", "test_loss"):
        assert a[key] == b[key], key
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "runs" / RUN / "epochs.csv")[cols], pd.read_csv(run_dir / "epochs.csv")[cols]
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "full" / "runs" / RUN / "steps.csv"), pd.read_csv(run_dir / "steps.csv")
    )


def test_a_kill_while_writing_an_artifact_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    save_npz(path, {"v": 1}, x=np.arange(10))
    good = path.read_bytes()
    real = np.lib.format.write_array

    def dying(f, arr, **kw):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # what SIGINT does mid-write

    monkeypatch.setattr(np.lib.format, "write_array", dying)
    with pytest.raises(KeyboardInterrupt):
        save_npz(path, {"v": 2}, x=np.arange(1000))
    monkeypatch.setattr(np.lib.format, "write_array", real)
    assert path.read_bytes() == good  # the finished artifact is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind
    meta, arrays = load_npz(path)
    assert meta == {"v": 1} and list(arrays["x"]) == list(range(10))


# ---------------------------------------------------------------------------- fuzzed params

VALID = tiny_params()
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(VALID) if p and p[0] != "results_dir"]


@st.composite
def mutated(draw):
    raw = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = raw
        try:
            for k in path[:-1]:
                node = node[k]
            action = draw(st.sampled_from(["replace", "delete", "unknown", "empty"]))
            if action == "replace":
                node[path[-1]] = draw(JUNK)
            elif action == "delete":
                del node[path[-1]]
            elif action == "unknown" and isinstance(node, dict):
                node[draw(st.text(min_size=1, max_size=6))] = draw(JUNK)
            elif action == "empty":
                node[path[-1]] = [] if isinstance(node[path[-1]], list) else {}
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced the parent
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzzed_params_give_a_valid_grid_or_a_clear_error(raw):
    try:
        cfg = rc.validate(raw, "p.yaml")
    except rc.ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("p.yaml: ") and len(msg.splitlines()) <= 3
        return
    runs = rc.expand_runs(cfg)
    assert runs and all(rc.find_run(cfg, r.id) == r for r in runs)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(mutated())
def test_fuzzed_params_through_the_cli_write_nothing_on_error(tmp_path, raw):
    results = tmp_path / "results"
    raw = dict(raw, results_dir=str(results))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump(raw))
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["prepare", "--params", str(params)])
    finally:
        os.chdir(cwd)
    if code == 0:
        assert (Path(rc.base_artifact(rc.load(params)))).is_file()
    else:
        assert code == 2 and err.getvalue().startswith("error: ") and "Traceback" not in err.getvalue()
        assert tree_files(results) == []
    for p in results.rglob("*") if results.exists() else []:
        if p.is_file():
            p.unlink()


@pytest.mark.parametrize("command", ["runs", "packs", "corruptions"])
def test_a_closed_pipe_ends_a_listing_quietly(command):
    """`python -m rethinking packs | head -3`: the reader goes away before the listing is written; the command
    ends as Unix tools do (status 141, as SIGPIPE gives) with no traceback."""
    import subprocess
    import sys

    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rethinking", command, "--params", "params.yaml"],
        cwd=REPO,
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(w)
    os.close(r)  # no reader left: the child's first write (or its flush) meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert err == "" and proc.returncode == 141, (proc.returncode, err)
