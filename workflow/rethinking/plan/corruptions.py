"""Corruption kinds: what the grid can do to a dataset, one registry entry per kind.

Section 2 of the paper, in registry order (the figures' order):
- true_labels: the original data.
- labels at level p (params' `levels`): independently with probability p each *training* label is
  replaced by a class drawn uniformly from all classes (it may equal the true one, so about (1 - 1/C) p
  of the labels change). Drawn once, fixed across epochs; the test set keeps its true labels. p = 1 is
  `random_labels` (an alias), p = 0 the true labels.
- shuffled_pixels: one permutation of the pixel positions, drawn once and applied to every image of
  both splits (stored as `permutation`).
- random_pixels: a different permutation for every image of both splits.
- gaussian: every image of both splits replaced by Gaussian noise whose mean and standard deviation
  match the training set, per channel: what is stored (rounded and clipped to 0..255), not the
  Gaussian before clipping. Pixel corruptions keep the true labels.

An entry is everything the pipeline knows of a kind; nothing else names one. The params schema's list
of kinds (filled in when params are loaded, plan.params), Corruption's ids (plan.grid), the `corrupt`
stage (rethinking.data.corrupt), the jobs' order (plan.packs) and the figures' legends
(rethinking.analysis.figures) all read it.

Seeds: a kind's draws use np.random.default_rng([dataset.seed, 2, seed_key, round(level * 1e6)]), an
explicit key per kind, never its place in a list: adding, removing or reordering kinds leaves every
other artifact's bytes as they were. Never change or reuse a key (tests/test_corruptions.py checks the
artifacts of config/tiny.yaml against their SHA-256 recorded before the registry existed).

Adding one (the README's "Extending the pipeline"):

    def invert(rng, base, level, num_classes):       # numpy arrays of the base artifact -> what replaces them
        return {"x_train": 255 - base["x_train"], "x_test": 255 - base["x_test"]}

    register(CorruptionKind("inverted_pixels", seed_key=5, touches="pixels", draw=invert,
                            epoch_factor=1.0, legend="inverted pixels"))

No torch here and no scipy at import (the draws import it inside the Gaussian's solve): the Snakemake
rules read the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .draws import corrupt_labels, gaussian_like, random_pixels, shuffle_pixels

# the `corrupt` stage's code, relative to the package: a change to any of them remakes every artifact
# (the Snakemake rule's and the DVC stage's dependencies; a kind whose draw lives elsewhere adds its file)
CORRUPT_SOURCES = ("data/corrupt.py", "plan/corruptions.py", "plan/draws.py")

NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


@dataclass(frozen=True, eq=False)
class CorruptionKind:
    name: str  # as written in params (grid[].corruptions); its id (folder and file names) has '-' for '_'
    seed_key: int  # part of the seed of every artifact of this kind: never change or reuse one
    touches: str  # "labels": draws y_train (its artifact references the base's images); "pixels": x_train, x_test
    # (rng, base arrays {x_train, y_train, x_test, y_test}, level, number of classes) -> the arrays it replaces
    # (labels: y_train; pixels: x_train and x_test, same shape and dtype) and any extras to store; None: the base as is
    draw: Callable | None
    # how many times more epochs than true labels it takes to fit, for the order of jobs only (plan.packs);
    # a function of the level for a kind with levels
    epoch_factor: float | Callable[[float], float] = 1.0
    legend: str = ""  # its name in the figures' legends (at level 1 where it takes levels)
    levels: bool = False  # takes params' `levels` (probabilities in [0, 1]); otherwise its level is `level`
    level: float = 1.0  # the level of a kind without levels (part of its seed): 0 for no corruption
    aliases: Mapping[str, float] = field(default_factory=dict)  # other params names for the kind at one level
    at_zero: str | None = None  # the kind it is at level 0 (labels at p = 0 are the true labels)

    def epochs(self, level: float) -> float:
        return float(self.epoch_factor(level) if callable(self.epoch_factor) else self.epoch_factor)


KINDS: dict[str, CorruptionKind] = {}


def register(kind: CorruptionKind) -> CorruptionKind:
    """Add a kind to the grid's vocabulary. A name (or alias) or a seed key used twice is an error."""
    where = f"corruption kind {kind.name!r}"
    for name in (kind.name, *kind.aliases):
        if not NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a name (lowercase letters, digits and '_')")
        if name in names():
            raise ConfigError(f"{where}: the name {name!r} is registered already")
    if isinstance(kind.seed_key, bool) or not isinstance(kind.seed_key, int) or kind.seed_key < 0:
        raise ConfigError(f"{where}: seed_key {kind.seed_key!r} is not a non-negative integer")
    taken = {k.seed_key: k.name for k in KINDS.values()}
    if kind.seed_key in taken:
        raise ConfigError(
            f"{where}: seed_key {kind.seed_key} is {taken[kind.seed_key]!r}'s already; a new kind "
            f"takes a new key (the highest now is {max(taken)})"
        )
    if kind.touches not in ("labels", "pixels"):
        raise ConfigError(f"{where}: touches is {kind.touches!r}, not 'labels' or 'pixels'")
    if kind.touches == "pixels" and kind.draw is None:
        raise ConfigError(f"{where}: a pixel corruption needs a draw")
    if (kind.aliases or kind.at_zero) and not kind.levels:
        raise ConfigError(f"{where}: aliases and at_zero name levels of a kind that takes levels")
    if kind.at_zero is not None and kind.at_zero not in KINDS:
        raise ConfigError(f"{where}: at_zero {kind.at_zero!r} is not a registered kind")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    KINDS.pop(name, None)


