"""Params files: load, validate against the schema and the registries, fill in defaults.

params.yaml (or a file in config/) is the only file a user edits. Everything that Snakemake, DVC
and the commands of this package do is derived from the dict `load` returns, so they cannot
disagree about which runs exist or where they live. Every error names the file and the key.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import yaml

from ..errors import ConfigError, ModelError
from ..models import MIN_IMAGE_SIZE, family_member, model_file, parse, run_name
from .corruptions import check_options, label_names, takes_levels
from .corruptions import names as corruption_names
from .datasets import STREAMED_SOURCES, check_decode, is_streamed
from .grid import DEFAULT_LR

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "params.schema.yaml"


TRAINING_OVERRIDES = (
    "batch_size",
    "max_epochs",
    "momentum",
    "lr",
    "lr_decay",
    "lr_decay_images",
    "weight_decay",
    "dropout",
    "optimizer",
    "adam",
)


DEFAULTS = {
    "results_dir": "results",
    "paper_tolerance": {"train_acc": 1.0, "test_acc": 3.0},
    "section5": None,
    # per corruption kind that takes options (plan.corruptions: label_file, pairflip), its options; each kind
    # fills in its own defaults (CorruptionKind.options)
    "corruption_options": {},
    "seeds": [0],
    # the per-example tables and figures (rethinking.analysis.examples, example_figures)
    "examples": {"suspects": 50, "map_level": 0.4, "images": 10},
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
        # end a run when it fits its training set (the paper's protocol); false: train on to max_epochs (its status
        # stays `fitted`, step_first_fit says when), for epoch-wise double descent
        "stop_at_fit": True,
        "momentum": 0.9,
        # sgd (the paper's) or adam (torch.optim.Adam's, L2 weight decay; momentum unused); adam's betas and eps
        "optimizer": "sgd",
        "adam": {"betas": [0.9, 0.999], "eps": 1e-8},
        # per model entry; `default` for every model not named (rethinking.models lists the kinds)
        "lr": dict(DEFAULT_LR),
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
        # streamed sources only (dataset.source: imagenet): see rethinking.engine.streamed
        "image_size": 299,
        "gpus_per_run": 1,
        "workers": 4,
        "decode": "workers",
        "checkpoint_every": None,
        "train_eval_size": None,
    },
}


SECTION5_DEFAULTS = {
    "kernels": {
        "features": ["pixels", "random-conv"],
        "gamma": {"pixels": 0.02, "random-conv": None},
        "ridge": 0.01,
        "n_train": None,
        "n_test": None,
        "n_filters": 256,
        "pool": 2,
        "noise_levels": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        "device": "auto",
    },
    "implicit": {"n": 20, "steps": 20000, "features": "pixels"},
    # double descent of random-features regression (section5/random_features.py); n = 200 training digits keep
    # it near a second on 2 cores
    "random_features": {
        "features": "relu",
        "ratios": [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0],
        "noise_levels": [0.0, 0.2],
        "n": 200,
        "ridge": 0.01,
        "seed": 0,
    },
    "theorem": {"ns": [10, 30, 100, 300], "labels": ["random", "true"]},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _schema() -> dict:
    """The params schema, its list of corruption kinds filled in from the registry (plan.corruptions)."""
    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    schema["properties"]["grid"]["items"]["properties"]["corruptions"]["items"]["enum"] = list(corruption_names())
    return schema


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
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
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
        elif e.validator in ("minItems", "maxItems") and e.schema.get("minItems") == e.schema.get("maxItems"):
            allowed = f" (expected exactly {e.schema['minItems']} items)"
        raise ConfigError(f"{source}: {key}: {e.message}{allowed}")
    bad = next(_non_finite(raw), None)  # JSON Schema's minimum/maximum let NaN through (every comparison is false)
    if bad is not None:
        raise ConfigError(f"{source}: {_where(bad[0])}: {bad[1]!r} is not a finite number")
    cfg = _merge(DEFAULTS, raw)
    cfg["_params_dir"] = str(params_dir) if params_dir is not None else "."
    if cfg.get("section5") is not None:
        cfg["section5"] = _merge(SECTION5_DEFAULTS, cfg["section5"])
    if "grid" not in cfg:
        raise ConfigError(f"{source}: grid: missing; list at least one group of models x corruptions")
    _expand_families(cfg, source)
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


def _expand_families(cfg: dict, source: str) -> None:
    """A `{family: ..., widths: [...]}` entry of a group's models becomes the family's model at each width
    (rethinking.models.family_member), in place: everything after params sees model names only."""
    for i, group in enumerate(cfg["grid"]):
        names = []
        for j, model in enumerate(group["models"]):
            if not isinstance(model, dict):
                names.append(model)
                continue
            try:
                names += [family_member(model["family"], w) for w in model["widths"]]
            except ModelError as exc:
                raise ConfigError(f"{source}: grid[{i}].models[{j}]: {exc}") from None
        group["models"] = names


def _check_models(cfg: dict, source: str) -> None:
    """Every model entry and `lr` key names a model the registry knows (no file is imported here),
    and a file factory's file exists; two entries never share a run folder name."""
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
                raise ConfigError(
                    f"{source}: grid[{i}].models[{j}]: {model!r} and {names[run_name(model)]!r} "
                    f"would share the run folder name {run_name(model)!r}; name one of them otherwise"
                )
    lrs = [("training.lr", cfg["training"]["lr"])] + [
        (f"grid[{i}].training.lr", g["training"]["lr"])
        for i, g in enumerate(cfg["grid"])
        if "lr" in g.get("training", {})
    ]
    if isinstance(cfg["training"]["pack"], dict):
        lrs.append(("training.pack", cfg["training"]["pack"]))
    for where, lr in lrs:
        for key in lr:
            if key != "default":
                try:
                    parse(key)
                except ModelError as exc:
                    raise ConfigError(f"{source}: {where}.{key}: not a model entry nor 'default' ({exc})") from None


