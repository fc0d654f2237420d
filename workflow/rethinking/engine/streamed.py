"""Stage `train` for streamed datasets (ImageNet): label file + index + (model, regularizers, seed) -> run folder.

The in-memory engine (rethinking.engine.loop) holds a whole dataset on the device;
ImageNet does not fit, and one Inception V3 run needs several GPUs. This
engine trains one run from images read and decoded while it trains
(rethinking.data.stream), in one process or, with `training.gpus_per_run: n`, in n
processes started by `torchrun --standalone --nproc_per_node=n` (the
Snakemake rule and the DVC stage do that): distributed data parallel, NCCL
between GPUs, gloo on CPU. `batch_size` is the batch of all processes
together; each takes batch_size / n images of every step.

Read top to bottom: set up the processes and devices, load the index and the
(corrupted) labels, build the model (Inception V3 with its auxiliary head, or
any model of rethinking.models at image_size x image_size) and SGD, resume
the checkpoint, then loop over epochs. An epoch is a seeded permutation of the
training set (the same in every process), padded to a multiple of n and dealt
out, so every process takes the same number of steps. The loss (main head
plus 0.4 x auxiliary head) and the number of correct predictions accumulate
on the device; every `log_every` steps the mean loss of all processes is
read. After each epoch the processes evaluate the held-out split and the
training set (all of it, or `train_eval_size` seeded images) with center
crops in eval mode, top-1 and top-5, each process a share, summed; the
training set's top-1 is also split by corrupted and intact labels on those
same images (rethinking.engine.loop.SPLIT_COLUMNS).

Stop rule and run folder as in rethinking.engine.loop: 100% top-1 on the
(evaluated) training set, the epoch limit, or a non-finite loss; process 0
writes epochs.csv, steps.csv, summary.json (last) and checkpoint.pt. The
checkpoint is written after every epoch and, with `checkpoint_every: k`, every
k steps inside one (an ImageNet epoch is 5,005 steps at batch 256); it holds
the model, the optimizer, each process's random state and the position in
the epoch, so a killed run resumes at the step it last saved, with the same
batches and crops it would have had. Every process reads the checkpoint
(io.load_checkpoint, weights_only); process 0 moves a damaged one aside, and
the processes resume only if every one of them could read it. Process 0 holds
the run's lock (.train.lock, rethinking.engine.slots) from before the processes meet
until it ends: a second trainer of the run stops at once.

On CUDA each process claims a GPU slot among its own share of the visible
GPUs (claim_gpu: index = rank modulo processes), so the processes of a run are
on different GPUs whatever `jobs_per_gpu` is. Every process builds the same
model from the run's seed; then every process but 0 reseeds torch (seed_process),
so their dropout masks differ, and a one-process run draws what it always drew.
The steps train under bf16 autocast where the GPU computes bf16 natively
(rethinking.engine.loop.autocast_for); evaluation, which the stop rule reads, is fp32.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..plan import Run, run_dir, training_for
from ..models.inception_v3 import build_stream_model, loss_of, split_outputs
from ..files import load_checkpoint, remove_stale_temps, save_torch, write_json
from ..models import count_parameters, traits
from .precision import exact_float32
from ..plan.settings import STREAM_ENGINE_SOURCES, stream_settings, train_command
from ..plan.settings import fingerprint as code_fingerprint  # `fingerprint` is a local name in _train
from .slots import Slot, claim, lock_runs, visible_devices
from ..data.stream import StreamImages, load_streamed, make_loader, to_input
from .loop import autocast_for, device_name, fitted, learning_rate, pick_device, rng_state, set_rng_state, sgd, split_counts, split_percent, versions, write_epochs, write_steps

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "state", "processes")   # besides its fingerprint


def epoch_batches(n: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list[tuple[int, int]]]:
    """This process's batches of an epoch, as (index, epoch) keys: one seeded permutation for all processes,
    padded (wrapping around) to a multiple of `world` and dealt out, so every process has as many batches."""
    perm = np.random.default_rng([seed, 3, epoch]).permutation(n)
    total = math.ceil(n / world) * world
    perm = np.concatenate([perm, perm[:total - n]]) if total > n else perm
    mine = perm[rank::world]
    return [[(int(i), epoch) for i in mine[j:j + batch]] for j in range(0, len(mine), batch)]


def rank_devices(count: int, rank: int, world: int) -> list[int]:
    """The GPUs (indices as the process sees them, 0..count-1) on which process `rank` of a run of `world`
    processes may claim a slot: those whose index is rank modulo world. The processes of one run see the
    same GPUs (torchrun gives them one CUDA_VISIBLE_DEVICES), so they never share one, however many slots a
    GPU has (jobs_per_gpu): NCCL stops a run with two processes on one GPU ("Duplicate GPU detected"). A
    one-process run may take any GPU."""
    if world > count:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={env})" if env is not None else ""
        raise ConfigError(f"training.gpus_per_run: a run of {world} processes needs {world} GPUs, one per process, "
                          f"but this process sees {count}{seen}")
    return [i for i in range(count) if i % world == rank]


def claim_gpu(count: int, jobs_per_gpu: int, rank: int = 0, world: int = 1, lock_dir: Path | None = None,
              timeout: float | None = None, poll: float = 0.5) -> Slot:
    """Process `rank`'s GPU slot: slots.claim among rank_devices(count, rank, world) only."""
    devices = None if world == 1 else rank_devices(len(visible_devices(count)), rank, world)
    return claim(count, jobs_per_gpu, lock_dir=lock_dir, timeout=timeout, poll=poll, devices=devices)


