"""Stage `train`: corrupted artifact + (model, regularizers, seed) -> run folder.

Read top to bottom: load the data onto the device once, build the model and
SGD, then loop over epochs. Each epoch draws a device-side permutation, runs
the steps (loss and accuracy accumulated on the device and read every
`log_every` steps, so there is no host synchronization per step; under bf16
autocast on GPUs that compute bf16 natively), evaluates the whole training set
in eval mode and in fp32, and checkpoints atomically. The run stops
at 100% training accuracy (recording the step of first fit), at the epoch
limit, or when the loss stops being finite (status `diverged`).

Inputs that need no random augmentation are prepared once per process
(center crop and per-image standardization, as floats on the device), so a
step only gathers its batch; augmented runs prepare each batch from uint8.
Several runs that share a model and their training settings can be trained in
one process as a pack (`train_runs`, rethinking.engine.pack): the same loop, with the
step applied to a stacked model, and every run keeping its own folder.

The evaluation of the training set also splits its predictions by the labels
the corruption changed (corrupt.corrupted_mask; SPLIT_COLUMNS: accuracy on
the intact labels, share of the corrupted ones predicted as their wrong label
and as their original one), counted in the same forward pass.

Run folder: epochs.csv (per epoch), steps.csv (training loss every
`log_every` steps, Figure 1a), summary.json (written last: its presence
means the run is finished), checkpoint.pt (the last epoch; a rerun of a
killed job resumes from it; one that cannot be read is moved aside to
checkpoint.pt.corrupt and the run starts over, see io.load_checkpoint), and
.train.lock (held while a process trains the run: one trainer per run, see
rethinking.engine.slots).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..plan import Run, run_dir, training_for
from ..data.corrupt import load_corrupted
from ..files import load_checkpoint, remove_stale_temps, save_torch, write_json, write_rows
from .optim import SGD
from ..models import build_model, check_model, count_parameters, is_user_code, parse, traits
from .pack import Stacked
from ..plan.settings import ENGINE_SOURCES, fingerprint, run_settings
from ..plan.packs import check_packable
from .precision import exact_float32
from ..data.preprocess import augmentations, prepare_all, prepare_batch
from .slots import claim, lock_runs

CHECKPOINT = "checkpoint.pt"
# what a resume reads from a checkpoint (besides its fingerprint; `diverged_step` and `cuda_rng` may be absent)
CHECKPOINT_KEYS = ("model", "optimizer", "generator", "torch_rng", "epoch", "step", "elapsed", "epochs", "steps",
                   "status", "first_fit", "loss_sum")


def learning_rate(epoch: int, base_lr: float, decay: float, decay_images: int | None, n_train: int) -> float:
    """lr of an epoch: base_lr * decay ** (epochs done), or per `decay_images` images seen."""
    exponent = epoch if decay_images is None else epoch * n_train / decay_images
    return base_lr * decay ** exponent


def fitted(correct: int, total: int) -> bool:
    """The stop rule: every training example classified as its (possibly corrupted) label."""
    return total > 0 and correct == total


# epochs.csv: the evaluation of the training set split by its labels (corrupt.corrupted_mask), in percent
SPLIT_COLUMNS = ("clean_acc", "noisy_memorized", "noisy_true")


def split_counts(pred: torch.Tensor, y: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """One batch's counts, on the device: (intact labels predicted right, corrupted examples, corrupted examples
    predicted as their assigned label, corrupted examples predicted as their original label). An example is
    corrupted where its label y differs from its true label y_true."""
    noisy = y != y_true
    hit = pred == y
    return torch.stack([(hit & ~noisy).sum(), noisy.sum(), (hit & noisy).sum(), ((pred == y_true) & noisy).sum()])


def split_percent(clean_correct: int, n_noisy: int, memorized: int, true: int, n: int) -> dict:
    """The SPLIT_COLUMNS of n evaluated training examples from split_counts' sums: `clean_acc` the accuracy on
    the examples whose label is intact, `noisy_memorized` / `noisy_true` the share of the corrupted examples
    predicted as their assigned (wrong) / original label; percent, blank (NaN) where the group is empty."""
    def pct(k, total):
        return 100.0 * k / total if total else float("nan")
    return {"clean_acc": pct(clean_correct, n - n_noisy), "noisy_memorized": pct(memorized, n_noisy),
            "noisy_true": pct(true, n_noisy)}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def sgd(params, lr: float, momentum: float, weight_decay: float = 0.0) -> SGD:
    """The engine's optimizer (optim.SGD): torch's fused SGD kernel, one kernel for every tensor, where
    torch's default for-loop makes several passes per tensor. MLP 1x512 on the project's 2-core CPU:
    0.3-0.5 ms per step against the default's 0.6-1.1 ms, or 1.1-1.6 ms with weight decay 5e-4
    (benchmarks/step_breakdown.py [--weight-decay 5e-4]). Same update, same state_dict format as
    torch.optim.SGD; resuming (`load_state_dict`) lays the buffers out like the parameters."""
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def autocast_for(device: torch.device):
    """The training steps' autocast (a factory of context managers): bf16 on a GPU that computes in bf16
    natively (compute capability 8.0 and later, or ROCm), none (fp32) elsewhere: on the CPU, and on older
    GPUs, where torch would emulate bf16 slowly. Evaluation never autocasts (see `evaluate`)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if native:
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def run_epoch(model, opt, x_train, y_train, perm, *, batch_size, crop, augment, generator, autocast,
              channels_last, loss_sum, step, log_every, on_log=None):
    """One epoch of SGD steps over `perm` (a device-side permutation): the engine's hot loop.

    Batches are gathered from the data on the device: prepared floats are used as they are,
    uint8 images are prepared per batch (crop, augmentation, standardization); the loss and
    the number of correct predictions accumulate on the device. The host reads the loss only
    every `log_every` steps (on_log(step, mean loss)). Returns (step, correct, images seen).
    """
    correct = torch.zeros((), device=y_train.device, dtype=torch.int64)
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        xb = x_train[idx] if x_train.is_floating_point() else prepare_batch(x_train[idx], crop, augment, generator)
        yb = y_train[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(1) == yb).sum()
        if on_log is not None and step % log_every == 0:
            on_log(step, float(loss_sum) / log_every)
            loss_sum.zero_()
    return step, correct, len(perm)