def _check_results_dir(cfg: dict, source: str) -> None:
    """results_dir is a folder, or a path that can become one: no part of it is an existing file."""
    path = Path(cfg["results_dir"])
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                what = "is a file" if part == path else f"lies inside {str(part)!r}, which is a file"
                raise ConfigError(
                    f"{source}: results_dir: {cfg['results_dir']!r} {what} (expected a folder to "
                    "write the results into, or a path that does not exist yet)"
                )
            return


def _check_semantics(cfg: dict, source: str) -> None:
    _check_results_dir(cfg, source)
    _check_models(cfg, source)
    names = set()
    for i, group in enumerate(cfg["grid"]):
        where = f"grid[{i}]"
        if group["name"] in names:
            raise ConfigError(f"{source}: {where}.name: {group['name']!r} is used twice; group names must be unique")
        names.add(group["name"])
        with_levels = [k for k in group["corruptions"] if takes_levels(k)]
        if with_levels and "levels" not in group:
            raise ConfigError(
                f"{source}: {where}.levels: required when corruptions contains {with_levels[0]!r} "
                "(a list of probabilities in [0, 1])"
            )
        if "levels" in group and not with_levels:
            kinds = [repr(k) for k in corruption_names() if takes_levels(k)]
            raise ConfigError(
                f"{source}: {where}.levels: only meaningful with the corruption{'s' * (len(kinds) > 1)} "
                f"{' or '.join(kinds)}"
            )
        for r in group.get("regularizers", ["none"]):
            parts = r.replace("+", "-").split("-")
            if len(set(parts)) != len(parts):
                raise ConfigError(f"{source}: {where}.regularizers: {r!r} names a regularizer twice")
            crops = [c for c in ("crop", "augment", "padcrop") if c in parts]
            if len(crops) > 1:
                raise ConfigError(
                    f"{source}: {where}.regularizers: {r!r}: {' and '.join(crops)} are two random crops; keep one"
                )
        if any(n is not None for n in group.get("train_sizes", [])) and "label_file" in group["corruptions"]:
            raise ConfigError(
                f"{source}: {where}.train_sizes: not possible with the corruption 'label_file' (its file labels "
                "the whole training set; give the group no train_sizes, or null only)"
            )
        if ("variant" in group) != ("training" in group):
            raise ConfigError(
                f"{source}: {where}: 'variant' and 'training' go together "
                "(a variant names the training overrides of its group)"
            )
    try:
        check_options(cfg, {k for group in cfg["grid"] for k in group["corruptions"]})
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if is_streamed(cfg):
        _check_streamed(cfg, source)
    else:
        for i, group in enumerate(cfg["grid"]):
            for j, model in enumerate(group["models"]):
                if model == "inception_v3":
                    raise ConfigError(
                        f"{source}: grid[{i}].models[{j}]: inception_v3 is trained on streamed "
                        f"image trees only (dataset.source: {', '.join(STREAMED_SOURCES)}), "
                        f"not on {cfg['dataset']['source']!r}"
                    )
    variants = {}
    for i, group in enumerate(cfg["grid"]):
        if "variant" in group:
            seen = variants.setdefault(group["variant"], group["training"])
            if seen != group["training"]:
                raise ConfigError(
                    f"{source}: grid[{i}].training: variant {group['variant']!r} is given different "
                    "overrides in two groups; use one variant name per set of overrides"
                )


def _check_streamed(cfg: dict, source: str) -> None:
    """What a streamed dataset cannot do: pixel corruptions (the images are never copied), packs, a fixed crop."""
    check_decode(cfg, source)
    ds = cfg["dataset"]["source"]
    if cfg["preprocess"]["crop"] is not None:
        raise ConfigError(
            f"{source}: preprocess.crop: not used with dataset.source {ds!r} (streamed images are "
            "cropped to training.image_size); set it to null"
        )
    if cfg["training"]["pack"] not in (1, {"default": 1}):
        raise ConfigError(
            f"{source}: training.pack: {cfg['training']['pack']} is not possible with dataset.source "
            f"{ds!r}: a streamed run trains alone (set pack: 1)"
        )
    for i, group in enumerate(cfg["grid"]):
        for j, kind in enumerate(group["corruptions"]):
            if kind not in label_names():
                raise ConfigError(
                    f"{source}: grid[{i}].corruptions[{j}]: {kind!r} corrupts pixels, which needs the "
                    f"images in memory; dataset.source {ds!r} is streamed from disk and takes label "
                    f"corruptions only (allowed: {', '.join(label_names())})"
                )
        for r in group.get("regularizers", ["none"]):
            if found := {"augment", "padcrop"} & set(r.replace("+", "-").split("-")):
                raise ConfigError(
                    f"{source}: grid[{i}].regularizers: {r!r}: {sorted(found)[0]!r} is a CIFAR-10 recipe; on "
                    f"dataset.source {ds!r} use 'crop' (random resized crop + horizontal flip)"
                )
        t = _merge(cfg["training"], group.get("training", {}))
        if t["batch_size"] % t["gpus_per_run"]:
            raise ConfigError(
                f"{source}: training.batch_size: {t['batch_size']} is the batch of all "
                f"{t['gpus_per_run']} processes of a run (training.gpus_per_run) together and must "
                "be a multiple of it"
            )
        for model in group["models"]:
            if t["image_size"] < MIN_IMAGE_SIZE.get(model, 1):
                raise ConfigError(
                    f"{source}: training.image_size: {t['image_size']} is too small for {model} "
                    f"(at least {MIN_IMAGE_SIZE[model]})"
                )


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