def train_eval_indices(n_train: int, k: int | None, seed: int) -> np.ndarray:
    """The training images evaluated after every epoch (training.train_eval_size = k): all of them, or k drawn
    once from the run's seed, sorted. The stop rule, train_acc and the split by corrupted labels are over these."""
    if not k or k >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng([seed, 5]).choice(n_train, k, replace=False))


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of process `rank` (>= 1) of a multi-process run once its model is built: a stream of
    its own, drawn from (run seed, rank)."""
    if rank < 1:
        raise ValueError("process 0 keeps the run's own stream")
    return int(np.random.SeedSequence([seed, 7, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_process(seed: int, rank: int) -> None:
    """Training randomness (dropout masks, on the CPU and the GPU) of one process, after every process has
    built the same model from torch.manual_seed(seed): process 0 goes on with the run's stream (a
    one-process run draws what it always drew), every other process is reseeded with rank_seed, so the
    processes do not drop the same units of their different images."""
    if rank > 0:
        torch.manual_seed(rank_seed(seed, rank))


class _Procs:
    """This process's place among the processes of one run (one when not started by torchrun)."""

    def __init__(self, world: int, rank: int, device: torch.device):
        self.world, self.rank, self.device = world, rank, device

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(x)
        return x

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, model) -> None:
        """Process 0's BatchNorm statistics everywhere, so evaluation and checkpoint see one model."""
        if self.world > 1:
            import torch.distributed as dist
            for b in model.buffers():
                dist.broadcast(b, 0)


@dataclass
class _State:
    epoch: int = 0           # epochs done
    batch: int = 0           # batches done of the current epoch
    step: int = 0
    elapsed: float = 0.0
    train_time: float = 0.0  # seconds in training steps (no evaluation), for images/s
    images: int = 0          # training images seen by all processes (the padding of the last batches included)
    epochs_rows: list = field(default_factory=list)
    steps_rows: list = field(default_factory=list)
    status: str = "max_epochs"
    first_fit: int | None = None
    diverged_step: int | None = None


def train(cfg: dict, run: Run, log=print) -> Path:
    """Train one streamed run into its folder, resuming its checkpoint; returns the folder."""
    s = stream_settings(cfg, run)
    t = training_for(cfg, run)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world != s["gpus_per_run"]:
        raise ConfigError(f"training.gpus_per_run: this run takes {s['gpus_per_run']} processes but "
                          f"{world} started; start it with `{train_command(cfg, '<params>', run.id)}` "
                          "(as the Snakemake rule and the DVC stage do)")
    # one trainer per run: process 0 locks the run folder before the processes meet and before any GPU is
    # claimed (RunBusyError: it exits non-zero and torchrun stops the others)
    lock = lock_runs({run.id: run_dir(cfg, run)}) if rank == 0 else None
    slot, group = None, False
    try:
        device = pick_device(t["device"])
        if device.type == "cuda":   # each process claims a free GPU slot (see rethinking.engine.slots), one GPU per process
            slot = claim_gpu(torch.cuda.device_count(), t["jobs_per_gpu"], rank, world)
            device = torch.device("cuda", slot.device)
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(t["threads"])
        if world > 1:
            import torch.distributed as dist
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                    device_id=device if device.type == "cuda" else None)
            group = True
        if rank != 0:
            log = lambda *_: None   # noqa: E731  (process 0 speaks for the run)
        elif slot is not None:
            log(f"{run.id}: process 0 of {world} on GPU {slot.physical}")
        return _train(cfg, run, s, t, _Procs(world, rank, device), log)
    finally:
        if group:
            import torch.distributed as dist
            dist.destroy_process_group()
        if slot is not None:
            slot.release()
        if lock is not None:
            lock.release()


