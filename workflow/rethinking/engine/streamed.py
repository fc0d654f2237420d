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
any model of rethinking.models at image_size x image_size) and SGD (or Adam), resume
the checkpoint, then loop over epochs. An epoch is a seeded permutation of the
training set (the same in every process), padded to a multiple of n and dealt
out, so every process takes the same number of steps. The loss (main head
plus 0.4 x auxiliary head) and the number of correct predictions accumulate
on the device; every `log_every` steps the mean loss of all processes is
read. After each epoch the processes evaluate the held-out split and the
training set (all of it, or `train_eval_size` seeded images) with center
crops in eval mode, top-1 and top-5, each process a share, summed, with
every registered per-epoch metric of the training set on those same images
(rethinking.engine.metrics: the split by corrupted and intact labels, ...).

Stop rule, checkpoint and summary as the in-memory engine's, from the module
both share (rethinking.engine.run): 100% top-1 on the
(evaluated) training set, the epoch limit, or a non-finite loss; process 0
writes epochs.csv, steps.csv, summary.json (last) and checkpoint.pt. The
checkpoint is written after every epoch and, with `checkpoint_every: k`, every
k steps inside one (an ImageNet epoch is 5,005 steps at batch 256); it holds
the model, the optimizer, each process's random state and the position in
the epoch, so a killed run resumes at the step it last saved, with the same
batches and crops it would have had. Every process reads the checkpoint
(files.load_checkpoint, weights_only); process 0 moves a damaged one aside, and
the processes resume only if every one of them could read it. Process 0 holds
the run's lock (.train.lock, rethinking.engine.slots) from before the processes meet
until it ends: a second trainer of the run stops at once.

On CUDA each process claims a GPU slot among its own share of the visible
GPUs (slots.claim_gpu: index = rank modulo processes), so the processes of a run are
on different GPUs whatever `jobs_per_gpu` is. Every process builds the same
model from the run's seed; then every process but 0 reseeds torch (seed_process),
so their dropout masks differ, and a one-process run draws what it always drew.
The steps train under bf16 autocast where the GPU computes bf16 natively
(rethinking.engine.run.autocast_for); evaluation, which the stop rule reads, is fp32.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..data.stream import DecodeStats, DeviceBatches, StreamImages, load_streamed
from ..errors import ConfigError
from ..models import count_parameters, traits
from ..models.inception_v3 import build_stream_model, loss_of
from ..plan import Run, run_dir, training_for
from ..plan.settings import STREAM_ENGINE_SOURCES, fingerprint, stream_settings, train_command
from .examples import ExampleRecord, finished
from .metrics import evaluate
from .optim import make_optimizer
from .run import (
    Clock,
    Progress,
    RunFacts,
    autocast_for,
    claimed_device,
    close_epoch,
    device_name,
    learning_rate,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_summary,
)


def epoch_batches(n: int, epoch: int, seed: int, rank: int, world: int, batch: int) -> list[list[tuple[int, int]]]:
    """This process's batches of an epoch, as (index, epoch) keys: one seeded permutation for all processes,
    padded (wrapping around) to a multiple of `world` and dealt out, so every process has as many batches."""
    perm = np.random.default_rng([seed, 3, epoch]).permutation(n)
    total = math.ceil(n / world) * world
    perm = np.concatenate([perm, perm[: total - n]]) if total > n else perm
    mine = perm[rank::world]
    return [[(int(i), epoch) for i in mine[j : j + batch]] for j in range(0, len(mine), batch)]


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


def train(cfg: dict, run: Run, log=print) -> Path:
    """Train one streamed run into its folder, resuming its checkpoint; returns the folder."""
    s = stream_settings(cfg, run)
    t = training_for(cfg, run)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world != s["gpus_per_run"]:
        raise ConfigError(
            f"training.gpus_per_run: this run takes {s['gpus_per_run']} processes but "
            f"{world} started; start it with `{train_command(cfg, '<params>', run.id)}` "
            "(as the Snakemake rule and the DVC stage do)"
        )
    # one trainer per run: process 0 locks the run folder before the processes meet and before any GPU is
    # claimed (RunBusyError: it exits non-zero and torchrun stops the others)
    say = log if rank == 0 else (lambda *_: None)  # process 0 speaks for the run
    with claimed_device(
        t["device"],
        jobs_per_gpu=t["jobs_per_gpu"],
        threads=t["threads"],
        runs={run.id: run_dir(cfg, run)} if rank == 0 else None,
        rank=rank,
        world=world,
        log=say,
        what=f"{run.id}: process {rank} of {world}",
    ) as device:
        with _process_group(world, rank, device):
            return _train(cfg, run, s, t, _Procs(world, rank, device), say)


