"""Stage `train` (in-memory datasets): corrupted artifacts + (model, regularizers, seed) -> run folders.

One loop for one run and for a pack of runs (rethinking.engine.pack): a single run is a pack of one
(`Single`), several runs that share a model and their training settings are one stacked model
(`Stacked`), and the loop below does not know which it drives. Read top to bottom:

1. `train_runs`: lock the run folders, claim the device (a GPU slot on CUDA), and train.
2. `_members`: each run's data onto the device once (runs of one label-corrupted dataset share the
   images), its model built from its seed, its permutation generator. Inputs that need no random
   augmentation are prepared once (center crop, per-image standardization, as floats); augmented runs
   prepare each batch from uint8.
3. `_resume`: each run from its own checkpoint (single and packed runs write the same format).
4. `_epochs`: per epoch, each run's device-side permutation and learning rate, the steps of every run
   in one stacked step (`run_epoch`: losses and correct counts stay on the device; the host reads them
   once, at the epoch's end, no sync per step; bf16 autocast on GPUs that compute bf16 natively), then
   per run: its steps.csv rows, the evaluation of its whole training and test sets (eval mode, fp32,
   every registered metric: rethinking.engine.metrics), the end of the epoch (rethinking.engine.run:
   the epochs.csv row, `diverged` on a non-finite loss, `fitted` at 100% training accuracy) and its
   checkpoint. A finished run leaves the pack and writes its summary.

Run folder: epochs.csv, steps.csv, summary.json (written last: its presence means the run is
finished), checkpoint.pt (the last epoch; a rerun of a killed job resumes from it; one that cannot
be read is moved aside to checkpoint.pt.corrupt and the run starts over), and .train.lock (held while
a process trains the run: one trainer per run, rethinking.engine.slots).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..data.corrupt import load_corrupted
from ..data.preprocess import augmentations, prepare_all, prepare_batch
from ..models import build_model, check_model, count_parameters, is_user_code, parse, traits
from ..plan import Run, base_artifact, run_dir, training_for
from ..plan.packs import check_packable
from ..plan.settings import ENGINE_SOURCES, fingerprint, run_settings
from .examples import ExampleRecord, base_origins, finished
from .metrics import evaluate
from .pack import Single, Stacked
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
    log_losses,
    rng_state,
    save_checkpoint,
    write_summary,
)


@dataclass
class Member:
    """One run inside a training process: its settings, its data on the device, its generator, its progress."""

    run: Run
    settings: dict
    out: Path
    fingerprint: str
    x_fit: torch.Tensor  # what the steps read: prepared floats, or uint8 when the run augments
    x_train: torch.Tensor  # prepared floats (center crop, standardized): the evaluation of the training set
    y_train: torch.Tensor  # the labels it trains on (possibly corrupted)
    y_true: torch.Tensor  # the base artifact's labels: which examples the corruption changed
    x_test: torch.Tensor
    y_test: torch.Tensor
    gen: torch.Generator  # permutations and random augmentation
    record: ExampleRecord  # the per-example record (rethinking.engine.examples)
    about: dict  # what its examples.npz says besides the record: origins, classes, source
    progress: Progress = field(default_factory=Progress)
    clock: Clock = field(default_factory=Clock)

    @property
    def running(self) -> bool:
        return self.progress.running(self.settings["max_epochs"], self.settings.get("stop_at_fit", True))


def train(cfg: dict, run: Run, log=print) -> Path:
    """Train one run into its folder, resuming its checkpoint; returns the folder."""
    return train_runs(cfg, [run], log)[0]


def train_runs(cfg: dict, runs: list[Run], log=print) -> list[Path]:
    """Train runs in one process, as one pack (one run: a pack of one); returns their folders."""
    settings = [run_settings(cfg, r) for r in runs]
    if len(runs) > 1:
        check_packable(cfg, runs, settings)
    t = training_for(cfg, runs[0])
    what = runs[0].id + (f" (+{len(runs) - 1} packed)" if len(runs) > 1 else "")
    # one trainer per run: every run folder is locked first (RunBusyError if another process trains one)
    with claimed_device(
        t["device"],
        jobs_per_gpu=t["jobs_per_gpu"],
        threads=t["threads"],
        runs={r.id: run_dir(cfg, r) for r in runs},
        log=log,
        what=what,
    ) as device:
        members, models = _members(cfg, runs, settings, device)
        facts = _facts(members[0], models[0], device)
        packer = _packer(models, settings[0], device)
        del models
        _resume(packer, members, log)
        _epochs(packer, members, facts, cfg["preprocess"]["crop"], t["eval_batch_size"], device, log)
    return [m.out for m in members]


def _members(cfg: dict, runs: list[Run], settings: list[dict], device) -> tuple[list[Member], list]:
    """Each run's data on the device and its freshly built model. Label corruptions share their base's
    images: one copy on the device serves them all (and lets a pack gather every member's batch at once)."""
    crop = cfg["preprocess"]["crop"]
    augment = augmentations(runs[0].regs)
    loaded, images, members, models = {}, {}, [], []
    origins = source = None
    for run, s in zip(runs, settings):
        if run.corruption not in loaded:
            meta, arr = load_corrupted(cfg, run.corruption, run.dataset)
            key = run.corruption if run.corruption.touches_pixels else "base"
            if key not in images:
                x_train = torch.from_numpy(arr["x_train"]).to(device)
                images[key] = dict(
                    x_uint8=x_train,
                    x_train=prepare_all(x_train, crop),
                    x_test=prepare_all(torch.from_numpy(arr["x_test"]).to(device), crop),
                )
            loaded[run.corruption] = dict(
                meta=meta,
                **images[key],
                **{
                    k: torch.from_numpy(arr[name]).to(device)
                    for k, name in (("y_train", "y_train"), ("y_true", "y_train_true"), ("y_test", "y_test"))
                },
            )
        d = loaded[run.corruption]
        n = len(d["y_train"])
        if origins is None:
            origins, source = base_origins(base_artifact(cfg, run.dataset), n)
        c, h, w = d["x_uint8"].shape[1:]
        in_shape, n_classes = (c, crop or h, crop or w), len(d["meta"]["classes"])
        if is_user_code(run.model) or parse(run.model).kind == "torchvision":  # 2 x K logits, or one line
            check_model(run.model, in_shape, n_classes, s["dropout"], base=cfg.get("_params_dir"))
        torch.manual_seed(run.seed)  # the model's initialization (and, for a single run, dropout)
        models.append(
            build_model(
                run.model, in_shape, num_classes=n_classes, dropout=s["dropout"], base=cfg.get("_params_dir")
            ).to(device)
        )
        members.append(
            Member(
                run=run,
                settings=s,
                out=run_dir(cfg, run),
                fingerprint=fingerprint(s, ENGINE_SOURCES, device.type),
                x_fit=d["x_uint8"] if augment else d["x_train"],
                x_train=d["x_train"],
                y_train=d["y_train"],
                y_true=d["y_true"],
                x_test=d["x_test"],
                y_test=d["y_test"],
                gen=torch.Generator(device=device).manual_seed(run.seed),
                record=ExampleRecord(n, s["max_epochs"], device),
                about=dict(origin=origins, classes=d["meta"]["classes"], source=source),
            )
        )
    return members, models


def _facts(m: Member, model, device) -> RunFacts:
    """What every member's summary says besides its settings and progress (a pack's runs share a model)."""
    n = len(m.y_train)
    return RunFacts(
        parameters=count_parameters(model),
        steps_per_epoch=math.ceil(n / m.settings["batch_size"]),
        n_train=n,
        n_train_eval=n,
        n_corrupted=None,
        n_test=len(m.y_test),
        input_shape=list(m.x_train.shape[1:]),
        device=device_name(device),
        deterministic=device.type == "cpu",
    )


def _packer(models: list, s: dict, device):
    """The runs' models as one trainable pack: Single for one run (a plain module, channels_last for conv
    nets on CUDA), Stacked for several."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if len(models) == 1:
        channels_last = device.type == "cuda" and traits(models[0])["conv"]
        chosen = {k: s[k] for k in ("optimizer", "adam") if k in s}  # none for SGD (the default)
        return Single(models[0], s["momentum"], s["weight_decay"], s["lr"], channels_last, chosen)
    if s.get("optimizer", "sgd") != "sgd":  # plan.packs.check_packable refuses these first
        raise ValueError(f"a pack trains with SGD only, not {s['optimizer']!r}")
    return Stacked(models, s["momentum"], s["weight_decay"])


def _resume(packer, members: list[Member], log) -> None:
    """Each member from its own checkpoint, if it has a usable one made by the same settings and code."""
    for k, m in enumerate(members):
        ck = load_checkpoint(m.out, m.fingerprint, log, name=m.run.id)
        if ck is None:  # none, made with other settings or code, or damaged (moved aside): start over
            continue
        packer.load_member(k, ck["model"], ck["optimizer"], ck["processes"][0])
        m.gen.set_state(ck["generator"])
        m.record.load(ck["examples"])
        m.progress = Progress.load(ck["progress"])
        log(f"{m.run.id}: resuming after epoch {m.progress.epoch} (step {m.progress.step})")


def _epochs(packer, members: list[Member], facts: RunFacts, crop, eval_batch_size: int, device, log) -> None:
    """Train every member until it fits, reaches its epoch limit or diverges; a finished one leaves the pack."""
    s0 = members[0].settings  # a pack shares every setting but run, corruption and seed
    augment = augmentations(members[0].run.regs)
    autocast = autocast_for(device)
    bar = _progress_bar(s0["max_epochs"], members[0].progress.epoch, members[0].run.id, len(members))
    for m in members:
        m.clock = Clock(m.progress.elapsed)
    active = list(range(len(members)))  # members still training (their slots in the pack)
    while True:
        for k in [k for k in active if not members[k].running]:  # finished, also when resumed finished
            _finish(members[k], facts, log)
        still = [k for k in active if members[k].running]
        if not still:
            break
        if len(still) < len(active):
            packer.keep([i for i, k in enumerate(active) if members[k].running])
        active = still
        group = [members[k] for k in active]
        lrs = [
            learning_rate(m.progress.epoch, s0["lr"], s0["lr_decay"], s0["lr_decay_images"], len(m.y_train))
            for m in group
        ]
        perms = [torch.randperm(len(m.y_train), device=device, generator=m.gen) for m in group]
        packer.set_lrs(lrs)
        t0 = time.perf_counter()
        corrects, seen, losses = run_epoch(
            packer, group, perms, batch_size=s0["batch_size"], crop=crop, augment=augment, autocast=autocast
        )
        took = time.perf_counter() - t0
        for i, m in enumerate(group):
            m.progress.train_time += took
            m.progress.images += seen
            log_losses(m.progress, losses[:, i], s0["log_every"])
            _end_epoch(m, packer, i, lrs[i], corrects[i] / seen, eval_batch_size, device, log, bar)
    if bar is not None:
        bar.close()


def run_epoch(packer, group: list, perms: list, *, batch_size: int, crop, augment, autocast):
    """One epoch of every member of a pack: each steps on its own batch, all in one stacked step. The
    engine's hot loop.

    Members read their own data in their own permutation order: one gather of a K x B index serves all
    members (from the one tensor they share, or from their distinct tensors stacked once); uint8 images
    (random augmentation) are prepared per batch, each member's with its own generator. Labels are one gather
    too. The losses and correct counts stay on the device; the host reads them once, at the end.
    Returns (correct predictions per member, images seen per member, losses: steps x K on the host)."""
    device = perms[0].device
    k = len(group)
    correct = torch.zeros(k, device=device, dtype=torch.int64)
    perm = torch.stack(perms)  # K x N
    y = torch.stack([m.y_train for m in group])  # K x N
    xs = list({id(m.x_fit): m.x_fit for m in group}.values())  # the members' distinct input tensors
    per_batch = not xs[0].is_floating_point()  # uint8 images (random augmentation): prepared per batch
    if not per_batch:
        x = xs[0] if len(xs) == 1 else torch.stack(xs)
        which = (
            None
            if len(xs) == 1
            else torch.tensor([next(u for u, t in enumerate(xs) if t is m.x_fit) for m in group], device=device)[
                :, None
            ]
        )
    n = perm.shape[1]
    losses = torch.empty(math.ceil(n / batch_size), k, device=device)
    for j, i in enumerate(range(0, n, batch_size)):
        idx = perm[:, i : i + batch_size]
        if per_batch:
            xb = torch.stack([prepare_batch(m.x_fit[r], crop, augment, m.gen) for m, r in zip(group, idx)])
        else:
            xb = x[idx] if which is None else x[which, idx]
        losses[j], corr = packer.step(xb, torch.gather(y, 1, idx), autocast)
        correct += corr
    return correct.tolist(), n, losses.cpu()


def _batches(x, y, y_true, batch_size: int):
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size], None if y_true is None else y_true[i : i + batch_size]


def _end_epoch(m: Member, packer, i: int, lr: float, batch_acc: float, eval_batch_size: int, device, log, bar) -> None:
    """Member i's epoch end: evaluate its training set (with every registered metric) and test set, close
    the epoch (row, divergence, fit) and checkpoint."""
    p = m.progress
    p.epoch += 1
    net = packer.member(i)
    m.record.begin(p.epoch)
    train = evaluate(net, _batches(m.x_train, m.y_train, m.y_true, eval_batch_size), metrics=True, record=m.record)
    m.record.end()
    test = evaluate(net, _batches(m.x_test, m.y_test, None, eval_batch_size))
    metrics = {k: v for k, v in train.items() if k not in ("loss", "acc", "correct", "n")}
    row = {
        "epoch": p.epoch,
        "step": p.step,
        "lr": lr,
        "batch_train_acc": batch_acc,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "wall_time": m.clock(),
        **metrics,
    }
    if bar is not None and i == 0:
        bar.update(1)
        bar.set_postfix_str(f"train {100 * train['acc']:.1f}% test {100 * test['acc']:.1f}%")
    elif bar is None:
        log(
            f"{m.run.id}: epoch {p.epoch} step {p.step} lr {lr:.4g} train loss {train['loss']:.4f} "
            f"acc {100 * train['acc']:.2f}% test acc {100 * test['acc']:.2f}%"
        )
    close_epoch(p, row, train["correct"], len(m.y_train), name=m.run.id, log=log)
    p.elapsed = m.clock()
    save_checkpoint(
        m.out,
        m.fingerprint,
        net.state_dict(),
        packer.optimizer_state(i, net, lr),
        p,
        [rng_state(device)],
        generator=m.gen.get_state(),
        examples=m.record.state(),
    )


def _finish(m: Member, facts: RunFacts, log) -> None:
    """Write a finished member's epochs.csv, steps.csv and summary.json."""
    m.progress.elapsed = m.clock()
    n_corrupted = int((m.y_train != m.y_true).sum())
    n = len(m.y_train)
    examples = finished(
        m.record,
        m.run.id,
        m.progress.epoch,
        index=np.arange(n),
        origin=m.about["origin"],
        label=m.y_train.cpu().numpy(),
        label_true=m.y_true.cpu().numpy(),
        meta=dict(classes=m.about["classes"], source=m.about["source"], n_train=n),
    )
    write_summary(
        m.out, m.run, m.settings, m.progress, replace(facts, n_corrupted=n_corrupted), log=log, examples=examples
    )


def _progress_bar(total: int, initial: int, name: str, size: int):
    """A progress bar of the pack's epochs on a terminal; None elsewhere (plain log lines instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    desc = name + (f" (+{size - 1} packed)" if size > 1 else "")
    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", leave=False)
