"""What both training engines share: a run's progress, the device it trains on, the end of an epoch, the
checkpoint and the summary.

- `claimed_device`: the lock of the run folders (one trainer per run), the device (training.device or the
  kernels stage's), a GPU slot no concurrent job holds (rethinking.engine.slots), and their release when
  the block ends, however it ends. The in-memory engine, the streamed engine and the kernels stage use it.
- `Progress`: where a run stands (epoch, step, rows of epochs.csv and steps.csv, its status); a checkpoint
  holds it as a dict, so a resumed run goes on from exactly where the killed one stopped.
- `close_epoch`: the end of an epoch, the same in both engines: the epochs.csv row, then the checks in
  order: a non-finite loss ends the run as `diverged`, every evaluated training example classified as its
  (possibly corrupted) label ends it as `fitted`.
- `save_checkpoint` / `load_checkpoint`: checkpoint.pt, written atomically after every epoch (and, streamed,
  every `checkpoint_every` steps), read back only by the same settings and code (its fingerprint).
- `write_summary`: epochs.csv, steps.csv and, last, summary.json (its presence means the run is finished),
  with the same keys from both engines.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..files import load_checkpoint as _load_checkpoint
from ..files import remove_stale_temps, save_torch, write_json, write_rows
from .examples import write_record
from .metrics import metric_columns
from .slots import Slot, claim_gpu, lock_runs

CHECKPOINT = "checkpoint.pt"
# what a resume reads from a checkpoint besides its fingerprint
CHECKPOINT_KEYS = ("model", "optimizer", "progress", "processes", "examples")
STATUSES = ("fitted", "max_epochs", "diverged")  # how a run ends: fitted, stopped at the epoch limit, diverged


# ---------------------------------------------------------------------------- device


def pick_device(name: str, key: str = "training.device"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


@contextlib.contextmanager
def claimed_device(
    name: str,
    *,
    jobs_per_gpu: int = 1,
    threads: int | None = None,
    runs: dict | None = None,
    rank: int = 0,
    world: int = 1,
    key: str = "training.device",
    log=print,
    what: str = "",
):
    """The torch.device a training process (or the kernels stage) works on, inside the block.

    `runs` ({run id: run folder}) are locked first (RunBusyError when another process trains one of them).
    On CUDA a free GPU slot is claimed and made the current device (process `rank` of a run of `world`
    processes claims among its own share of the GPUs: slots.claim_gpu); on the CPU torch uses `threads`
    threads. The slot and the locks are released when the block ends; the kernel drops them anyway when
    the process ends, however it ends (kill -9 included)."""
    import torch

    lock = lock_runs(runs) if runs else None
    slot: Slot | None = None
    try:
        device = pick_device(name, key)
        if device.type == "cuda":
            slot = claim_gpu(torch.cuda.device_count(), jobs_per_gpu, rank, world)
            device = torch.device("cuda", slot.device)
            torch.cuda.set_device(device)
            log(f"{what}: GPU slot {slot.slot} of GPU {slot.physical}")
        elif threads:
            torch.set_num_threads(threads)
        yield device
    finally:
        if slot is not None:
            slot.release()
        if lock is not None:
            lock.release()


def autocast_for(device):
    """The training steps' autocast (a factory of context managers): bf16 on a GPU that computes in bf16
    natively (compute capability 8.0 and later, or ROCm), none (fp32) elsewhere: on the CPU, and on older
    GPUs, where torch would emulate bf16 slowly. Evaluation never autocasts (rethinking.engine.metrics)."""
    import torch

    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if native:
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"
    )


def versions() -> dict:
    import numpy as np
    import torch

    return {
        "rethinking": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def rng_state(device) -> dict:
    """This process's torch random state (CPU, and the device's on CUDA), as a checkpoint keeps it."""
    import torch

    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict, device) -> None:
    import torch

    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"])


def process_usage() -> dict:
    """This process's CPU time (user + system, seconds), peak resident memory (MB) and wall time (seconds;
    None where /proc is not there) since it started: imports and data loading included, which a run's
    `wall_time` (its training loop, summed over resumes) leaves out."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KB on Linux
    return {
        "cpu_time": ru.ru_utime + ru.ru_stime,
        "max_rss_mb": ru.ru_maxrss / per_mb,
        "process_wall_time": _process_age(),
    }


