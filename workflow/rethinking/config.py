"""Parameters: load, validate, fill defaults, expand into runs.

params.yaml (or a file in config/) is the only file a user edits. Everything
that Snakemake, DVC and the commands of this package do is derived from it
here, so they cannot disagree about which runs exist or where they live.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "params.schema.yaml"

CORRUPTIONS = ("true_labels", "labels", "random_labels", "shuffled_pixels", "random_pixels", "gaussian")
LABEL_CORRUPTIONS = ("true_labels", "labels", "random_labels")
# sources read from disk while training (too large for memory): an index artifact, label files, rethinking.stream
STREAMED_SOURCES = ("imagenet",)
# read by torchvision's own dataset classes (rethinking.data.load_torchvision): the folder under dataset.root and
# the files each class checks before reading (MNIST's .gz downloads unpacked), and the default dataset.root
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TORCHVISION_FILES = {
    "mnist": ("MNIST/raw", _MNIST_FILES),
    "fashion_mnist": ("FashionMNIST/raw", _MNIST_FILES),
    "kmnist": ("KMNIST/raw", _MNIST_FILES),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
    "svhn": ("", ("train_32x32.mat", "test_32x32.mat")),
}
TORCHVISION_ROOTS = {s: f"data/{s}" for s in TORCHVISION_FILES}
MIN_IMAGE_SIZE = {"inception_v3": 75}  # smallest input side of a model (rethinking.inception_v3)
REGULARIZERS = ("crop", "augment", "wd", "dropout")  # canonical order in names
TRAINING_OVERRIDES = ("batch_size", "max_epochs", "momentum", "lr", "lr_decay", "lr_decay_images", "weight_decay",
                      "dropout")

DEFAULTS = {
    "results_dir": "results",
    "paper_tolerance": {"train_acc": 1.0, "test_acc": 3.0},
    "section5": None,
    "seeds": [0],
    "dataset": {
        "source": "digits",
        "root": None,
        "name": None,
        "download": False,
        "train_size": None,
        "test_size": None,
        "test_fraction": 0.2,
        "seed": 0,
    },
    "preprocess": {"crop": None},
    "training": {
        "batch_size": 128,
        "max_epochs": 300,
        "momentum": 0.9,
        # per model entry; `default` for every model not named (rethinking.models lists the kinds)
        "lr": {"mlp_1x512": 0.01, "mlp_3x512": 0.01, "alexnet": 0.01,
               "inception": 0.1, "inception_nobn": 0.1, "inception_v3": 0.1, "resnet18": 0.1, "default": 0.01},
        "lr_decay": 0.95,
        "lr_decay_images": None,
        "weight_decay": 5e-4,
        "dropout": 0.5,
        "log_every": 20,
        "eval_batch_size": 1000,
        "device": "auto",
        "threads": 1,
        "jobs_per_gpu": 1,
        "pack": 1,
        # streamed sources only (dataset.source: imagenet): see rethinking.train_stream
        "image_size": 299,
        "gpus_per_run": 1,
        "workers": 4,
        "decode": "workers",
        "checkpoint_every": None,
        "train_eval_size": None,
    },
}


SECTION5_DEFAULTS = {
    "kernels": {"features": ["pixels", "random-conv"], "gamma": {"pixels": 0.02, "random-conv": None},
                "ridge": 0.01, "n_train": None, "n_test": None, "n_filters": 256, "pool": 2,
                "noise_levels": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "device": "auto"},
    "implicit": {"n": 20, "steps": 20000, "features": "pixels"},
    "theorem": {"ns": [10, 30, 100, 300], "labels": ["random", "true"]},
}


class ConfigError(ValueError):
    """A bad parameter: the message names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------
# loading and validation

def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _where(path) -> str:
    parts = []
    for p in path:
        parts.append(f"[{p}]" if isinstance(p, int) else ("." + p if parts else p))
    return "".join(parts) or "(top level)"


