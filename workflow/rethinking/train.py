"""Stage `train`: corrupted artifact + (model, regularizers, seed) -> run folder.

Read top to bottom: load the data onto the device once, build the model and
SGD, then loop over epochs. Each epoch draws a device-side permutation, runs
the steps (loss and accuracy accumulated on the device and read every
`log_every` steps, so there is no host synchronization per step), evaluates
the whole training set in eval mode, and checkpoints atomically. The run stops
at 100% training accuracy (recording the step of first fit), at the epoch
limit, or when the loss stops being finite (status `diverged`).

Run folder: epochs.csv (per epoch), steps.csv (training loss every
`log_every` steps, Figure 1a), summary.json (written last: its presence
means the run is finished), checkpoint.pt (the last epoch; a rerun of a
killed job resumes from it).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .config import Run, run_dir, training_for
from .corrupt import load_corrupted
from .io import atomic_path, write_csv, write_json
from .models import build_model, count_parameters, is_conv
from .preprocess import augmentations, prepare_batch
from .slots import claim

CHECKPOINT = "checkpoint.pt"
ENGINE_SOURCES = ("train.py", "models.py", "preprocess.py")  # a change to any of these invalidates checkpoints


def learning_rate(epoch: int, base_lr: float, decay: float, decay_images: int | None, n_train: int) -> float:
    """lr of an epoch: base_lr * decay ** (epochs done), or per `decay_images` images seen."""
    exponent = epoch if decay_images is None else epoch * n_train / decay_images
    return base_lr * decay ** exponent


def fitted(correct: int, total: int) -> bool:
    """The stop rule: every training example classified as its (possibly corrupted) label."""
    return total > 0 and correct == total


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def run_settings(cfg: dict, run: Run) -> dict:
    """Everything that determines a run's result; stored in the checkpoint and the summary."""
    t = training_for(cfg, run)
    return {
        "run": run.id, "model": run.model, "corruption": run.corruption.id, "regularizers": run.regularizers,
        "variant": run.variant,
        "seed": run.seed, "crop": cfg["preprocess"]["crop"], "batch_size": t["batch_size"],
        "max_epochs": t["max_epochs"], "momentum": t["momentum"], "lr": t["lr"][run.model],
        "lr_decay": t["lr_decay"], "lr_decay_images": t["lr_decay_images"],
        "weight_decay": t["weight_decay"] if "wd" in run.regs else 0.0,
        "dropout": t["dropout"] if "dropout" in run.regs else 0.0,
        "log_every": t["log_every"],
    }


def run_epoch(model, opt, x_train, y_train, perm, *, batch_size, crop, augment, generator, autocast,
              channels_last, loss_sum, step, log_every, on_log=None):
    """One epoch of SGD steps over `perm` (a device-side permutation): the engine's hot loop.

    Batches are gathered from the uint8 data on the device and prepared there; the loss and
    the number of correct predictions accumulate on the device. The host reads the loss only
    every `log_every` steps (on_log(step, mean loss)). Returns (step, correct, images seen).
    """
    correct = torch.zeros((), device=y_train.device, dtype=torch.int64)
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        xb = prepare_batch(x_train[idx], crop, augment, generator)
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
def evaluate(model, x_uint8, y, crop, batch_size, autocast) -> tuple[float, float, int]:
    """Mean loss, accuracy and number correct over a whole split, in eval mode."""
    model.eval()
    loss = torch.zeros((), device=y.device, dtype=torch.float64)
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    for i in range(0, len(y), batch_size):
        xb = prepare_batch(x_uint8[i:i + batch_size], crop)
        with autocast():
            logits = model(xb)
        loss += F.cross_entropy(logits.float(), y[i:i + batch_size], reduction="sum").double()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum()
    n = len(y)
    c = int(correct)
    return float(loss) / n, c / n, c


def _progress(total: int, initial: int, desc: str):
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="epoch", leave=False)
    return None


def train(cfg: dict, run: Run, log=print) -> Path:
    t = training_for(cfg, run)
    settings = run_settings(cfg, run)
    device = pick_device(t["device"])
    slot = None
    if device.type == "cuda":  # which GPU: a slot no concurrent job holds (released when we return or die)
        slot = claim(torch.cuda.device_count(), t["jobs_per_gpu"])
        device = torch.device("cuda", slot.device)
        torch.cuda.set_device(device)
        log(f"{run.id}: GPU slot {slot.slot} of GPU {slot.physical}")
    else:
        torch.set_num_threads(t["threads"])
    try:
        return _train(cfg, run, t, settings, device, log)
    finally:
        if slot is not None:
            slot.release()