@torch.no_grad()
def evaluate(model, x, y, crop, batch_size, y_true=None):
    """Mean loss, accuracy and number correct over a whole split (uint8, or prepared floats), in eval mode.

    With `y_true` (the true labels of a training set whose labels `y` may be corrupted) a fourth value: the
    split of the same predictions by corrupted and intact labels (split_percent), counted on the device in
    the same forward pass.

    In fp32, without autocast even where the steps train in bf16, and without TF32 (precision.exact_float32):
    the stop rule needs every training example right, and bf16 logits tie and flip small margins."""
    model.eval()
    loss = torch.zeros((), device=y.device, dtype=torch.float64)
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    split = None if y_true is None else torch.zeros(4, device=y.device, dtype=torch.int64)
    with exact_float32():
        for i in range(0, len(y), batch_size):
            xb = x[i:i + batch_size]
            if not xb.is_floating_point():
                xb = prepare_batch(xb, crop)
            logits = model(xb)
            yb = y[i:i + batch_size]
            pred = logits.argmax(1)
            loss += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (pred == yb).sum()
            if split is not None:
                split += split_counts(pred, yb, y_true[i:i + batch_size])
    n = len(y)
    c = int(correct)
    if split is None:
        return float(loss) / n, c / n, c
    return float(loss) / n, c / n, c, split_percent(*split.tolist(), n)


def _progress(total: int, initial: int, desc: str):
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="epoch", leave=False)
    return None