@contextmanager
def _process_group(world: int, rank: int, device):
    """The run's processes joined (NCCL between GPUs, gloo on CPU) inside the block; nothing for one process."""
    if world == 1:
        yield
        return
    import torch.distributed as dist

    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=rank,
        world_size=world,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


class _Run:
    """One streamed run in this process: its data, model, optimizer and the sums a checkpoint keeps."""

    def __init__(self, cfg: dict, run: Run, s: dict, procs: _Procs):
        device = procs.device
        self.run, self.s, self.procs, self.out = run, s, procs, run_dir(cfg, run)
        raw = s["decode"] == "device"
        # --- data: an index and label files; images are read and cropped by the loader's workers
        self.d = d = load_streamed(cfg, run.corruption, run.dataset)
        self.n_train, size = len(d["y_train"]), s["image_size"]
        self.decode_stats = DecodeStats()  # decode: device: images TorchCodec refused, logged once per epoch
        common = dict(raw=raw, decode_stats=self.decode_stats)
        self.train_set = StreamImages(
            d["root"], d["train_files"], d["y_train"], size, augment="crop" in run.regs, seed=run.seed, **common
        )
        self.eval_train = StreamImages(d["root"], d["train_files"], d["y_train"], size, augment=False, **common)
        self.test_set = StreamImages(d["root"], d["test_files"], d["y_test"], size, augment=False, **common)
        self.train_eval_idx = train_eval_indices(self.n_train, s["train_eval_size"], run.seed)
        # the per-example record of the evaluated training images; this process evaluates every world-th one
        n_eval = len(self.train_eval_idx)
        self.record = ExampleRecord(
            n_eval,
            s["max_epochs"],
            device,
            positions=None if procs.world == 1 else np.arange(procs.rank, n_eval, procs.world),
        )
        # --- model and optimizer: process 0's initialization (the same seed everywhere), then a stream per process
        torch.manual_seed(run.seed)
        self.model = build_stream_model(
            run.model, size, len(d["classes"]), s["dropout"], base=cfg.get("_params_dir")
        ).to(device)
        seed_process(run.seed, procs.rank)
        self.n_params = count_parameters(self.model)
        self.channels_last = device.type == "cuda" and traits(self.model)["conv"]
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.opt = make_optimizer(self.model.parameters(), s)  # SGD, or Adam where the settings say so
        self.net = self.model
        if procs.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None)
        self.fingerprint = fingerprint(s, STREAM_ENGINE_SOURCES, device.type)
        self.p = Progress()
        self.loss_sum = torch.zeros((), device=device)  # this process's loss since the last steps.csv row
        self.correct = torch.zeros((), device=device, dtype=torch.int64)  # and its steps' correct predictions
        self.seen = 0  # and its images, this epoch

    def resume(self, log) -> None:
        """From the checkpoint, if every process can read it (otherwise they would train different models)."""
        procs = self.procs
        # every process reads the file; process 0 alone moves a damaged one aside (another process reading it
        # meanwhile reads the same damaged bytes, or finds no file: either way it starts over)
        ck = load_checkpoint(self.out, self.fingerprint, log, name=self.run.id, owner=procs.rank == 0)
        if procs.world > 1:
            readers = int(procs.sum(torch.tensor([int(ck is not None)], device=procs.device, dtype=torch.int64)))
            if 0 < readers < procs.world:
                log(
                    f"{self.run.id}: {procs.world - readers} of {procs.world} processes could not read the "
                    "checkpoint; starting over"
                )
                ck = None
        if ck is None:
            return
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        mine = ck["processes"][procs.rank]
        set_rng_state(mine, procs.device)
        self.loss_sum.fill_(mine["loss_sum"])
        self.correct.fill_(mine["correct"])
        self.seen = mine["seen"]
        self.record.load(ck["examples"])
        self.p = Progress.load(ck["progress"])
        log(f"{self.run.id}: resuming after epoch {self.p.epoch}, batch {self.p.batch} (step {self.p.step})")

    def save(self, clock: Clock) -> dict:
        """Every process hands process 0 its random state and partial sums, and every process's rows of the
        per-example record go to all; process 0 writes the file. Returns the whole record."""
        self.p.elapsed = clock()
        mine = {
            **rng_state(self.procs.device),
            "loss_sum": float(self.loss_sum),
            "correct": int(self.correct),
            "seen": self.seen,
        }
        everyone = self.procs.gather(mine)
        record = self.record.state(reduce=self.procs.sum if self.procs.world > 1 else None)
        if self.procs.rank == 0:
            save_checkpoint(
                self.out,
                self.fingerprint,
                self.model.state_dict(),
                self.opt.state_dict(),
                self.p,
                everyone,
                examples=record,
            )
        return record

    def examples(self, state: dict) -> tuple[dict, dict]:
        """(meta, arrays) of the run's examples.npz from the whole record (`state`, as the last save gathered it)."""
        d, idx = self.d, self.train_eval_idx
        return finished(
            self.record,
            self.run.id,
            self.p.epoch,
            index=idx,
            origin=np.asarray(d["train_files"])[idx],
            label=np.asarray(d["y_train"])[idx],
            label_true=np.asarray(d["y_train_true"])[idx],
            meta=dict(classes=d["classes"], source=str(d["root"]), n_train=self.n_train),
            state=state,
        )


