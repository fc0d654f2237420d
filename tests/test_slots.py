"""GPU slots, simulated on CPU: concurrent jobs never share a slot; a killed job's slot is free again."""

import os
import signal
import subprocess
import sys
import time

import pytest

from rethinking.engine import slots
from rethinking.engine.slots import claim, visible_devices

HOLDER = """
import sys, time
from rethinking.engine.slots import claim
s = claim(int(sys.argv[1]), int(sys.argv[2]), lock_dir=sys.argv[3], timeout=float(sys.argv[4]))
print(s.physical, s.slot, flush=True)
time.sleep(60)
"""


def holder(tmp_path, count=2, per_gpu=1, timeout=5.0, env=None):
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(per_gpu), str(tmp_path), str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_concurrent_jobs_never_share_a_slot(tmp_path):
    procs = [holder(tmp_path, count=2, per_gpu=2) for _ in range(4)]
    try:
        claimed = [p.stdout.readline().split() for p in procs]
        assert sorted(map(tuple, claimed)) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
        # a fifth job finds every slot taken
        with pytest.raises(TimeoutError):
            claim(2, 2, lock_dir=tmp_path, timeout=0.5, poll=0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_first_slots_spread_over_gpus(tmp_path):
    a = claim(3, 2, lock_dir=tmp_path)
    b = claim(3, 2, lock_dir=tmp_path)
    c = claim(3, 2, lock_dir=tmp_path)
    assert sorted((s.physical, s.slot) for s in (a, b, c)) == [("0", 0), ("1", 0), ("2", 0)]
    for s in (a, b, c):
        s.release()


def test_a_killed_jobs_slot_is_free_again(tmp_path):
    p = holder(tmp_path, count=1)
    assert p.stdout.readline().split() == ["0", "0"]
    with pytest.raises(TimeoutError):
        claim(1, 1, lock_dir=tmp_path, timeout=0.3, poll=0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with claim(1, 1, lock_dir=tmp_path, timeout=2.0) as s:  # no stale lock left behind
        assert (s.physical, s.slot) == ("0", 0)


def test_waiting_job_gets_the_slot_when_it_is_released(tmp_path):
    first = claim(1, 1, lock_dir=tmp_path)
    p = holder(tmp_path, count=1, timeout=20.0)
    time.sleep(0.5)
    first.release()
    assert p.stdout.readline().split() == ["0", "0"]
    p.kill()
    p.wait()


def test_scheduler_visible_devices_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert visible_devices(2) == ["5", "7"]
    a = claim(2, 1, lock_dir=tmp_path)
    b = claim(2, 1, lock_dir=tmp_path)
    assert [(a.device, a.physical), (b.device, b.physical)] == [(0, "5"), (1, "7")]
    assert a.path.name == "gpu5.slot0.lock"
    # a job that sees only GPU 7 cannot take GPU 7's slot from the first pair
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with pytest.raises(TimeoutError):
        claim(1, 1, lock_dir=tmp_path, timeout=0.3, poll=0.1)
    a.release()
    b.release()


def test_slurm_jobs_have_their_own_lock_folder(tmp_path, monkeypatch):
    """Two SLURM jobs on one node that both see their GPU as 0 (device confinement) do not wait for
    each other; two jobs of the same SLURM job still do."""
    monkeypatch.setattr(slots, "DEFAULT_DIR", tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    a = claim(1, 1, timeout=0.3, poll=0.1)
    assert a.path.parent == tmp_path / "slurm-job-101"
    with pytest.raises(TimeoutError):
        claim(1, 1, timeout=0.3, poll=0.1)
    monkeypatch.setenv("SLURM_JOB_ID", "102")
    with claim(1, 1, timeout=0.3, poll=0.1) as b:
        assert b.physical == a.physical == "0"
    a.release()