@dataclass
class _Member:
    """One run inside a training process: its data on the device, generator, progress and rows."""
    run: Run
    settings: dict
    out: Path
    fingerprint: str
    x_fit: torch.Tensor     # what the steps read: prepared floats, or uint8 when the run augments
    x_train: torch.Tensor   # prepared floats (center crop, standardized): the evaluation of the training set
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    gen: torch.Generator
    loss_sum: torch.Tensor  # training loss summed since the last steps.csv row, on the device
    epoch: int = 0
    step: int = 0
    start: float = 0.0
    epochs_rows: list = field(default_factory=list)
    steps_rows: list = field(default_factory=list)
    status: str = "max_epochs"
    first_fit: int | None = None
    diverged_step: int | None = None
    y_true: torch.Tensor | None = None   # the training set's true labels (the base artifact's): the split's

    @property
    def running(self) -> bool:
        return self.status == "max_epochs" and self.epoch < self.settings["max_epochs"]


def train(cfg: dict, run: Run, log=print) -> Path:
    """Train one run into its folder, resuming its checkpoint; returns the folder."""
    return train_runs(cfg, [run], log)[0]


def train_runs(cfg: dict, runs: list[Run], log=print) -> list[Path]:
    """Train runs in one process: one run as a plain module, several as one pack (rethinking.engine.pack)."""
    settings = [run_settings(cfg, r) for r in runs]
    if len(runs) > 1:
        check_packable(cfg, runs, settings)
    t = training_for(cfg, runs[0])
    # one trainer per run: lock every run folder first (RunBusyError if another process trains one of them)
    lock = lock_runs({r.id: run_dir(cfg, r) for r in runs})
    slot = None
    try:
        device = pick_device(t["device"])
        if device.type == "cuda":  # which GPU: a slot no concurrent job holds (released when we return or die)
            slot = claim(torch.cuda.device_count(), t["jobs_per_gpu"])
            device = torch.device("cuda", slot.device)
            torch.cuda.set_device(device)
            packed = f" (+{len(runs) - 1} packed)" if len(runs) > 1 else ""
            log(f"{runs[0].id}{packed}: GPU slot {slot.slot} of GPU {slot.physical}")
        else:
            torch.set_num_threads(t["threads"])
        return _train(cfg, runs, settings, t, device, log)
    finally:
        if slot is not None:
            slot.release()
        lock.release()