def kinds() -> tuple[CorruptionKind, ...]:
    """Every registered kind, in registration order (the figures' order)."""
    return tuple(KINDS.values())


def names() -> tuple[str, ...]:
    """Every name params may use in grid[].corruptions: each kind followed by its aliases."""
    return tuple(n for k in KINDS.values() for n in (k.name, *k.aliases))


def label_names() -> tuple[str, ...]:
    """The names of the kinds that corrupt labels only (a streamed dataset takes no other)."""
    return tuple(n for k in KINDS.values() if k.touches == "labels" for n in (k.name, *k.aliases))


def lookup(name: str) -> tuple[CorruptionKind, float | None]:
    """(kind, fixed level) of a params name: an alias's level, None for a kind's own name."""
    for k in KINDS.values():
        if name == k.name:
            return k, None
        if name in k.aliases:
            return k, float(k.aliases[name])
    raise ConfigError(f"corruption: {name!r} is unknown (allowed: {', '.join(names())})")


def kind_of(name: str) -> CorruptionKind:
    """The registry entry of a kind (Corruption.kind: never an alias)."""
    if name not in KINDS:
        lookup(name)  # the error that lists the allowed names
        raise ConfigError(f"corruption: {name!r} is an alias; Corruption.make resolves it")
    return KINDS[name]


def takes_levels(name: str) -> bool:
    """Whether a params name expands over its group's `levels` (an alias names one level)."""
    kind, fixed = lookup(name)
    return kind.levels and fixed is None


def on_label_axis(name: str, level: float) -> float | None:
    """The label-corruption level of Fig. 1b/1c: a labels kind with levels, or what one is at level 0."""
    kind = kind_of(name)
    if kind.touches == "labels" and (kind.levels or any(k.at_zero == name for k in KINDS.values())):
        return level
    return None


def rng(dataset_seed: int, name: str, level: float) -> np.random.Generator:
    """The generator of a kind's draws at a level: from the kind's seed key, never its position."""
    return np.random.default_rng([dataset_seed, 2, kind_of(name).seed_key, int(round(level * 1_000_000))])