def validate(raw, source: str = "params", params_dir=None) -> dict:
    """Validate a parsed params mapping; return it with defaults filled in. `params_dir` (the params
    file's folder; default the working directory) is where model files are looked up first; it is kept
    as cfg["_params_dir"]."""
    import jsonschema

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    # "integer" means an int: JSON Schema's own rule also accepts 0.0, which would make run ids like seed0.0
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        e = errors[0]
        key = _where(e.absolute_path)
        allowed = ""
        if e.validator == "enum":
            allowed = f" (allowed: {', '.join(map(str, e.validator_value))})"
        elif e.validator == "additionalProperties":
            allowed = f" (allowed keys: {', '.join(sorted(e.schema.get('properties', {})))})"
        raise ConfigError(f"{source}: {key}: {e.message}{allowed}")
    bad = next(_non_finite(raw), None)   # JSON Schema's minimum/maximum let NaN through (every comparison is false)
    if bad is not None:
        raise ConfigError(f"{source}: {_where(bad[0])}: {bad[1]!r} is not a finite number")
    cfg = _merge(DEFAULTS, raw)
    cfg["_params_dir"] = str(params_dir) if params_dir is not None else "."
    if cfg.get("section5") is not None:
        cfg["section5"] = _merge(SECTION5_DEFAULTS, cfg["section5"])
    if "grid" not in cfg:
        raise ConfigError(f"{source}: grid: missing; list at least one group of models x corruptions")
    _check_semantics(cfg, source)
    return cfg


def _non_finite(node, path=()):
    """(key path, value) of every NaN or infinite float (YAML's .nan, .inf) in a parsed mapping."""
    if isinstance(node, float) and not math.isfinite(node):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, path + (i,))


def _check_models(cfg: dict, source: str) -> None:
    """Every model entry and `lr` key names a model the registry knows (no file is imported here),
    and a file factory's file exists; two entries never share a run folder name."""
    from .models import ModelError, model_file, parse, run_name
    base = cfg.get("_params_dir")
    names = {}
    for i, group in enumerate(cfg["grid"]):
        for j, model in enumerate(group["models"]):
            try:
                parse(model)
                model_file(model, base)
            except ModelError as exc:
                raise ConfigError(f"{source}: grid[{i}].models[{j}]: {exc}") from None
            if names.setdefault(run_name(model), model) != model:
                raise ConfigError(f"{source}: grid[{i}].models[{j}]: {model!r} and {names[run_name(model)]!r} "
                                  f"would share the run folder name {run_name(model)!r}; name one of them otherwise")
    lrs = [("training.lr", cfg["training"]["lr"])] + [(f"grid[{i}].training.lr", g["training"]["lr"])
                                                      for i, g in enumerate(cfg["grid"]) if "lr" in g.get("training", {})]
    if isinstance(cfg["training"]["pack"], dict):
        lrs.append(("training.pack", cfg["training"]["pack"]))
    for where, lr in lrs:
        for key in lr:
            if key != "default":
                try:
                    parse(key)
                except ModelError as exc:
                    raise ConfigError(f"{source}: {where}.{key}: not a model entry nor 'default' ({exc})") from None


def _check_semantics(cfg: dict, source: str) -> None:
    _check_models(cfg, source)
    names = set()
    for i, group in enumerate(cfg["grid"]):
        where = f"grid[{i}]"
        if group["name"] in names:
            raise ConfigError(f"{source}: {where}.name: {group['name']!r} is used twice; group names must be unique")
        names.add(group["name"])
        if "labels" in group["corruptions"] and "levels" not in group:
            raise ConfigError(f"{source}: {where}.levels: required when corruptions contains 'labels' "
                              "(a list of probabilities in [0, 1])")
        if "levels" in group and "labels" not in group["corruptions"]:
            raise ConfigError(f"{source}: {where}.levels: only meaningful with the corruption 'labels'")
        for r in group.get("regularizers", ["none"]):
            parts = r.replace("+", "-").split("-")
            if len(set(parts)) != len(parts):
                raise ConfigError(f"{source}: {where}.regularizers: {r!r} names a regularizer twice")
            if {"crop", "augment"} <= set(parts):
                raise ConfigError(f"{source}: {where}.regularizers: {r!r}: augment already includes the random crop")
        if ("variant" in group) != ("training" in group):
            raise ConfigError(f"{source}: {where}: 'variant' and 'training' go together "
                              "(a variant names the training overrides of its group)")
    if is_streamed(cfg):
        _check_streamed(cfg, source)
    else:
        for i, group in enumerate(cfg["grid"]):
            for j, model in enumerate(group["models"]):
                if model == "inception_v3":
                    raise ConfigError(f"{source}: grid[{i}].models[{j}]: inception_v3 is trained on streamed "
                                      f"image trees only (dataset.source: {', '.join(STREAMED_SOURCES)}), "
                                      f"not on {cfg['dataset']['source']!r}")
    variants = {}
    for i, group in enumerate(cfg["grid"]):
        if "variant" in group:
            seen = variants.setdefault(group["variant"], group["training"])
            if seen != group["training"]:
                raise ConfigError(f"{source}: grid[{i}].training: variant {group['variant']!r} is given different "
                                  "overrides in two groups; use one variant name per set of overrides")