def _train(cfg: dict, run: Run, t: dict, settings: dict, device: torch.device, log) -> Path:
    out = run_dir(cfg, run)
    torch.manual_seed(run.seed)

    # --- data, resident on the device as uint8
    meta, arr = load_corrupted(cfg, run.corruption)
    x_train = torch.from_numpy(arr["x_train"]).to(device)
    y_train = torch.from_numpy(arr["y_train"]).to(device)
    x_test = torch.from_numpy(arr["x_test"]).to(device)
    y_test = torch.from_numpy(arr["y_test"]).to(device)
    n_train, crop = len(y_train), cfg["preprocess"]["crop"]
    c, h, w = x_train.shape[1:]
    in_shape = (c, crop or h, crop or w)
    augment = augmentations(run.regs)

    # --- model and optimizer
    model = build_model(run.model, in_shape, num_classes=len(meta["classes"]), dropout=settings["dropout"]).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if is_conv(run.model):
            model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                          weight_decay=settings["weight_decay"])
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    gen = torch.Generator(device=device).manual_seed(run.seed)

    # --- resume
    epoch, step, elapsed = 0, 0, 0.0
    epochs_rows, steps_rows, first_fit, status, diverged_step = [], [], None, "max_epochs", None
    resumed = False
    ckpt_path = out / CHECKPOINT
    fingerprint = _fingerprint(settings)
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["fingerprint"] == fingerprint:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            gen.set_state(ck["generator"])
            torch.set_rng_state(ck["torch_rng"])
            if device.type == "cuda" and ck.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(ck["cuda_rng"])
            epoch, step, elapsed = ck["epoch"], ck["step"], ck["elapsed"]
            epochs_rows, steps_rows = ck["epochs"], ck["steps"]
            status, first_fit, diverged_step = ck["status"], ck["first_fit"], ck.get("diverged_step")
            resumed = True
            log(f"{run.id}: resuming after epoch {epoch} (step {step})")
        else:
            log(f"{run.id}: checkpoint was made with other settings or code; starting over")

    steps_per_epoch = math.ceil(n_train / settings["batch_size"])
    channels_last = device.type == "cuda" and is_conv(run.model)
    bs, log_every = settings["batch_size"], settings["log_every"]
    bar = _progress(settings["max_epochs"], epoch, run.id)
    start = time.perf_counter() - elapsed
    # training loss summed since the last steps.csv row, kept on the device (restored on resume)
    loss_sum = torch.tensor(float(ck["loss_sum"]) if resumed else 0.0, device=device)

    while epoch < settings["max_epochs"] and status == "max_epochs":
        lr = learning_rate(epoch, settings["lr"], settings["lr_decay"], settings["lr_decay_images"], n_train)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        perm = torch.randperm(n_train, device=device, generator=gen)
        rows_before = len(steps_rows)
        step, correct_sum, seen = run_epoch(
            model, opt, x_train, y_train, perm, batch_size=bs, crop=crop, augment=augment, generator=gen,
            autocast=autocast, channels_last=channels_last, loss_sum=loss_sum, step=step, log_every=log_every,
            on_log=lambda s, mean, e=epoch + 1: steps_rows.append({"step": s, "epoch": e, "train_loss": mean}))
        epoch += 1

        train_loss, train_acc, train_correct = evaluate(model, x_train, y_train, crop, t["eval_batch_size"], autocast)
        test_loss, test_acc, _ = evaluate(model, x_test, y_test, crop, t["eval_batch_size"], autocast)
        epochs_rows.append({
            "epoch": epoch, "step": step, "lr": lr, "batch_train_acc": int(correct_sum) / seen,
            "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "wall_time": time.perf_counter() - start,
        })
        line = (f"{run.id}: epoch {epoch} step {step} lr {lr:.4g} train loss {train_loss:.4f} "
                f"acc {100 * train_acc:.2f}% test acc {100 * test_acc:.2f}%")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"train {100 * train_acc:.1f}% test {100 * test_acc:.1f}%")
        else:
            log(line)

        bad = [r["step"] for r in steps_rows[rows_before:] if not math.isfinite(r["train_loss"])]
        if bad or not math.isfinite(train_loss):
            status, diverged_step = "diverged", (bad[0] if bad else step)
            log(f"{run.id}: the loss is not finite (first seen at step {diverged_step}); stopping as diverged")
        elif fitted(train_correct, n_train):
            first_fit, status = step, "fitted"
        _checkpoint(ckpt_path, model, opt, gen, fingerprint, epoch, step, time.perf_counter() - start,
                    epochs_rows, steps_rows, status, first_fit, diverged_step, float(loss_sum), device)
    if bar is not None:
        bar.close()

    elapsed = time.perf_counter() - start
    write_csv(out / "epochs.csv", _frame(epochs_rows))
    write_csv(out / "steps.csv", _frame(steps_rows, columns=["step", "epoch", "train_loss"]))
    last = epochs_rows[-1]
    summary = {
        **settings,
        "dataset": run.dataset, "level": run.corruption.level, "corruption_kind": run.corruption.kind,
        "status": status, "epochs": epoch, "steps": step, "steps_per_epoch": steps_per_epoch,
        "step_first_fit": first_fit, "diverged_step": diverged_step, "n_train": n_train, "n_test": len(y_test),
        "train_acc": 100 * last["train_acc"], "test_acc": 100 * last["test_acc"],
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        "parameters": count_parameters(model), "input_shape": list(in_shape), "wall_time": elapsed,
        "device": _device_name(device), "deterministic": device.type == "cpu",
        "versions": {"rethinking": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    write_json(out / "summary.json", summary)
    log(f"{run.id}: {status} after {epoch} epochs, {step} steps; train {summary['train_acc']:.2f}% "
        f"test {summary['test_acc']:.2f}% ({elapsed:.1f} s on {summary['device']})")
    return out


def _fingerprint(settings: dict) -> str:
    """A checkpoint is resumed only by the same settings and the same engine code."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in ENGINE_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def _frame(rows, columns=None):
    import pandas as pd
    return pd.DataFrame(rows, columns=columns) if columns else pd.DataFrame(rows)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def _checkpoint(path, model, opt, gen, fingerprint, epoch, step, elapsed, epochs_rows, steps_rows, status, first_fit,
                diverged_step, loss_sum, device):
    state = {
        "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "epoch": epoch, "step": step, "elapsed": elapsed, "epochs": epochs_rows, "steps": steps_rows,
        "status": status, "first_fit": first_fit, "diverged_step": diverged_step, "loss_sum": loss_sum,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
