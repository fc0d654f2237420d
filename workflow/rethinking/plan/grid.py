"""The grid: corruptions, runs and their ids, and each run's training settings.

A run is dataset x corruption x level x model x regularizers x seed (x a group's training variant);
its id names its folder, e.g. `digits/labels-0.4/alexnet/crop-wd/seed0`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..models import run_name
from .corruptions import kind_of, kinds, lookup, on_label_axis, takes_levels
from .datasets import dataset_id

# training.lr's defaults: per model entry; `default` for every model not named (rethinking.models lists the kinds)
DEFAULT_LR = {
    "mlp_1x512": 0.01,
    "mlp_3x512": 0.01,
    "alexnet": 0.01,
    "inception": 0.1,
    "inception_nobn": 0.1,
    "inception_v3": 0.1,
    "resnet18": 0.1,
    "default": 0.01,
}
REGULARIZERS = ("crop", "augment", "padcrop", "wd", "dropout")  # canonical order in names


@dataclass(frozen=True, order=True)
class Corruption:
    kind: str  # a registered kind's name (plan.corruptions), never an alias
    level: float = 0.0  # the kind's level: the label-corruption probability for `labels`, else the kind's own

    @staticmethod
    def make(kind: str, level: float | None = None) -> Corruption:
        """A params name (or alias) at a level; the level is used only by a kind that takes levels."""
        entry, fixed = lookup(kind)
        if not entry.levels:
            return Corruption(entry.name, entry.level)
        if fixed is not None:
            level = fixed
        if level is None:
            raise ConfigError(f"corruption: {kind!r} needs a level (a probability in [0, 1])")
        p = float(level)
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ConfigError(f"corruption level: {level!r} is outside [0, 1]")
        if p == 0.0 and entry.at_zero is not None:
            return Corruption.make(entry.at_zero)
        return Corruption(entry.name, p)

    @property
    def id(self) -> str:
        """Its name in folders and files: the kind's name with '-' for '_' (an alias's at the alias's level),
        and `-<level>` for a kind that takes levels, e.g. true-labels, labels-0.4, random-labels, gaussian."""
        entry = kind_of(self.kind)
        for alias, level in entry.aliases.items():
            if self.level == level:
                return alias.replace("_", "-")
        name = entry.name.replace("_", "-")
        return f"{name}-{self.level:g}" if entry.levels else name

    @staticmethod
    def parse(cid: str) -> Corruption:
        """The corruption of an id (Corruption.id); '_' is read as '-'."""
        cid = cid.replace("_", "-")
        for entry in kinds():
            for alias in entry.aliases:
                if cid == alias.replace("_", "-"):
                    return Corruption.make(alias)
            if not entry.levels and cid == entry.name.replace("_", "-"):
                return Corruption.make(entry.name)
        for entry in kinds():
            prefix = entry.name.replace("_", "-") + "-"
            if entry.levels and cid.startswith(prefix):
                try:
                    level = float(cid[len(prefix) :])
                except ValueError:
                    break
                return Corruption.make(entry.name, level)
        allowed = [
            n.replace("_", "-") + ("-<p>" if n == k.name and k.levels else "")
            for k in kinds()
            for n in (k.name, *k.aliases)
        ]
        raise ConfigError(f"corruption: {cid!r} is not a corruption id (allowed: {', '.join(allowed)})")

    @property
    def label_level(self) -> float | None:
        """Label-corruption level for Fig. 1b/1c, None for other corruptions (pixels)."""
        return on_label_axis(self.kind, self.level)

    @property
    def touches_pixels(self) -> bool:
        return kind_of(self.kind).touches == "pixels"


def regularizer_id(spec: str) -> str:
    if spec == "none":
        return "none"
    parts = set(spec.replace("+", "-").split("-"))
    return "-".join(r for r in REGULARIZERS if r in parts)


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    corruption: Corruption
    model: str
    regularizers: str  # canonical id: none, crop, wd, crop-wd, ...
    seed: int
    variant: str = ""  # names a group's training overrides ("" = params' training as is)

    @property
    def id(self) -> str:
        regs = f"{self.regularizers}_{self.variant}" if self.variant else self.regularizers
        return f"{self.dataset}/{self.corruption.id}/{run_name(self.model)}/{regs}/seed{self.seed}"

    @property
    def regs(self) -> frozenset:
        return frozenset() if self.regularizers == "none" else frozenset(self.regularizers.split("-"))

    @staticmethod
    def check_id(run_id: str) -> None:
        parts = run_id.strip("/").split("/")
        if len(parts) != 5 or not parts[4].startswith("seed"):
            raise ConfigError(f"run: {run_id!r} is not a run id (expected dataset/corruption/model/regularizers/seedN)")


def expand_runs(cfg: dict) -> list[Run]:
    """Every run the grid asks for, each once (a run in two groups is trained once). A group's `train_sizes`
    gives its runs at each size the dataset `<id>-n<size>` (null: the params' dataset)."""
    runs = set()
    for group in cfg["grid"]:
        corruptions = []
        for kind in group["corruptions"]:
            levels = group.get("levels", [None]) if takes_levels(kind) else [None]
            corruptions += [Corruption.make(kind, lvl) for lvl in levels]
        for ds in (dataset_id(cfg, n) for n in group.get("train_sizes", [None])):
            for model in group["models"]:
                for c in corruptions:
                    for reg in group.get("regularizers", ["none"]):
                        for seed in cfg["seeds"]:
                            runs.add(Run(ds, c, model, regularizer_id(reg), seed, group.get("variant", "")))
    return sorted(runs, key=lambda r: r.id)


def training_for(cfg: dict, run: Run) -> dict:
    """The training settings of a run: params' training with its variant's overrides (a variant's
    `lr` adds to or replaces params' per-model rates, its `adam` to or replaces params' betas and eps)."""
    t = copy.deepcopy(cfg["training"])
    if run.variant:
        for group in cfg["grid"]:
            if group.get("variant") == run.variant:
                over = copy.deepcopy(group["training"])
                t["lr"] = {**t["lr"], **over.pop("lr", {})}
                if "adam" in t:  # a config validated by plan.params has it
                    t["adam"] = {**t["adam"], **over.pop("adam", {})}
                t.update(over)
                break
        else:
            raise ConfigError(f"run: variant {run.variant!r} of {run.id!r} is not in this config's grid")
    return t


def corruptions_of(runs) -> list[Corruption]:
    return sorted({r.corruption for r in runs}, key=lambda c: c.id)


def artifacts_of(runs) -> list[tuple[str, Corruption]]:
    """(dataset id, corruption) of every corrupted artifact the runs train on: one corrupt job each."""
    return sorted({(r.dataset, r.corruption) for r in runs}, key=lambda a: (a[0], a[1].id))


def parse_artifact(cfg: dict, name: str) -> tuple[str, Corruption]:
    """(dataset id, corruption) of a corrupt job's name, `<dataset>/<corruption id>` (plan.paths.artifact_name),
    or of a bare corruption id (the params' dataset)."""
    dataset, _, cid = name.rpartition("/")
    return dataset or dataset_id(cfg), Corruption.parse(cid)


def lr_for(t: dict, model: str) -> float:
    """A model's learning rate from training settings `t`: its own entry, else `default`."""
    lr = t["lr"]
    if model in lr:
        return lr[model]
    return lr["default"] if "default" in lr else DEFAULT_LR.get(model, DEFAULT_LR["default"])


def find_run(cfg: dict, run_id: str) -> Run:
    Run.check_id(run_id)
    run = {r.id: r for r in expand_runs(cfg)}.get(run_id.strip("/"))
    if run is None:
        raise ConfigError(f"run: {run_id!r} is not in this config's grid (see `python -m rethinking runs`)")
    return run