def is_streamed(cfg: dict) -> bool:
    """True when the dataset is read from disk while training (an ImageNet-style tree), not held in memory."""
    return cfg["dataset"]["source"] in STREAMED_SOURCES


def _check_streamed(cfg: dict, source: str) -> None:
    """What a streamed dataset cannot do: pixel corruptions (the images are never copied), packs, a fixed crop."""
    ds = cfg["dataset"]["source"]
    if cfg["preprocess"]["crop"] is not None:
        raise ConfigError(f"{source}: preprocess.crop: not used with dataset.source {ds!r} (streamed images are "
                          "cropped to training.image_size); set it to null")
    if cfg["training"]["pack"] not in (1, {"default": 1}):
        raise ConfigError(f"{source}: training.pack: {cfg['training']['pack']} is not possible with dataset.source "
                          f"{ds!r}: a streamed run trains alone (set pack: 1)")
    for i, group in enumerate(cfg["grid"]):
        for j, kind in enumerate(group["corruptions"]):
            if kind not in LABEL_CORRUPTIONS:
                raise ConfigError(f"{source}: grid[{i}].corruptions[{j}]: {kind!r} corrupts pixels, which needs the "
                                  f"images in memory; dataset.source {ds!r} is streamed from disk and takes label "
                                  f"corruptions only (allowed: {', '.join(LABEL_CORRUPTIONS)})")
        for r in group.get("regularizers", ["none"]):
            if "augment" in r.replace("+", "-").split("-"):
                raise ConfigError(f"{source}: grid[{i}].regularizers: {r!r}: 'augment' is the CIFAR-10 recipe; on "
                                  f"dataset.source {ds!r} use 'crop' (random resized crop + horizontal flip)")
        t = _merge(cfg["training"], group.get("training", {}))
        if t["batch_size"] % t["gpus_per_run"]:
            raise ConfigError(f"{source}: training.batch_size: {t['batch_size']} is the batch of all "
                              f"{t['gpus_per_run']} processes of a run (training.gpus_per_run) together and must "
                              "be a multiple of it")
        for model in group["models"]:
            if t["image_size"] < MIN_IMAGE_SIZE.get(model, 1):
                raise ConfigError(f"{source}: training.image_size: {t['image_size']} is too small for {model} "
                                  f"(at least {MIN_IMAGE_SIZE[model]})")


def check_data(cfg: dict, source: str = "params") -> None:
    """The data paths exist (not checked by load, so a dry run can list a grid whose data is elsewhere)."""
    ds = cfg["dataset"]
    tree = {"imagefolder": "test"}.get(ds["source"], "val" if ds["source"] in STREAMED_SOURCES else None)
    if tree:   # the evaluation split's folder name
        layout = f"a folder or .zip with train/<class>/* and {tree}/<class>/*"
        if not ds["root"]:
            raise ConfigError(f"{source}: dataset.root: required for source {ds['source']} ({layout})")
        if not Path(ds["root"]).exists():
            raise ConfigError(f"{source}: dataset.root: {ds['root']!r} does not exist (expected {layout})")
    if ds["source"] == "cifar10" and not ds["download"]:
        root = Path(ds["root"] or "data/cifar10")
        if not (root / "cifar-10-batches-py").is_dir():
            raise ConfigError(f"{source}: dataset.root: {str(root)!r} holds no cifar-10-batches-py folder "
                              "(put the official python version of CIFAR-10 there, or set dataset.download: true)")
    if ds["source"] in TORCHVISION_FILES and not ds["download"]:
        root = Path(ds["root"] or TORCHVISION_ROOTS[ds["source"]])
        missing = torchvision_missing(ds["source"], root)
        if missing:
            folder, names = TORCHVISION_FILES[ds["source"]]
            what = (f"holds no {ds['source']} files" if len(missing) == len(names)
                    else f"lacks {', '.join(missing)} in {Path(root, folder).as_posix()}")
            raise ConfigError(f"{source}: dataset.root: {str(root)!r} {what} (torchvision expects "
                              f"{torchvision_expected(ds['source'], root)}; put the official files there, "
                              "or set dataset.download: true on a machine with network access)")