def _train(cfg: dict, run: Run, s: dict, t: dict, procs: _Procs, log) -> Path:
    device, world, rank = procs.device, procs.world, procs.rank
    out = run_dir(cfg, run)
    size, workers, bs = s["image_size"], t["workers"], s["batch_size"]
    per_process = bs // world
    raw = s["decode"] == "device"

    # --- data: an index and label files; images are read and cropped by the loader's workers
    d = load_streamed(cfg, run.corruption)
    n_train, n_classes = len(d["y_train"]), len(d["classes"])
    train_set = StreamImages(d["root"], d["train_files"], d["y_train"], size, augment="crop" in run.regs,
                             seed=run.seed, raw=raw)
    eval_train = StreamImages(d["root"], d["train_files"], d["y_train"], size, augment=False, raw=raw)
    test_set = StreamImages(d["root"], d["test_files"], d["y_test"], size, augment=False, raw=raw)
    k = s["train_eval_size"]
    train_eval_idx = train_eval_indices(n_train, k, run.seed)

    # --- model and optimizer (process 0's initialization, the same seed everywhere; then a stream per process)
    torch.manual_seed(run.seed)
    model = build_stream_model(run.model, size, n_classes, s["dropout"], base=cfg.get("_params_dir")).to(device)
    seed_process(run.seed, rank)
    n_params = count_parameters(model)
    channels_last = device.type == "cuda" and traits(model)["conv"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = autocast_for(device)
    opt = sgd(model.parameters(), s["lr"], s["momentum"], s["weight_decay"])
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    # --- resume
    st = _State()
    fingerprint = code_fingerprint(s, STREAM_ENGINE_SOURCES, device.type)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    ckpt_path = out / CHECKPOINT
    if rank == 0:
        remove_stale_temps(ckpt_path)   # a checkpoint write cut short by a kill (process 0 alone writes it)
    # every process reads the file; process 0 alone moves a damaged one aside (another process reading it
    # meanwhile reads the same damaged bytes, or finds no file: either way it starts over)
    ck = load_checkpoint(ckpt_path, fingerprint, CHECKPOINT_KEYS, log, name=run.id, move_aside=rank == 0)
    if world > 1:   # resume only if every process can: otherwise the processes would train different models
        readers = int(procs.sum(torch.tensor([int(ck is not None)], device=device, dtype=torch.int64)))
        if 0 < readers < world:
            log(f"{run.id}: {world - readers} of {world} processes could not read the checkpoint; starting over")
            ck = None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        mine = ck["processes"][rank]
        set_rng_state(mine, device)
        loss_sum.fill_(mine["loss_sum"])
        correct.fill_(mine["correct"])
        seen = mine["seen"]
        st = _State(**ck["state"])
        log(f"{run.id}: resuming after epoch {st.epoch}, batch {st.batch} (step {st.step})")

    steps_per_epoch = len(epoch_batches(n_train, 0, run.seed, 0, world, per_process))
    log_every, every = s["log_every"], t["checkpoint_every"]
    start = time.perf_counter() - st.elapsed

    def save():
        st.elapsed = time.perf_counter() - start
        _checkpoint(out / CHECKPOINT, fingerprint, model, opt, st, procs, loss_sum, correct, seen)

    while st.status == "max_epochs" and st.epoch < s["max_epochs"]:
        lr = learning_rate(st.epoch, s["lr"], s["lr_decay"], s["lr_decay_images"], n_train)
        for g in opt.param_groups:
            g["lr"] = lr
        batches = epoch_batches(n_train, st.epoch, run.seed, rank, world, per_process)[st.batch:]
        net.train()
        t0, images0 = time.perf_counter(), seen
        for batch in make_loader(train_set, batches, workers, pin=device.type == "cuda"):
            x, y = to_input(batch, train_set, device, channels_last)
            with autocast():
                output = net(x)
            loss, logits = loss_of(output, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            st.step += 1
            st.batch += 1
            seen += len(y)
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            if st.step % log_every == 0:
                mean = float(procs.sum(loss_sum.clone())) / (log_every * world)
                loss_sum.zero_()
                st.steps_rows.append({"step": st.step, "epoch": st.epoch + 1, "train_loss": mean})
                rate = (seen - images0) * world / max(time.perf_counter() - t0, 1e-9)
                log(f"{run.id}: step {st.step} ({st.batch}/{steps_per_epoch} of epoch {st.epoch + 1}) "
                    f"loss {mean:.4f}, {rate:,.0f} images/s")
            if every and st.step % every == 0 and st.batch < steps_per_epoch:
                st.train_time += time.perf_counter() - t0
                save()
                t0, images0 = time.perf_counter(), seen
        st.train_time += time.perf_counter() - t0

        st.epoch, st.batch = st.epoch + 1, 0
        procs.sync_buffers(model)
        ev = dict(procs=procs, batch_size=t["eval_batch_size"], workers=workers, channels_last=channels_last)
        train_loss, train_top1, train_top5, train_correct, split = evaluate(
            model, eval_train, train_eval_idx, **ev, y_true=d["y_train_true"])
        test_loss, test_top1, test_top5, _ = evaluate(model, test_set, np.arange(len(test_set)), **ev)
        counts = procs.sum(torch.tensor([int(correct), seen], device=device, dtype=torch.int64)).tolist()
        correct.zero_()
        seen = 0
        st.images += counts[1]
        st.epochs_rows.append({
            "epoch": st.epoch, "step": st.step, "lr": lr, "batch_train_acc": counts[0] / max(counts[1], 1),
            "train_loss": train_loss, "train_acc": train_top1, "train_top5": train_top5,
            "test_loss": test_loss, "test_acc": test_top1, "test_top5": test_top5,
            "wall_time": time.perf_counter() - start, **split,
        })
        log(f"{run.id}: epoch {st.epoch} step {st.step} lr {lr:.4g} train loss {train_loss:.4f} "
            f"top-1 {100 * train_top1:.2f}% test top-1 {100 * test_top1:.2f}% top-5 {100 * test_top5:.2f}%")
        bad = [r["step"] for r in st.steps_rows if r["epoch"] == st.epoch and not math.isfinite(r["train_loss"])]
        if bad or not math.isfinite(train_loss):
            st.status, st.diverged_step = "diverged", (bad[0] if bad else st.step)
            log(f"{run.id}: the loss is not finite (first seen at step {st.diverged_step}); stopping as diverged")
        elif fitted(train_correct, len(train_eval_idx)):
            st.first_fit, st.status = st.step, "fitted"
        save()

    if rank == 0:
        n_corrupted = int((d["y_train"] != d["y_train_true"])[train_eval_idx].sum())   # among the evaluated images
        _finish(out, run, s, st, n_params, steps_per_epoch, len(train_eval_idx), n_train, len(test_set), procs, log,
                n_corrupted)
    return out


@torch.no_grad()
def evaluate(model, dataset: StreamImages, indices: np.ndarray, *, procs: _Procs, batch_size: int, workers: int,
             channels_last: bool, y_true: np.ndarray | None = None):
    """(mean loss, top-1, top-5, number top-1 correct) over dataset[indices], center crops, eval mode, in fp32
    (no autocast: the stop rule reads these logits, see rethinking.engine.loop.evaluate); each process evaluates
    every world-th image and the sums are shared. With `y_true` (the true label of every image of `dataset`,
    whose labels may be corrupted) a fifth value: the split of the same top-1 predictions over these images
    by corrupted and intact labels (rethinking.engine.loop.split_percent), from the same forward pass."""
    model.eval()
    device = procs.device
    mine = indices[procs.rank::procs.world]
    batches = [[(int(i), 0) for i in mine[j:j + batch_size]] for j in range(0, len(mine), batch_size)]
    split = y_true is not None
    # loss, top-1, top-5 (and the split's counts: intact right, corrupted, memorized, original label)
    sums = torch.zeros(7 if split else 3, device=device, dtype=torch.float64)
    if split:   # the true labels of this process's images, in the loader's order (one copy per evaluation)
        true_mine = torch.from_numpy(np.asarray(y_true, dtype=np.int64)[mine]).to(device)
    n = 0   # images, counted on the host
    with exact_float32():
        for batch in make_loader(dataset, batches, workers, pin=device.type == "cuda"):
            x, y = to_input(batch, dataset, device, channels_last)
            logits, _ = split_outputs(model(x))
            top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
            parts = [F.cross_entropy(logits.float(), y, reduction="sum").double(),
                     (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()]
            if split:
                parts += list(split_counts(top[:, 0], y, true_mine[n:n + len(y)]).double())
            sums += torch.stack(parts)
            n += len(y)
    totals = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64).to(device)])
    loss, top1, top5, *counts, n = procs.sum(totals).tolist()
    n = max(n, 1.0)
    out = loss / n, top1 / n, top5 / n, int(round(top1))
    if not split:
        return out
    return (*out, split_percent(*(int(round(c)) for c in counts), int(round(n))))


