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

Not in the paper (README "Real and structured label noise"):
- pairflip at level p (params' `levels`, p = 0 the true labels): each training label independently with
  probability p moved to one fixed other class, the next one ((c + 1) mod K) or as its `map` option says by
  class names (a class not named keeps its labels). Not on Fig. 1b/1c's axis (paper_axis=False).
- label_file: the training labels read from a file (plan.label_files: .npy, .csv, a CIFAR-10N .pt), its
  `path` (relative to the params file's folder) and `key` options; the file is an input of its corrupt job
  and its path, SHA-256 and key are in the artifact's meta.

Options: a kind declares the options it takes (`options`, with defaults) and checks them (`check`); params
give them in one section, corruption_options.<kind>, read by options_for, and the draw gets them as a fifth
argument. A kind without options keeps the four-argument draw.

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

    register(CorruptionKind("inverted_pixels", seed_key=7, touches="pixels", draw=invert,
                            epoch_factor=1.0, legend="inverted pixels"))

No torch here and no scipy at import (the draws import it inside the Gaussian's solve): the Snakemake
rules read the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import sha256
from . import label_files
from .draws import corrupt_labels, gaussian_like, next_class_map, pairflip_labels, random_pixels, shuffle_pixels

# the `corrupt` stage's code, relative to the package: a change to any of them remakes every artifact
# (the Snakemake rule's and the DVC stage's dependencies; a kind whose draw lives elsewhere adds its file)
CORRUPT_SOURCES = ("data/corrupt.py", "plan/corruptions.py", "plan/draws.py", "plan/label_files.py")

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
    # options from params' corruption_options.<name>: their defaults (every key it takes). A kind with options
    # gets them as its draw's fifth argument, draw(rng, base, level, num_classes, options), after `check`
    # (options with defaults filled in, where: "corruption_options.<name>", the params file's folder)
    # -> the options the draw receives, or a one-line ConfigError naming the key
    options: Mapping[str, object] = field(default_factory=dict)
    check: Callable[[dict, str, str], dict] | None = None
    files: Callable[[dict], list] | None = None  # (checked options) -> files its draw reads: the corrupt job's inputs
    describe: Callable[[dict], dict] | None = None  # (checked options) -> what its artifact's meta records of them
    paper_axis: bool = True  # a labels kind with levels: its levels are Fig. 1b/1c's label-corruption axis

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
    """The label-corruption level of Fig. 1b/1c: a labels kind with levels on the paper's axis (paper_axis:
    `labels`, not `pairflip`), or what one is at level 0 (the true labels)."""
    kind = kind_of(name)
    axis = [k for k in KINDS.values() if k.touches == "labels" and k.levels and k.paper_axis]
    if kind in axis or any(k.at_zero == name for k in axis):
        return level
    return None


def corrupts_labels(name: str, level: float) -> bool:
    """Whether a corruption changes training labels (the memorization tables' runs): a labels kind with a draw,
    at a level above 0 where it takes levels (labels, random labels, pairflip, label_file; not the true labels)."""
    kind = kind_of(name)
    return kind.touches == "labels" and kind.draw is not None and (not kind.levels or level > 0)


def options_for(cfg: dict, name: str) -> dict:
    """A kind's checked options: its defaults with params' corruption_options.<name> over them ({} for a kind
    without options); a ConfigError naming the key for a bad one."""
    kind = kind_of(name)
    where = f"corruption_options.{kind.name}"
    given = (cfg.get("corruption_options") or {}).get(kind.name) or {}
    if not kind.options:
        if given:
            raise ConfigError(f"{where}: the corruption kind {kind.name!r} takes no options")
        return {}
    unknown = sorted(set(given) - set(kind.options))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown option (allowed: {', '.join(kind.options)})")
    options = {**kind.options, **given}
    return kind.check(options, where, str(cfg.get("_params_dir") or ".")) if kind.check else options


def check_options(cfg: dict, used) -> None:
    """params' corruption_options names registered kinds, and the options of the kinds in `used` (params names
    in the grid) are valid (those of a kind the grid does not use are not read); a ConfigError naming the key."""
    kinds_used = {lookup(n)[0].name for n in used}
    for name, given in (cfg.get("corruption_options") or {}).items():
        if name not in KINDS:
            with_options = ", ".join(k.name for k in KINDS.values() if k.options) or "none"
            raise ConfigError(f"corruption_options.{name}: not a corruption kind (kinds with options: {with_options})")
        if name not in kinds_used and given and not KINDS[name].options:
            raise ConfigError(f"corruption_options.{name}: the corruption kind {name!r} takes no options")
    for name in sorted(kinds_used):
        options_for(cfg, name)


def input_files(cfg: dict, name: str) -> list[str]:
    """The files a kind's draw reads (a label file), from its options: inputs of its corrupt job."""
    kind = kind_of(name)
    return [str(f) for f in kind.files(options_for(cfg, name))] if kind.files else []


def rng(dataset_seed: int, name: str, level: float) -> np.random.Generator:
    """The generator of a kind's draws at a level: from the kind's seed key, never its position."""
    return np.random.default_rng([dataset_seed, 2, kind_of(name).seed_key, int(round(level * 1_000_000))])


def draw(name: str, level: float, base: dict, num_classes: int, dataset_seed: int, options: dict | None = None) -> dict:
    """The arrays a kind's artifact replaces or adds to its base's ({} for the base as is), checked. A kind with
    options gets `options` (options_for's) as its draw's fifth argument; one without is called with four."""
    kind = kind_of(name)
    if kind.draw is None:
        return {}
    extra = (options if options is not None else {**kind.options},) if kind.options else ()
    out = dict(kind.draw(rng(dataset_seed, name, level), base, level, num_classes, *extra))
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


def _check_label_file(options: dict, where: str, params_dir: str) -> dict:
    path, key = options["path"], options["key"]
    if path is None:
        raise ConfigError(f"{where}.path: required with the corruption label_file (a .npy, .csv or .pt file of labels)")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.path: {path!r} is not a file name")
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"{where}.key: {key!r} is not a name (a .pt file's key or a .csv file's column)")
    resolved = Path(params_dir) / path  # relative to the params file's folder, as a user's model file
    if resolved.suffix not in label_files.SUFFIXES:
        raise ConfigError(f"{where}.path: {path!r} has suffix {resolved.suffix!r}, expected .npy, .csv or .pt")
    if resolved.suffix == ".pt" and key is None:
        raise ConfigError(
            f"{where}.key: required for a .pt file (CIFAR-10N's: clean_label, worse_label, aggre_label, ...)"
        )
    if resolved.suffix == ".npy" and key is not None:
        raise ConfigError(f"{where}.key: a .npy file holds one array; leave the key out")
    return {"path": str(resolved), "key": key}


def _describe_label_file(options: dict) -> dict:
    path = options["path"]
    digest = sha256(path) if Path(path).is_file() else None
    return {"label_file": {"path": path, "sha256": digest, "key": options["key"]}}


def _draw_label_file(rng, base, level, num_classes, options):
    labels = label_files.read_labels(options["path"], options["key"])
    return {"y_train": label_files.check_labels(options["path"], labels, len(base["y_train"]), num_classes)}


def _check_pairflip(options: dict, where: str, params_dir: str) -> dict:
    mapping = options["map"]
    if mapping is None:
        return {"map": None}
    if not isinstance(mapping, Mapping) or not mapping:
        raise ConfigError(f"{where}.map: {mapping!r} is not a mapping of class names (e.g. {{cat: dog, dog: cat}})")
    return {"map": {str(k): str(v) for k, v in mapping.items()}}


def pairflip_targets(mapping: Mapping[str, str] | None, classes) -> np.ndarray:
    """The class each class's labels move to: (c + 1) mod K without a map; with one, by class names (a class
    not in it keeps its labels). A name that is no class is a ConfigError naming the key."""
    classes = [str(c) for c in classes]
    if mapping is None:
        return next_class_map(len(classes))
    target = np.arange(len(classes))
    for source, dest in mapping.items():
        for name in (source, dest):
            if name not in classes:
                raise ConfigError(
                    f"corruption_options.pairflip.map.{source}: {name!r} is not a class of the dataset "
                    f"(classes: {', '.join(classes)})"
                )
        target[classes.index(source)] = classes.index(dest)
    return target


def _draw_pairflip(rng, base, level, num_classes, options):
    classes = base.get("classes", [str(c) for c in range(num_classes)])
    target = pairflip_targets(options["map"], classes)
    return {"y_train": pairflip_labels(np.asarray(base["y_train"]), level, target, rng)}


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
# not in the paper: real and structured label noise (README "Real and structured label noise")
register(
    CorruptionKind(
        "pairflip",
        seed_key=5,
        touches="labels",
        draw=_draw_pairflip,
        epoch_factor=lambda p: 1.0 + 3.0 * p,
        legend="pair flips",
        levels=True,
        at_zero="true_labels",
        options={"map": None},
        check=_check_pairflip,
        describe=lambda options: {"pairflip_map": options["map"]},
        paper_axis=False,
    )
)
register(
    CorruptionKind(
        "label_file",
        seed_key=6,
        touches="labels",
        draw=_draw_label_file,
        epoch_factor=2.0,
        legend="labels from a file",
        options={"path": None, "key": None},
        check=_check_label_file,
        files=lambda options: [options["path"]],
        describe=_describe_label_file,
    )
)
