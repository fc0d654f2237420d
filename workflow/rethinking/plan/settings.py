"""What determines a run's result (its settings) and which source files make its checkpoint stale.

No torch here: the Snakemake rules and dvcgen read these to plan a grid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..models import AUX_WEIGHT, source_digest
from .grid import Run, lr_for, training_for

PACKAGE = Path(__file__).resolve().parent.parent  # the files of `sources` are named relative to it

# every file of the models subpackage (a new model file is an engine source without another edit)
MODEL_SOURCES = tuple(f"models/{p.name}" for p in sorted((PACKAGE / "models").glob("*.py")))


# what both engines share (rethinking.engine.run: the stop rule, the schedule, checkpoints, summaries;
# .metrics: the evaluation and every per-epoch metric; .examples: the per-example record), the optimizer, fp32
# evaluation and the models
SHARED_ENGINE_SOURCES = (
    "engine/run.py",
    "engine/metrics.py",
    "engine/examples.py",
    "engine/optim.py",
    "engine/precision.py",
    *MODEL_SOURCES,
)
# a change to any of these invalidates checkpoints (a user's model file: run_settings' model_source)
ENGINE_SOURCES = ("engine/loop.py", "engine/pack.py", "data/preprocess.py", *SHARED_ENGINE_SOURCES)


def fingerprint(settings: dict, sources: tuple[str, ...], device_type: str | None = None) -> str:
    """A checkpoint is resumed only by the same settings, the same engine code (`sources`, files of
    this package) and, where `device_type` is given, on the same kind of device (torch.device.type:
    "cpu" or "cuda" as the engine resolved `training.device`; never "auto").

    The engines pass the device type: a checkpoint holds the random state of the device that wrote
    it (a CUDA generator's state is 16 bytes, a CPU one's 5,056; neither loads into the other), so a
    results folder moved between a GPU machine and a CPU one starts its unfinished runs over instead
    of crashing on resume. The settings themselves (run_settings: the summary, the Snakemake params)
    do not name it: planning knows no device."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    if device_type is not None:
        if device_type == "auto" or ":" in device_type:
            raise ValueError(f"device_type is the resolved device's type ('cpu', 'cuda'), not {device_type!r}")
        h.update(f"\0device_type={device_type}\0".encode())
    for name in sources:
        h.update((PACKAGE / name).read_bytes())
    return h.hexdigest()


def run_settings(cfg: dict, run: Run) -> dict:
    """Everything that determines a run's result; stored in the checkpoint and the summary. A model
    from a user's file adds `model_source` (its path and content hash): editing the file changes
    the settings, and so the checkpoint fingerprint and the Snakemake params, of exactly its runs.
    `optimizer` and its `adam` settings are added only where the optimizer is not SGD (the default), and
    `stop_at_fit` only where it is false, so every other run keeps the settings it had before they came."""
    t = training_for(cfg, run)
    s = {
        "run": run.id,
        "model": run.model,
        "corruption": run.corruption.id,
        "regularizers": run.regularizers,
        "variant": run.variant,
        "seed": run.seed,
        "crop": cfg["preprocess"]["crop"],
        "batch_size": t["batch_size"],
        "max_epochs": t["max_epochs"],
        "momentum": t["momentum"],
        "lr": lr_for(t, run.model),
        "lr_decay": t["lr_decay"],
        "lr_decay_images": t["lr_decay_images"],
        "weight_decay": t["weight_decay"] if "wd" in run.regs else 0.0,
        "dropout": t["dropout"] if "dropout" in run.regs else 0.0,
        "log_every": t["log_every"],
    }
    if t["optimizer"] != "sgd":  # only then: a default run's settings (and fingerprint) are what they were before
        s["optimizer"] = t["optimizer"]
        s["adam"] = {"betas": list(t["adam"]["betas"]), "eps": t["adam"]["eps"]}
    if not t["stop_at_fit"]:  # only then, as the optimizer: every other run's settings are what they were
        s["stop_at_fit"] = False
    source = source_digest(run.model, cfg.get("_params_dir"))
    if source is not None:
        s["model_source"] = source
    return s


# a change to any of these invalidates the checkpoints of streamed runs (the Snakemake rule's and DVC stage's code);
# an edit of the in-memory loop (engine/loop.py, pack.py) leaves them alone
STREAM_ENGINE_SOURCES = ("engine/streamed.py", "data/stream.py", *SHARED_ENGINE_SOURCES)


def stream_settings(cfg: dict, run: Run) -> dict:
    """Everything that determines a streamed run's result; stored in the checkpoint and the summary."""
    t = training_for(cfg, run)
    s = run_settings(cfg, run)
    s.update(
        engine="stream",
        image_size=t["image_size"],
        gpus_per_run=t["gpus_per_run"],
        decode=t["decode"],
        train_eval_size=t["train_eval_size"],
        aux_weight=AUX_WEIGHT if run.model == "inception_v3" else 0.0,
    )
    return s


def launcher(cfg: dict) -> str:
    """What starts `-m rethinking train` for a streamed run: python, or torchrun with one process per GPU."""
    n = cfg["training"]["gpus_per_run"]
    return "python" if n == 1 else f"torchrun --standalone --nproc_per_node={n}"


def train_command(cfg: dict, params: str, run_id: str) -> str:
    """The shell command of a streamed run (--run-id: torchrun would take --run for its --run-path)."""
    return f"{launcher(cfg)} -m rethinking train --params {params} --run-id {run_id}"


def gpus_requested(cfg: dict) -> int:
    """The `gpu` resource a streamed run's job asks Snakemake for."""
    return 0 if cfg["training"]["device"] == "cpu" else cfg["training"]["gpus_per_run"]
