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
from .datasets import dataset_id

CORRUPTIONS = ("true_labels", "labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian")


LABEL_CORRUPTIONS = ("true_labels", "labels", "random_labels")


# training.lr's defaults: per model entry; `default` for every model not named (rethinking.models lists the kinds)
DEFAULT_LR = {"mlp_1x512": 0.01, "mlp_3x512": 0.01, "alexnet": 0.01, "inception": 0.1, "inception_nobn": 0.1,
              "inception_v3": 0.1, "resnet18": 0.1, "default": 0.01}
REGULARIZERS = ("crop", "augment", "wd", "dropout")  # canonical order in names


@dataclass(frozen=True, order=True)
class Corruption:
    kind: str          # true_labels, labels, shuffled_pixels, random_pixels, gaussian
    level: float = 0.0  # label-corruption probability; 1.0 for pixel corruptions

    @staticmethod
    def make(kind: str, level: float | None = None) -> "Corruption":
        if kind == "labels":
            p = float(level)
            if not 0.0 <= p <= 1.0 or math.isnan(p):
                raise ConfigError(f"corruption level: {level!r} is outside [0, 1]")
            if p == 0.0:
                return Corruption("true_labels", 0.0)
            return Corruption("labels", p)
        if kind == "random_labels":
            return Corruption("labels", 1.0)
        if kind == "true_labels":
            return Corruption("true_labels", 0.0)
        if kind in ("shuffled_pixels", "random_pixels", "gaussian"):
            return Corruption(kind, 1.0)
        raise ConfigError(f"corruption: {kind!r} is unknown (allowed: {', '.join(CORRUPTIONS)})")

    @property
    def id(self) -> str:
        if self.kind == "true_labels":
            return "true-labels"
        if self.kind == "labels":
            return "random-labels" if self.level == 1.0 else f"labels-{self.level:g}"
        return self.kind.replace("_", "-")

    @staticmethod
    def parse(cid: str) -> "Corruption":
        if cid == "random-labels":
            return Corruption("labels", 1.0)
        if cid.startswith("labels-"):
            return Corruption.make("labels", float(cid[len("labels-"):]))
        kind = cid.replace("-", "_")
        return Corruption.make(kind)

    @property
    def label_level(self) -> float | None:
        """Label-corruption level for Fig. 1b/1c, None for pixel corruptions."""
        return {"true_labels": 0.0, "labels": self.level}.get(self.kind)

    @property
    def touches_pixels(self) -> bool:
        return self.kind in ("shuffled_pixels", "random_pixels", "gaussian")


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
    regularizers: str   # canonical id: none, crop, wd, crop-wd, ...
    seed: int
    variant: str = ""   # names a group's training overrides ("" = params' training as is)

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
    """Every run the grid asks for, each once (a run in two groups is trained once)."""
    ds = dataset_id(cfg)
    runs = set()
    for group in cfg["grid"]:
        corruptions = []
        for kind in group["corruptions"]:
            levels = group.get("levels", [None]) if kind == "labels" else [None]
            corruptions += [Corruption.make(kind, lvl) for lvl in levels]
        for model in group["models"]:
            for c in corruptions:
                for reg in group.get("regularizers", ["none"]):
                    for seed in cfg["seeds"]:
                        runs.add(Run(ds, c, model, regularizer_id(reg), seed, group.get("variant", "")))
    return sorted(runs, key=lambda r: r.id)


def training_for(cfg: dict, run: Run) -> dict:
    """The training settings of a run: params' training with its variant's overrides (a variant's
    `lr` adds to or replaces params' per-model rates)."""
    t = copy.deepcopy(cfg["training"])
    if run.variant:
        for group in cfg["grid"]:
            if group.get("variant") == run.variant:
                over = copy.deepcopy(group["training"])
                t["lr"] = {**t["lr"], **over.pop("lr", {})}
                t.update(over)
                break
        else:
            raise ConfigError(f"run: variant {run.variant!r} of {run.id!r} is not in this config's grid")
    return t


def corruptions_of(runs) -> list[Corruption]:
    return sorted({r.corruption for r in runs}, key=lambda c: c.id)


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