def torchvision_expected(source: str, root) -> str:
    """The files torchvision's class for `source` reads under `root`, as one string: root/folder/{a, b, c}."""
    folder, names = TORCHVISION_FILES[source]
    unpacked = " (the .gz downloads unpacked)" if folder.endswith("/raw") else ""
    return f"{Path(root, folder).as_posix()}/{{{', '.join(names)}}}{unpacked}"


def torchvision_missing(source: str, root) -> list[str]:
    """The expected files of a torchvision source absent under `root` (MNIST's legacy processed/*.pt count too)."""
    folder, names = TORCHVISION_FILES[source]
    missing = [n for n in names if not Path(root, folder, n).is_file()]
    if missing and folder.endswith("/raw"):   # torchvision still reads <Class>/processed/{training,test}.pt
        processed = Path(root, folder).parent / "processed"
        if all((processed / n).is_file() for n in ("training.pt", "test.pt")):
            return []
    return missing


def load(path) -> dict:
    """Read and validate a params file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(raw, str(path), params_dir=path.parent)


# ----------------------------------------------------------------------------
# identities

def dataset_id(cfg: dict) -> str:
    ds = cfg["dataset"]
    if ds["name"]:
        return ds["name"]
    name = ds["source"]
    if ds["train_size"]:
        name += f"-train{ds['train_size']}"
    if ds["test_size"]:
        name += f"-test{ds['test_size']}"
    return name


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
        from .models import run_name   # the entry itself, tv-<name> or <function>-<hash> (torch-free)
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


# ----------------------------------------------------------------------------
# paths (relative to the working directory, as Snakemake and DVC see them)

def base_artifact(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "data" / dataset_id(cfg) / "base.npz"


def corrupted_artifact(cfg: dict, corruption: Corruption) -> Path:
    return Path(cfg["results_dir"]) / "data" / dataset_id(cfg) / f"{corruption.id}.npz"


def runs_root(cfg: dict) -> Path:
    """The folder holding every run folder."""
    return Path(cfg["results_dir"]) / "runs"


def run_dir(cfg: dict, run: Run) -> Path:
    return runs_root(cfg) / run.id


# C x H x W and classes of each source whose images all have one known size
SOURCE_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
                 "kmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
                 "svhn": ((3, 32, 32), 10)}


def data_shape(cfg: dict) -> tuple[tuple[int, int, int], int, bool]:
    """(C x H x W of the training inputs after the crop, number of classes, whether both are known from
    the params alone). Image folders and streamed trees are guessed as RGB at the crop (or 32 x 32,
    streamed: training.image_size) with 10 classes: `prepare` finds out."""
    source = cfg["dataset"]["source"]
    crop = cfg["preprocess"]["crop"]
    if source in SOURCE_SHAPES:
        (c, h, w), k = SOURCE_SHAPES[source]
        return (c, crop or h, crop or w), k, True
    side = cfg["training"]["image_size"] if is_streamed(cfg) else (crop or 32)
    return (3, side, side), 10, False


def lr_for(t: dict, model: str) -> float:
    """A model's learning rate from training settings `t`: its own entry, else `default`."""
    lr = t["lr"]
    if model in lr:
        return lr[model]
    return lr["default"] if "default" in lr else DEFAULTS["training"]["lr"].get(model, DEFAULTS["training"]["lr"]["default"])


def find_run(cfg: dict, run_id: str) -> Run:
    Run.check_id(run_id)
    run = {r.id: r for r in expand_runs(cfg)}.get(run_id.strip("/"))
    if run is None:
        raise ConfigError(f"run: {run_id!r} is not in this config's grid (see `python -m rethinking runs`)")
    return run