def _train(cfg: dict, runs: list[Run], settings: list[dict], t: dict, device: torch.device, log) -> list[Path]:
    crop = cfg["preprocess"]["crop"]
    s0 = settings[0]   # a pack shares every setting but run, corruption and seed
    augment = augmentations(runs[0].regs)

    # --- data, resident on the device; runs of one corruption share it. Inputs that need no random
    # augmentation are prepared once (crop + standardization), so a step only gathers its batch.
    # Label corruptions share their base's images: one copy on the device serves them all (and lets a
    # pack gather every member's batch in one index).
    loaded, images, members, models = {}, {}, [], []
    for run, s in zip(runs, settings):
        if run.corruption not in loaded:
            meta, arr = load_corrupted(cfg, run.corruption)
            key = run.corruption if run.corruption.touches_pixels else "base"
            if key not in images:
                x_train = torch.from_numpy(arr["x_train"]).to(device)
                images[key] = dict(x_uint8=x_train, x_train=prepare_all(x_train, crop),
                                   x_test=prepare_all(torch.from_numpy(arr["x_test"]).to(device), crop))
            loaded[run.corruption] = dict(
                meta=meta, **images[key],
                y_train=torch.from_numpy(arr["y_train"]).to(device),
                y_true=torch.from_numpy(arr["y_train_true"]).to(device),
                y_test=torch.from_numpy(arr["y_test"]).to(device))
        d = loaded[run.corruption]
        c, h, w = d["x_uint8"].shape[1:]
        in_shape = (c, crop or h, crop or w)
        n_classes = len(d["meta"]["classes"])
        if is_user_code(run.model) or parse(run.model).kind == "torchvision":   # 2 x K logits, or one line
            check_model(run.model, in_shape, n_classes, s["dropout"], base=cfg.get("_params_dir"))
        torch.manual_seed(run.seed)   # the model's initialization (and, for a single run, dropout)
        models.append(build_model(run.model, in_shape, num_classes=n_classes, dropout=s["dropout"],
                                  base=cfg.get("_params_dir")).to(device))
        members.append(_Member(
            run=run, settings=s, out=run_dir(cfg, run), fingerprint=fingerprint(s, ENGINE_SOURCES, device.type),
            x_fit=d["x_uint8"] if augment else d["x_train"], x_train=d["x_train"], y_train=d["y_train"],
            x_test=d["x_test"], y_test=d["y_test"], gen=torch.Generator(device=device).manual_seed(run.seed),
            loss_sum=torch.zeros((), device=device), y_true=d["y_true"]))
    n_train = len(members[0].y_train)
    n_params = count_parameters(models[0])

    # --- model and optimizer: the plain module and torch's SGD, or the runs stacked into one model
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = device.type == "cuda" and traits(models[0])["conv"] and len(runs) == 1
    autocast = autocast_for(device)
    model = opt = stacked = None
    if len(runs) == 1:
        model = models[0].to(memory_format=torch.channels_last) if channels_last else models[0]
        opt = sgd(model.parameters(), s0["lr"], s0["momentum"], s0["weight_decay"])
    else:
        stacked = Stacked(models, s0["momentum"], s0["weight_decay"])
    del models

    # --- resume: each run from its own checkpoint (single and packed runs write the same format)
    for k, m in enumerate(members):
        ckpt_path = m.out / CHECKPOINT
        remove_stale_temps(ckpt_path)   # a checkpoint write cut short by a kill (this run has one trainer: the lock)
        ck = load_checkpoint(ckpt_path, m.fingerprint, CHECKPOINT_KEYS, log, name=m.run.id)
        if ck is None:   # none, made with other settings or code, or damaged (moved aside): start over
            continue
        if stacked is None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            set_rng_state(ck, device)
        else:
            stacked.load_member(k, ck["model"], ck["optimizer"])
        m.gen.set_state(ck["generator"])
        m.epoch, m.step, m.start = ck["epoch"], ck["step"], -ck["elapsed"]
        m.epochs_rows, m.steps_rows = ck["epochs"], ck["steps"]
        m.status, m.first_fit, m.diverged_step = ck["status"], ck["first_fit"], ck.get("diverged_step")
        m.loss_sum.fill_(float(ck["loss_sum"]))
        log(f"{m.run.id}: resuming after epoch {m.epoch} (step {m.step})")

    bs, log_every = s0["batch_size"], s0["log_every"]
    steps_per_epoch = math.ceil(n_train / bs)
    bar = _progress(s0["max_epochs"], members[0].epoch, members[0].run.id) if len(runs) == 1 else None
    now = time.perf_counter()
    for m in members:
        m.start += now
    active = list(range(len(members)))   # members still training (their slots in `stacked`)

    while True:
        for k in [k for k in active if not members[k].running]:   # finished, also when resumed finished
            _finish(members[k], n_params, steps_per_epoch, device, log)
        still = [k for k in active if members[k].running]
        if not still:
            break
        if stacked is not None and len(still) < len(active):
            stacked.keep([i for i, k in enumerate(active) if members[k].running])
        active = still
        group = [members[k] for k in active]
        lrs = [learning_rate(m.epoch, s0["lr"], s0["lr_decay"], s0["lr_decay_images"], n_train) for m in group]
        perms = [torch.randperm(n_train, device=device, generator=m.gen) for m in group]
        rows_before = [len(m.steps_rows) for m in group]
        if stacked is None:
            m = group[0]
            for g in opt.param_groups:
                g["lr"] = lrs[0]
            model.train()
            m.step, correct, seen = run_epoch(
                model, opt, m.x_fit, m.y_train, perms[0], batch_size=bs, crop=crop, augment=augment,
                generator=m.gen, autocast=autocast, channels_last=channels_last, loss_sum=m.loss_sum,
                step=m.step, log_every=log_every,
                on_log=lambda s, mean, m=m: m.steps_rows.append({"step": s, "epoch": m.epoch + 1,
                                                                 "train_loss": mean}))
            corrects = [int(correct)]
        else:
            corrects, seen = run_epoch_packed(stacked, group, perms, lrs, batch_size=bs, crop=crop,
                                              augment=augment, autocast=autocast, log_every=log_every)

        for i, m in enumerate(group):
            m.epoch += 1
            net = model if stacked is None else stacked.member(i)
            train_loss, train_acc, train_correct, split = evaluate(net, m.x_train, m.y_train, crop,
                                                                   t["eval_batch_size"], y_true=m.y_true)
            test_loss, test_acc, _ = evaluate(net, m.x_test, m.y_test, crop, t["eval_batch_size"])
            m.epochs_rows.append({
                "epoch": m.epoch, "step": m.step, "lr": lrs[i], "batch_train_acc": corrects[i] / seen,
                "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                "wall_time": time.perf_counter() - m.start, **split,
            })
            line = (f"{m.run.id}: epoch {m.epoch} step {m.step} lr {lrs[i]:.4g} train loss {train_loss:.4f} "
                    f"acc {100 * train_acc:.2f}% test acc {100 * test_acc:.2f}%")
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"train {100 * train_acc:.1f}% test {100 * test_acc:.1f}%")
            else:
                log(line)
            bad = [r["step"] for r in m.steps_rows[rows_before[i]:] if not math.isfinite(r["train_loss"])]
            if bad or not math.isfinite(train_loss):
                m.status, m.diverged_step = "diverged", (bad[0] if bad else m.step)
                log(f"{m.run.id}: the loss is not finite (first seen at step {m.diverged_step}); stopping as diverged")
            elif fitted(train_correct, n_train):
                m.first_fit, m.status = m.step, "fitted"
            opt_state = opt.state_dict() if stacked is None else stacked.optimizer_state(i, net, lrs[i])
            _checkpoint(m, net, opt_state, device)
    if bar is not None:
        bar.close()
    return [m.out for m in members]


