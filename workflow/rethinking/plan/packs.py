"""Which runs share a pack (one process, one stacked model) and in which order jobs start.

No torch here unless a pack's model must be built to see whether it has dropout layers.
"""

from __future__ import annotations

import json
import math

from ..errors import ConfigError, ModelError
from ..models import MLP, check_model, import_only, is_user_code, parse
from .corruptions import kind_of
from .datasets import data_shape
from .grid import Run, training_for
from .paths import artifact_name
from .settings import run_settings

PER_RUN = ("run", "corruption", "seed")


def pack_key(cfg: dict, run: Run, settings: dict) -> str | None:
    """Runs with the same key can share a pack; None for a run that is always trained alone: one
    whose built module has active dropout (vmap's masks would differ from a single run's), or that trains
    with another optimizer than SGD (engine.pack.Stacked's update is SGD's)."""
    if settings.get("optimizer", "sgd") != "sgd":
        return None
    if settings["dropout"] > 0 or module_traits(cfg, run.model, settings["dropout"])["dropout"]:
        return None
    shared = {k: v for k, v in settings.items() if k not in PER_RUN}
    shared["dataset"] = run.dataset
    shared["threads"] = training_for(cfg, run)["threads"]
    return json.dumps(shared, sort_keys=True)


_TRAITS: dict = {}


def module_traits(cfg: dict, model: str, dropout: float) -> dict:
    """rethinking.models.traits of the built module (imports torch; asked only when packing), built
    for the input config.data_shape gives. The plan depends on the params alone, never on whether the
    data is prepared yet: a module that cannot be built for a guessed shape (an image folder's) is
    trained alone."""
    shape, classes, known = data_shape(cfg)
    key = (model, dropout, shape, classes, cfg.get("_params_dir"))
    if key not in _TRAITS:
        try:
            _TRAITS[key] = check_model(model, shape, classes, dropout, base=cfg.get("_params_dir"))
        except ModelError:
            if known:
                raise
            _TRAITS[key] = {"dropout": True}
    return _TRAITS[key]


def check_models(cfg: dict, runs: list[Run], source: str = "params") -> None:
    """Before any work: every model from torchvision or a user's code builds and maps the params'
    input (config.data_shape) to N x K logits, with the dropout its runs ask for. ConfigError names
    the entry and what is wrong. Built-in models are not built (nothing to find out; no torch import).
    Where the input is only guessed (an image folder), a user's factory is imported and looked up,
    not called: `train` checks it on the real data."""
    todo = {}
    for run in runs:
        if parse(run.model).kind in ("torchvision", "file", "module"):
            todo.setdefault((run.model, run_settings(cfg, run)["dropout"]), run)
    if not todo:
        return
    shape, classes, known = data_shape(cfg)
    for (model, dropout), run in todo.items():
        try:
            if known:
                _TRAITS[(model, dropout, shape, classes, cfg.get("_params_dir"))] = check_model(
                    model, shape, classes, dropout, base=cfg.get("_params_dir")
                )
            elif is_user_code(model):
                import_only(model, base=cfg.get("_params_dir"))
        except ModelError as exc:
            raise ConfigError(f"{source}: model {exc} (run {run.id})") from None


def pack_size(cfg: dict, model: str) -> int:
    """training.pack for a model: the number, or the mapping's entry for the model (else its `default`)."""
    pack = cfg["training"].get("pack", 1)
    if isinstance(pack, dict):
        return pack.get(model, pack.get("default", 1))
    return pack


def plan_packs(cfg: dict, runs: list[Run], size: int | None = None) -> list[list[Run]]:
    """The grid's runs in packs of at most `size` (default: training.pack, per model where it is a
    mapping), in run order.

    Runs are packed only with runs of the same key (pack_key, which holds the model); the last pack
    of a key may be smaller, and with size 1 every run is its own pack.
    """
    packs, open_packs = [], {}
    for run in runs:
        n = size or pack_size(cfg, run.model)
        key = pack_key(cfg, run, run_settings(cfg, run)) if n > 1 else None
        if key is None:
            packs.append([run])
            continue
        if key not in open_packs or len(open_packs[key]) >= n:
            open_packs[key] = []
            packs.append(open_packs[key])
        open_packs[key].append(run)
    return packs