def draw(name: str, level: float, base: dict, num_classes: int, dataset_seed: int) -> dict:
    """The arrays a kind's artifact replaces or adds to its base's ({} for the base as is), checked."""
    kind = kind_of(name)
    if kind.draw is None:
        return {}
    out = dict(kind.draw(rng(dataset_seed, name, level), base, level, num_classes))
    _check_drawn(kind, out, base, num_classes)
    return out


def _check_drawn(kind: CorruptionKind, out: dict, base: dict, num_classes: int) -> None:
    where = f"corruption kind {kind.name!r}: its draw"
    need = ("y_train",) if kind.touches == "labels" else ("x_train", "x_test")
    if any(k not in out for k in need) or (kind.touches == "labels" and {"x_train", "x_test"} & set(out)):
        raise ConfigError(
            f"{where} returned {sorted(out)}; a {kind.touches} kind returns {' and '.join(need)}"
            + (" and no images" if kind.touches == "labels" else "")
        )
    for key in ("x_train", "x_test", "y_train"):
        if key in out and key in base:
            got, ref = np.asarray(out[key]), np.asarray(base[key])
            if got.shape != ref.shape or (key != "y_train" and got.dtype != ref.dtype):
                raise ConfigError(f"{where}: {key} is {got.dtype} {got.shape}, the base's {ref.dtype} {ref.shape}")
    if "y_train" in out:
        y = np.asarray(out["y_train"])
        if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= num_classes)):
            raise ConfigError(f"{where}: y_train must be integer classes in 0..{num_classes - 1}")


def _draw_labels(rng, base, level, num_classes):
    return {"y_train": corrupt_labels(np.asarray(base["y_train"]), level, num_classes, rng)}


def _draw_shuffled_pixels(rng, base, level, num_classes):
    _, _, h, w = base["x_train"].shape
    perm = rng.permutation(h * w)
    return {
        "x_train": shuffle_pixels(base["x_train"], perm),
        "x_test": shuffle_pixels(base["x_test"], perm),
        "permutation": perm,
    }


def _draw_random_pixels(rng, base, level, num_classes):
    x_train = random_pixels(base["x_train"], rng)  # train first: the order of the draws is part of the bytes
    return {"x_train": x_train, "x_test": random_pixels(base["x_test"], rng)}


def _draw_gaussian(rng, base, level, num_classes):
    x_train = gaussian_like(base["x_train"], base["x_train"].shape, rng)
    return {"x_train": x_train, "x_test": gaussian_like(base["x_train"], base["x_test"].shape, rng)}


# epoch factors: how many times more epochs a corruption takes to fit than true labels (the paper's
# "constant factor"), roughly, from the default experiment on digits (CPU, 2026-12-01): MLP 1x512 fits true
# labels in 38 epochs, random labels in 180, shuffled pixels in 66, random pixels and Gaussian noise in 26
register(
    CorruptionKind(
        "true_labels", seed_key=0, touches="labels", draw=None, epoch_factor=1.0, legend="true labels", level=0.0
    )
)
register(
    CorruptionKind(
        "labels",
        seed_key=1,
        touches="labels",
        draw=_draw_labels,
        epoch_factor=lambda p: 1.0 + 3.0 * p,
        legend="random labels",
        levels=True,
        aliases={"random_labels": 1.0},
        at_zero="true_labels",
    )
)
register(
    CorruptionKind(
        "shuffled_pixels",
        seed_key=2,
        touches="pixels",
        draw=_draw_shuffled_pixels,
        epoch_factor=2.0,
        legend="shuffled pixels",
    )
)
register(
    CorruptionKind(
        "random_pixels",
        seed_key=3,
        touches="pixels",
        draw=_draw_random_pixels,
        epoch_factor=0.7,
        legend="random pixels",
    )
)
register(
    CorruptionKind("gaussian", seed_key=4, touches="pixels", draw=_draw_gaussian, epoch_factor=0.7, legend="Gaussian")
)