def run_epoch_packed(stacked, group, perms, lrs, *, batch_size, crop, augment, autocast, log_every):
    """One epoch of a pack: every member steps on its own batch, all in one stacked step.

    Members read their own data in their own permutation order: one gather of a K x B index serves all
    members (from the one tensor they share, or from their distinct tensors stacked once); with random
    augmentation each member's batch is drawn from its own generator. Labels are one gather too. The
    step's losses and correct counts stay on the device; the host reads the epoch's losses once, at
    its end, and each member logs its mean loss every `log_every` of its own steps, as a single run.
    Returns (correct predictions per member, images seen per member).
    """
    device = perms[0].device
    k = len(group)
    lr = torch.tensor(lrs, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.int64)
    perm = torch.stack(perms)                                   # K x N
    y = torch.stack([m.y_train for m in group])                 # K x N
    xs = list({id(m.x_fit): m.x_fit for m in group}.values())   # the members' distinct input tensors
    if not augment:
        x = xs[0] if len(xs) == 1 else torch.stack(xs)
        which = None if len(xs) == 1 else torch.tensor([next(u for u, t in enumerate(xs) if t is m.x_fit)
                                                        for m in group], device=device)[:, None]
    n = perm.shape[1]
    losses = torch.empty(math.ceil(n / batch_size), k, device=device)
    for j, i in enumerate(range(0, n, batch_size)):
        idx = perm[:, i:i + batch_size]
        if augment:
            xb = torch.stack([prepare_batch(m.x_fit[r], crop, augment, m.gen) for m, r in zip(group, idx)])
        else:
            xb = x[idx] if which is None else x[which, idx]
        step_losses, corr = stacked.step(xb, torch.gather(y, 1, idx), lr, autocast)
        losses[j] = step_losses
        correct += corr
    # the loss log: each member's running sum since its last row, in float32 as a single run keeps it
    host = losses.cpu()
    for kk, m in enumerate(group):
        acc = m.loss_sum.cpu().clone()
        for value in host[:, kk]:
            m.step += 1
            acc += value
            if m.step % log_every == 0:
                m.steps_rows.append({"step": m.step, "epoch": m.epoch + 1, "train_loss": float(acc) / log_every})
                acc.zero_()
        m.loss_sum = acc.to(device)
    return correct.tolist(), n


