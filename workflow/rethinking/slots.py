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
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("RETHINKING_SLOT_DIR", Path(tempfile.gettempdir()) / f"rethinking-gpu-slots-{os.getuid()}"))


@dataclass
class Slot:
    device: int        # index as this process sees it (cuda:<device>)
    physical: str      # the GPU's id as CUDA_VISIBLE_DEVICES names it (or its index)
    slot: int
    path: Path
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
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


def claim(count: int, jobs_per_gpu: int = 1, lock_dir: Path | None = None, timeout: float | None = None,
          poll: float = 0.5) -> Slot:
    """Claim a free (GPU, slot); wait while all are taken (up to `timeout` seconds)."""
    if count < 1:
        raise RuntimeError("no GPU to claim a slot on")
    if lock_dir is None:
        job = os.environ.get("SLURM_JOB_ID")
        lock_dir = DEFAULT_DIR / f"slurm-job-{job}" if job else DEFAULT_DIR
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    ids = visible_devices(count)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # fill each GPU's first slot before any second slot: spread jobs over GPUs
        for slot in range(jobs_per_gpu):
            for index, physical in enumerate(ids):
                path = lock_dir / f"gpu{physical}.slot{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return Slot(index, physical, slot, path, fd)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot among {len(ids)} GPUs x {jobs_per_gpu} in {lock_dir}")
        time.sleep(poll)
