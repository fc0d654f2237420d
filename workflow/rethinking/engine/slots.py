"""GPU slots: which GPU a training job uses when Snakemake runs several at once.

`snakemake --resources gpu=N` caps how many training jobs run together but does
not say which GPU each gets (snakemake issue #281). Each job therefore claims a
slot: an exclusive `flock` on one lock file per (GPU, slot) pair in a folder
shared by the jobs of the machine. The kernel drops the lock when the process
ends, however it ends (exit, exception, kill -9), so a crashed job's slot is
free again at once and no stale lock files need cleaning.

- CUDA_VISIBLE_DEVICES set by a scheduler (SLURM sets it for --gpus jobs) is
  honoured: slots are claimed among the visible devices only, numbered as the
  process sees them (0..k-1), with the physical id in the lock name so jobs
  that see different subsets still never share a GPU slot.
- Inside a SLURM job (SLURM_JOB_ID set) the lock folder is the job's own:
  SLURM already gives each job GPUs no other job holds, and with device
  confinement every job may see its GPUs as 0..k-1, so a node-wide folder
  would make jobs on different GPUs wait for each other's lock names.
- `jobs_per_gpu` > 1 puts that many jobs on each GPU (small models do not
  fill a large GPU).

Run locks (`lock_runs`) use the same kind of lock for another rule: one
trainer per run. A trainer holds an exclusive `flock` on `.train.lock` in each
run folder it trains, taken before it claims a GPU slot or touches anything
else in the folder, and held until it ends; a second trainer of the same run
stops at once (RunBusyError) naming the holder's pid and host, which the lock
file holds. The lock files are never deleted: removing a flock file races
with a process that has opened it but not yet locked it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, RunBusyError

DEFAULT_DIR = Path(
    os.environ.get("RETHINKING_SLOT_DIR", Path(tempfile.gettempdir()) / f"rethinking-gpu-slots-{os.getuid()}")
)


@dataclass
class Slot:
    device: int  # index as this process sees it (cuda:<device>)
    physical: str  # the GPU's id as CUDA_VISIBLE_DEVICES names it (or its index)
    slot: int
    path: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            _unlock(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def visible_devices(count: int) -> list[str]:
    """Physical ids of the GPUs this process sees, in its own order."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip() != "":
        ids = [v.strip() for v in env.split(",") if v.strip()]
        return ids[:count]
    return [str(i) for i in range(count)]


def try_lock(path: Path, note: str) -> int | None:
    """An exclusive flock on `path` (created if missing) without waiting: the open descriptor, its content
    replaced by `note` (who holds it), or None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, note.encode())
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def claim(
    count: int,
    jobs_per_gpu: int = 1,
    lock_dir: Path | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
    devices=None,
) -> Slot:
    """Claim a free (GPU, slot); wait while all are taken (up to `timeout` seconds). `devices`: the GPU
    indices (as this process sees them) to claim among, all by default."""
    if count < 1:
        raise RuntimeError("no GPU to claim a slot on")
    if lock_dir is None:
        job = os.environ.get("SLURM_JOB_ID")
        lock_dir = DEFAULT_DIR / f"slurm-job-{job}" if job else DEFAULT_DIR
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    ids = visible_devices(count)
    indices = range(len(ids)) if devices is None else list(devices)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # fill each GPU's first slot before any second slot: spread jobs over GPUs
        for slot in range(jobs_per_gpu):
            for index in indices:
                path = lock_dir / f"gpu{ids[index]}.slot{slot}.lock"
                fd = try_lock(path, f"{os.getpid()}\n")
                if fd is not None:
                    return Slot(index, ids[index], slot, path, fd)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"no free GPU slot among GPUs {', '.join(ids[i] for i in indices)} x {jobs_per_gpu} in {lock_dir}"
            )
        time.sleep(poll)


def rank_devices(count: int, rank: int, world: int) -> list[int]:
    """The GPUs (indices as the process sees them, 0..count-1) on which process `rank` of a run of `world`
    processes may claim a slot: those whose index is rank modulo world. The processes of one run see the
    same GPUs (torchrun gives them one CUDA_VISIBLE_DEVICES), so they never share one, however many slots a
    GPU has (jobs_per_gpu): NCCL stops a run with two processes on one GPU ("Duplicate GPU detected"). A
    one-process run may take any GPU."""
    if world > count:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={env})" if env is not None else ""
        raise ConfigError(
            f"training.gpus_per_run: a run of {world} processes needs {world} GPUs, one per process, "
            f"but this process sees {count}{seen}"
        )
    return [i for i in range(count) if i % world == rank]


def claim_gpu(
    count: int,
    jobs_per_gpu: int,
    rank: int = 0,
    world: int = 1,
    lock_dir: Path | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
) -> Slot:
    """Process `rank`'s GPU slot: slots.claim among rank_devices(count, rank, world) only."""
    devices = None if world == 1 else rank_devices(len(visible_devices(count)), rank, world)
    return claim(count, jobs_per_gpu, lock_dir=lock_dir, timeout=timeout, poll=poll, devices=devices)


# ---------------------------------------------------------------------------- one trainer per run

RUN_LOCK = ".train.lock"


@dataclass
class RunLock:
    """The locks of the run folders one training process trains (one, or every member of a pack)."""

    paths: list[Path]
    _fds: list[int]

    def release(self) -> None:
        while self._fds:
            _unlock(self._fds.pop())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_runs(folders: dict[str, Path]) -> RunLock:
    """Lock every run folder ({run id: folder}) for this process, or none: when one is held by another
    trainer, release those taken and raise RunBusyError. Nothing but the folder and its `.train.lock` is
    created. The kernel drops the locks when the process ends, however it ends (exit, crash, kill -9)."""
    note = f"{os.getpid()} {socket.gethostname()}\n"
    lock = RunLock([], [])
    for run_id, folder in folders.items():
        path = Path(folder) / RUN_LOCK
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = try_lock(path, note)
        if fd is None:
            lock.release()
            raise RunBusyError(
                f"run {run_id} is being trained by another process ({lock_holder(path)}); "
                f"wait for it to end or stop it, then rerun (lock: {path})"
            )
        lock.paths.append(path)
        lock._fds.append(fd)
    return lock


def lock_holder(path: Path, wait: float = 0.5) -> str:
    """'pid P on host H' as the lock file at `path` names its holder (who may be writing it just now)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            words = Path(path).read_text().split()
        except OSError:
            words = []
        if len(words) >= 2:
            return f"pid {words[0]} on host {words[1]}"
        if time.monotonic() > deadline:
            return "pid and host not recorded"
        time.sleep(0.02)