def _train(cfg: dict, run: Run, s: dict, t: dict, procs: _Procs, log) -> Path:
    r = _Run(cfg, run, s, procs)
    r.resume(log)
    steps_per_epoch = len(epoch_batches(r.n_train, 0, run.seed, 0, procs.world, s["batch_size"] // procs.world))
    clock = Clock(r.p.elapsed)
    autocast = autocast_for(procs.device)
    record = None
    while r.p.running(s["max_epochs"], s.get("stop_at_fit", True)):
        lr = learning_rate(r.p.epoch, s["lr"], s["lr_decay"], s["lr_decay_images"], r.n_train)
        _train_epoch(r, lr, t, steps_per_epoch, autocast, clock, log)
        record = _end_epoch(r, lr, t, clock, log)
    if record is None:  # resumed finished: the record as the checkpoint holds it
        record = r.record.state(reduce=procs.sum if procs.world > 1 else None)
    if procs.rank == 0:
        # among the evaluated images
        n_corrupted = int((r.d["y_train"] != r.d["y_train_true"])[r.train_eval_idx].sum())
        name = device_name(procs.device)
        facts = RunFacts(
            parameters=r.n_params,
            steps_per_epoch=steps_per_epoch,
            n_train=r.n_train,
            n_train_eval=len(r.train_eval_idx),
            n_corrupted=n_corrupted,
            n_test=len(r.test_set),
            input_shape=[3, s["image_size"], s["image_size"]],
            device=f"{procs.world} x {name}" if procs.world > 1 else name,
            deterministic=procs.device.type == "cpu" and procs.world == 1,
            processes=procs.world,
        )
        last = r.p.epochs_rows[-1]
        write_summary(
            r.out,
            run,
            s,
            r.p,
            facts,
            log=log,
            extra={"train_top5": 100 * last["train_top5"], "test_top5": 100 * last["test_top5"]},
            examples=r.examples(record),
        )
    return r.out


def _train_epoch(r: _Run, lr: float, t: dict, steps_per_epoch: int, autocast, clock: Clock, log) -> None:
    """The steps of one epoch (from the batch a resume starts at), with a checkpoint every `checkpoint_every`
    steps inside it. The loss and the correct predictions accumulate on the device; every `log_every` steps
    the mean loss of all processes is read."""
    p, procs, s = r.p, r.procs, r.s
    for g in r.opt.param_groups:
        g["lr"] = lr
    batches = epoch_batches(r.n_train, p.epoch, r.run.seed, procs.rank, procs.world, s["batch_size"] // procs.world)[
        p.batch :
    ]
    r.net.train()
    t0, images0 = time.perf_counter(), r.seen
    with DeviceBatches(r.train_set, batches, t["workers"], procs.device, r.channels_last) as inputs:
        for x, y in inputs:
            with autocast():
                output = r.net(x)
            loss, logits = loss_of(output, y)
            r.opt.zero_grad(set_to_none=True)
            loss.backward()
            r.opt.step()
            p.step += 1
            p.batch += 1
            r.seen += len(y)
            r.loss_sum += loss.detach()
            r.correct += (logits.detach().argmax(1) == y).sum()
            if p.step % s["log_every"] == 0:
                mean = float(procs.sum(r.loss_sum.clone())) / (s["log_every"] * procs.world)
                r.loss_sum.zero_()
                p.steps_rows.append({"step": p.step, "epoch": p.epoch + 1, "train_loss": mean})
                rate = (r.seen - images0) * procs.world / max(time.perf_counter() - t0, 1e-9)
                log(
                    f"{r.run.id}: step {p.step} ({p.batch}/{steps_per_epoch} of epoch {p.epoch + 1}) "
                    f"loss {mean:.4f}, {rate:,.0f} images/s"
                )
            every = t["checkpoint_every"]
            if every and p.step % every == 0 and p.batch < steps_per_epoch:
                p.train_time += time.perf_counter() - t0
                r.save(clock)
                t0, images0 = time.perf_counter(), r.seen
    p.train_time += time.perf_counter() - t0


def _eval_batches(
    dataset: StreamImages,
    indices: np.ndarray,
    procs: _Procs,
    batch_size: int,
    workers: int,
    channels_last: bool,
    y_true: np.ndarray | None = None,
):
    """(x, y, y_true) batches of this process's share of dataset[indices] (every world-th image), center
    crops; y_true: the true label of every image of `dataset`, or None."""
    device = procs.device
    mine = indices[procs.rank :: procs.world]
    batches = [[(int(i), 0) for i in mine[j : j + batch_size]] for j in range(0, len(mine), batch_size)]
    true_mine = None if y_true is None else torch.from_numpy(np.asarray(y_true, dtype=np.int64)[mine]).to(device)
    n = 0
    with DeviceBatches(dataset, batches, workers, device, channels_last) as inputs:
        for x, y in inputs:
            yield x, y, None if true_mine is None else true_mine[n : n + len(y)]
            n += len(y)


def _end_epoch(r: _Run, lr: float, t: dict, clock: Clock, log) -> dict:
    """Evaluate the training set (its `train_eval_size` images, with every registered metric and the
    per-example record) and the test set, top-1 and top-5, each process a share, summed; close the epoch
    (row, divergence, fit); checkpoint. Returns the whole record as the checkpoint holds it."""
    p, procs = r.p, r.procs
    p.epoch, p.batch = p.epoch + 1, 0
    procs.sync_buffers(r.model)
    ev = dict(procs=procs, batch_size=t["eval_batch_size"], workers=t["workers"], channels_last=r.channels_last)
    r.record.begin(p.epoch)
    train = evaluate(
        r.model,
        _eval_batches(r.eval_train, r.train_eval_idx, y_true=r.d["y_train_true"], **ev),
        topk=5,
        reduce=procs.sum,
        metrics=True,
        record=r.record,
    )
    r.record.end()
    test = evaluate(r.model, _eval_batches(r.test_set, np.arange(len(r.test_set)), **ev), topk=5, reduce=procs.sum)
    counts = procs.sum(torch.tensor([int(r.correct), r.seen], device=procs.device, dtype=torch.int64)).tolist()
    r.correct.zero_()
    r.seen = 0
    p.images += counts[1]
    metrics = {k: v for k, v in train.items() if k not in ("loss", "acc", "correct", "n", "top5")}
    row = {
        "epoch": p.epoch,
        "step": p.step,
        "lr": lr,
        "batch_train_acc": counts[0] / max(counts[1], 1),
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "train_top5": train["top5"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "test_top5": test["top5"],
        "wall_time": clock(),
        **metrics,
    }
    log(
        f"{r.run.id}: epoch {p.epoch} step {p.step} lr {lr:.4g} train loss {train['loss']:.4f} "
        f"top-1 {100 * train['acc']:.2f}% test top-1 {100 * test['acc']:.2f}% top-5 {100 * test['top5']:.2f}%"
    )
    _log_decode_fallbacks(r, log)
    close_epoch(p, row, train["correct"], len(r.train_eval_idx), name=r.run.id, log=log)
    return r.save(clock)


def _log_decode_fallbacks(r: _Run, log) -> None:
    """decode: device: one line per epoch when TorchCodec refused images of this epoch (training and
    evaluation, all processes) and Pillow decoded them."""
    if r.s["decode"] != "device":
        return
    images, fallbacks, reason = r.decode_stats.take()
    counts = r.procs.sum(torch.tensor([images, fallbacks], device=r.procs.device, dtype=torch.int64)).tolist()
    if counts[1]:
        log(
            f"{r.run.id}: epoch {r.p.epoch}: decode: device: TorchCodec refused {counts[1]} of {counts[0]} images, "
            f"decoded by Pillow instead (first reason here: {reason or 'on another process'})"
        )