def _process_age() -> float | None:
    """Seconds since this process started, from /proc (Linux): its start in clock ticks after boot."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------- schedule and stop rule


def learning_rate(epoch: int, base_lr: float, decay: float, decay_images: int | None, n_train: int) -> float:
    """lr of an epoch: base_lr * decay ** (epochs done), or per `decay_images` images seen."""
    exponent = epoch if decay_images is None else epoch * n_train / decay_images
    return base_lr * decay**exponent


def fitted(correct: int, total: int) -> bool:
    """The stop rule: every training example classified as its (possibly corrupted) label."""
    return total > 0 and correct == total


# ---------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """Where a run stands; a checkpoint keeps it whole (state()), so a resumed run goes on from here."""

    epoch: int = 0  # epochs done
    batch: int = 0  # batches done of the current epoch (streamed runs save inside an epoch)
    step: int = 0
    elapsed: float = 0.0  # seconds of training and evaluation, summed over resumes
    train_time: float = 0.0  # seconds in training steps only, for images/s
    images: int = 0  # training images seen (every process's, the padding of a last batch included)
    loss_sum: float = 0.0  # training loss summed since the last steps.csv row (a single process's)
    epochs_rows: list = field(default_factory=list)
    steps_rows: list = field(default_factory=list)
    status: str = "max_epochs"
    first_fit: int | None = None
    diverged_step: int | None = None

    def running(self, max_epochs: int, stop_at_fit: bool = True) -> bool:
        """Not finished: below the epoch limit, neither diverged nor (when it stops at the fit) fitted."""
        going = self.status == "max_epochs" or (self.status == "fitted" and not stop_at_fit)
        return going and self.epoch < max_epochs

    def state(self) -> dict:
        """Its fields as a plain dict for a checkpoint: the rows themselves, not copies (dataclasses.asdict's
        deep copy of every row at every checkpoint cost 5% of the default experiment's time)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def load(cls, saved: dict) -> Progress:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})


class Clock:
    """A run's training time across resumes: `elapsed` seconds so far, started at `Clock(progress.elapsed)`."""

    def __init__(self, elapsed: float = 0.0):
        self.start = time.perf_counter() - elapsed

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def log_losses(progress: Progress, losses, log_every: int) -> None:
    """Add a run's training losses of the steps just taken (float32 values, in order) to its steps.csv rows:
    the mean of every `log_every` steps, summed in float32 as a device accumulator would (progress.loss_sum
    carries the part of a window that an epoch's end or a checkpoint cut)."""
    import torch

    acc = torch.tensor(progress.loss_sum, dtype=torch.float32)
    for value in losses:
        progress.step += 1
        acc += value
        if progress.step % log_every == 0:
            progress.steps_rows.append(
                {"step": progress.step, "epoch": progress.epoch + 1, "train_loss": float(acc) / log_every}
            )
            acc.zero_()
    progress.loss_sum = float(acc)


def close_epoch(p: Progress, row: dict, train_correct: int, n_eval: int, *, name: str, log) -> None:
    """The end of an epoch (p.epoch already counts it): its epochs.csv row, then the stop checks.

    A loss that is not finite (a logged training loss of this epoch, or the evaluated training loss) ends
    the run as `diverged` at the first step it was seen; every one of the `n_eval` evaluated training
    examples right (`train_correct`) ends it as `fitted`, at this step."""
    p.epochs_rows.append(row)
    this_epoch = []
    for r in reversed(p.steps_rows):  # the last rows only: a scan of every row would grow with the run
        if r["epoch"] != p.epoch:
            break
        this_epoch.append(r)
    bad = [r["step"] for r in reversed(this_epoch) if not math.isfinite(r["train_loss"])]
    if bad or not math.isfinite(row["train_loss"]):
        p.status, p.diverged_step = "diverged", (bad[0] if bad else p.step)
        log(f"{name}: the loss is not finite (first seen at step {p.diverged_step}); stopping as diverged")
    elif p.first_fit is None and fitted(train_correct, n_eval):  # the first fit (a run may train on after it)
        p.first_fit, p.status = p.step, "fitted"


# ---------------------------------------------------------------------------- checkpoint


def save_checkpoint(
    out: Path,
    fingerprint: str,
    model_state: dict,
    optimizer_state: dict,
    progress: Progress,
    processes: list[dict],
    **extra,
) -> None:
    """checkpoint.pt of a run, atomically: a reader (or a resume after a kill) sees the old file or the new."""
    save_torch(
        Path(out) / CHECKPOINT,
        {
            "fingerprint": fingerprint,
            "model": model_state,
            "optimizer": optimizer_state,
            "progress": progress.state(),
            "processes": processes,
            **extra,
        },
    )


def load_checkpoint(out: Path, fingerprint: str, log, *, name: str, owner: bool = True) -> dict | None:
    """A run's checkpoint to resume from, or None (none, made with other settings or code, or damaged:
    rethinking.files.load_checkpoint). The `owner` (the run's only writer: its trainer, or process 0)
    first deletes a write that a kill cut short, and moves a damaged file aside."""
    path = Path(out) / CHECKPOINT
    if owner:
        remove_stale_temps(path)
    return _load_checkpoint(path, fingerprint, CHECKPOINT_KEYS, log, name=name, move_aside=owner)


# ---------------------------------------------------------------------------- outputs


def write_epochs(path, rows) -> None:
    """epochs.csv from a run's per-epoch rows (both engines). Every registered metric's columns are there
    (rethinking.engine.metrics), blank in rows of a checkpoint written before the metric existed."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_rows(path, rows, columns + [c for c in metric_columns() if c not in columns])


def write_steps(path, rows) -> None:
    """steps.csv: the logged training loss every log_every steps (both engines)."""
    write_rows(path, rows, ["step", "epoch", "train_loss"])


@dataclass
class RunFacts:
    """What a summary says of a run besides its settings and its progress."""

    parameters: int
    steps_per_epoch: int
    n_train: int
    n_train_eval: int  # the training images evaluated after each epoch (all of them, in memory)
    n_corrupted: int | None  # of the evaluated training images, those whose label the corruption changed
    n_test: int
    input_shape: list
    device: str
    deterministic: bool
    processes: int = 1


def write_summary(
    out: Path, run, settings: dict, p: Progress, facts: RunFacts, *, log, extra=None, examples=None
) -> dict:
    """Write a finished run's examples.npz (`examples`: its (meta, arrays), rethinking.engine.examples),
    epochs.csv, steps.csv and, last, summary.json (its presence means the run is finished). The same keys
    from both engines; `extra` adds an engine's own (the streamed top-5).
    `cpu_time`, `max_rss_mb` and `process_wall_time` are the training process's since it started
    (process_usage): for a pack, the one process of all its members, up to this member's end; for a run of
    several processes, process 0's; after a resume, the resuming process's only (`wall_time` adds up)."""
    if examples is not None:
        write_record(out, *examples)
    write_epochs(out / "epochs.csv", p.epochs_rows)
    write_steps(out / "steps.csv", p.steps_rows)
    last = p.epochs_rows[-1]
    summary = {
        **settings,
        "dataset": run.dataset,
        "level": run.corruption.level,
        "corruption_kind": run.corruption.kind,
        "status": p.status,
        "epochs": p.epoch,
        "steps": p.step,
        "steps_per_epoch": facts.steps_per_epoch,
        "step_first_fit": p.first_fit,
        "diverged_step": p.diverged_step,
        "n_train": facts.n_train,
        "n_train_eval": facts.n_train_eval,
        "n_corrupted": facts.n_corrupted,
        "n_test": facts.n_test,
        "train_acc": 100 * last["train_acc"],
        "test_acc": 100 * last["test_acc"],
        "best_test_acc": 100 * max(r["test_acc"] for r in p.epochs_rows),
        "train_loss": last["train_loss"],
        "test_loss": last["test_loss"],
        "parameters": facts.parameters,
        "input_shape": list(facts.input_shape),
        "wall_time": p.elapsed,
        **process_usage(),
        "train_images_per_s": p.images / p.train_time if p.train_time > 0 else None,
        "processes": facts.processes,
        "device": facts.device,
        "deterministic": facts.deterministic,
        "versions": versions(),
        **(extra or {}),
    }
    write_json(out / "summary.json", summary)
    log(
        f"{run.id}: {p.status} after {p.epoch} epochs, {p.step} steps; train {summary['train_acc']:.2f}% "
        f"test {summary['test_acc']:.2f}% ({p.elapsed:.1f} s on {facts.device})"
    )
    return summary