def _checkpoint(path: Path, fingerprint: str, model, opt, st: _State, procs: _Procs, loss_sum, correct,
                seen: int) -> None:
    """Every process hands process 0 its random state and partial sums; process 0 writes the file atomically."""
    mine = {**rng_state(procs.device), "loss_sum": float(loss_sum), "correct": int(correct), "seen": seen}
    everyone = procs.gather(mine)
    if procs.rank != 0:
        return
    save_torch(path, {"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "state": dict(st.__dict__), "processes": everyone})


def _finish(out: Path, run: Run, s: dict, st: _State, n_params: int, steps_per_epoch: int, n_train_eval: int,
            n_train: int, n_test: int, procs: _Procs, log, n_corrupted: int | None = None) -> None:
    """Write a finished run's tables and, last, its summary (the same keys as rethinking.engine.loop's, plus top-5).
    `cpu_time`, `max_rss_mb`, `process_wall_time` are process 0's (rethinking.analysis.jobs.process_usage; not its loader
    workers' nor the other processes' of a multi-GPU run: Snakemake's benchmark file of the job measures them all)."""
    from .run import process_usage
    write_epochs(out / "epochs.csv", st.epochs_rows)
    write_steps(out / "steps.csv", st.steps_rows)
    last = st.epochs_rows[-1]
    device = procs.device
    name = device_name(device)
    summary = {
        **s,
        "dataset": run.dataset, "level": run.corruption.level, "corruption_kind": run.corruption.kind,
        "status": st.status, "epochs": st.epoch, "steps": st.step, "steps_per_epoch": steps_per_epoch,
        "step_first_fit": st.first_fit, "diverged_step": st.diverged_step, "n_train": n_train,
        "n_train_eval": n_train_eval, "n_corrupted": n_corrupted, "n_test": n_test,
        "train_acc": 100 * last["train_acc"], "test_acc": 100 * last["test_acc"],
        "train_top5": 100 * last["train_top5"], "test_top5": 100 * last["test_top5"],
        "best_test_acc": 100 * max(r["test_acc"] for r in st.epochs_rows),
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        "parameters": n_params, "input_shape": [3, s["image_size"], s["image_size"]], "wall_time": st.elapsed,
        **process_usage(),
        "train_images_per_s": st.images / st.train_time if st.train_time > 0 else None,
        "processes": procs.world, "device": f"{procs.world} x {name}" if procs.world > 1 else name,
        "deterministic": device.type == "cpu" and procs.world == 1,
        "versions": versions(),
    }
    write_json(out / "summary.json", summary)
    log(f"{run.id}: {st.status} after {st.epoch} epochs, {st.step} steps; train top-1 {summary['train_acc']:.2f}% "
        f"test top-1 {summary['test_acc']:.2f}% top-5 {summary['test_top5']:.2f}% ({st.elapsed:.1f} s on {name})")