def check_packable(cfg: dict, runs: list[Run], settings: list[dict]) -> None:
    """Refuse a pack whose runs cannot share one stacked model, naming the run and the setting."""
    if len(set(runs)) != len(runs):
        raise ConfigError("--run: the same run is given twice")
    first = settings[0]
    for run, s in zip(runs, settings):
        if s.get("optimizer", "sgd") != "sgd":
            raise ConfigError(
                f"--run: {run.id} trains with training.optimizer {s['optimizer']!r}; a pack trains with sgd only "
                "(such runs are trained alone, not packed)"
            )
        if s["dropout"] > 0:
            raise ConfigError(f"--run: {run.id} uses dropout; runs with dropout are trained alone, not packed")
        if module_traits(cfg, run.model, s["dropout"])["dropout"]:
            raise ConfigError(
                f"--run: {run.id}: its model {run.model!r} has dropout layers; such runs are trained alone, not packed"
            )
        if run.dataset != runs[0].dataset:
            raise ConfigError(f"--run: {run.id} is on another dataset than {runs[0].id}; a pack shares its data")
        for key, value in s.items():
            if key not in PER_RUN and value != first[key]:
                raise ConfigError(
                    f"--run: {run.id} has {key}={value!r} but {runs[0].id} has {first[key]!r}; "
                    f"packed runs differ only in {', '.join(PER_RUN)}"
                )


# How many times more epochs a corruption (its registry entry's epoch_factor, plan.corruptions) or a
# regularizer takes to fit than true labels (the paper's "constant factor"), roughly, from the default
# experiment on digits (CPU, 2026-12-01): AlexNet true labels 11 epochs, random labels 105, with the random
# crop 32.


HEAVY_MODEL = 1e9  # conv models, torchvision's and users' (not built at planning): above every MLP here


def expected_cost(cfg: dict, run: Run) -> float:
    """A rough estimate of a run's training time, in arbitrary units, for ordering jobs only: the
    longest first, so that on a few cores the last job to finish is not a long one started last (longest
    processing time first). Multiply-adds per image for MLPs (from the input shape), conv and unknown
    models above every MLP, times the epochs the corruption and the regularizers are expected to take.
    It decides no result: a wrong estimate only orders jobs worse."""
    (c, h, w), k, _ = data_shape(cfg)
    m = MLP.fullmatch(run.model)  # mlp_1x512 and mlp_3x512 too
    if m:
        depth, width = int(m[1]), int(m[2])
        cost = c * h * w * width + (depth - 1) * width * width + width * k
    else:
        cost = HEAVY_MODEL
    epochs = kind_of(run.corruption.kind).epochs(run.corruption.level)
    if run.regs & {"crop", "augment", "padcrop"}:
        epochs *= 3.0
    return cost * epochs


SECTION5_PRIORITY = 1000  # the kernels stage (2 cores): before every training job (job_priority is a log2)


def job_priority(cfg: dict, runs: list[Run]) -> float:
    """Snakemake's priority of a training job (a run or a pack): higher starts first. log2 of the expected
    cost (expected_cost), so that a pack counts as the sum of its runs."""
    return round(math.log2(sum(expected_cost(cfg, r) for r in runs)), 3)


def corruption_priorities(cfg: dict, packs: list[list[Run]]) -> dict[str, float]:
    """Snakemake's priority of each corrupt job (by its name, `<dataset>/<corruption id>`): the highest of the
    training jobs waiting for it, so that the longest runs' data is made first (a job only starts once its data
    exists)."""
    out: dict[str, float] = {}
    for pack in packs:
        p = job_priority(cfg, pack)
        for run in pack:
            name = artifact_name(run.dataset, run.corruption)
            out[name] = max(out.get(name, p), p)
    return out


def pack_name(pack: list[Run]) -> str:
    """A stable name for a pack (its first run's id, '/' -> '__', and its size)."""
    return f"{pack[0].id.replace('/', '__')}__x{len(pack)}"