def _finish(m: _Member, n_params: int, steps_per_epoch: int, device: torch.device, log) -> None:
    """Write a finished run's tables and, last, its summary. `cpu_time`, `max_rss_mb` and `process_wall_time`
    are the training process's since it started (rethinking.analysis.jobs.process_usage): for a pack, the one process of all its
    members, up to this member's end; after a resume, the resuming process's only (`wall_time` adds up)."""
    from .run import process_usage
    elapsed = time.perf_counter() - m.start
    write_epochs(m.out / "epochs.csv", m.epochs_rows)
    write_steps(m.out / "steps.csv", m.steps_rows)
    last = m.epochs_rows[-1]
    c, h, w = m.x_train.shape[1:]
    summary = {
        **m.settings,
        "dataset": m.run.dataset, "level": m.run.corruption.level, "corruption_kind": m.run.corruption.kind,
        "status": m.status, "epochs": m.epoch, "steps": m.step, "steps_per_epoch": steps_per_epoch,
        "step_first_fit": m.first_fit, "diverged_step": m.diverged_step, "n_train": len(m.y_train),
        "n_corrupted": None if m.y_true is None else int((m.y_train != m.y_true).sum()),
        "n_test": len(m.y_test), "train_acc": 100 * last["train_acc"], "test_acc": 100 * last["test_acc"],
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        "parameters": n_params, "input_shape": [c, h, w], "wall_time": elapsed, **process_usage(),
        "device": device_name(device), "deterministic": device.type == "cpu", "versions": versions(),
    }
    write_json(m.out / "summary.json", summary)
    log(f"{m.run.id}: {m.status} after {m.epoch} epochs, {m.step} steps; train {summary['train_acc']:.2f}% "
        f"test {summary['test_acc']:.2f}% ({elapsed:.1f} s on {summary['device']})")


def write_epochs(path, rows) -> None:
    """epochs.csv from a run's per-epoch rows (both engines). The SPLIT_COLUMNS are always there, blank in
    the rows of a checkpoint written before the engines recorded them (a resumed run keeps its earlier rows)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_rows(path, rows, columns + [c for c in SPLIT_COLUMNS if c not in columns])


def write_steps(path, rows) -> None:
    """steps.csv: the logged training loss every log_every steps (both engines)."""
    write_rows(path, rows, ["step", "epoch", "train_loss"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def versions() -> dict:
    return {"rethinking": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def rng_state(device: torch.device) -> dict:
    """This process's torch random state (CPU, and the device's on CUDA), as a checkpoint keeps it."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"])


def _checkpoint(m: _Member, model, optimizer_state: dict, device) -> None:
    save_torch(m.out / CHECKPOINT, {
        "fingerprint": m.fingerprint, "model": model.state_dict(), "optimizer": optimizer_state,
        "generator": m.gen.get_state(), **rng_state(device),
        "epoch": m.epoch, "step": m.step, "elapsed": time.perf_counter() - m.start, "epochs": m.epochs_rows,
        "steps": m.steps_rows, "status": m.status, "first_fit": m.first_fit, "diverged_step": m.diverged_step,
        "loss_sum": float(m.loss_sum),
    })
