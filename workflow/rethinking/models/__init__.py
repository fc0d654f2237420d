"""The model registry: what an entry of `grid[].models` may be, and how it is built.

An entry is one of:

- the paper's five (Zhang et al. 2017, Table 1): ``mlp_1x512``, ``mlp_3x512`` (mlp.py), ``alexnet``
  (alexnet.py: the TF CIFAR-10 tutorial's small AlexNet), ``inception``, ``inception_nobn``
  (inception.py: the small Inception of the paper's appendix); ``inception_v3`` (inception_v3.py) for
  streamed image trees;
- ``mlp_<depth>x<width>``: any depth >= 1 and width >= 1 (capacity sweeps);
- ``resnet18`` (resnet.py): the CIFAR-style ResNet-18; ``resnet18_k<k>`` its width family (k channels in the
  first stage, 2k, 4k, 8k after; k = 64 is resnet18: Nakkiran et al.'s model-wise double descent);
- ``torchvision.<name>``: a classification model of torchvision.models, built untrained;
- a user's factory, ``path/to/file.py:function`` (relative to the params file's folder or the working
  directory) or ``package.module:function``: called as ``function(in_shape=(C, H, W), num_classes=K)``
  (and ``dropout=p`` if it takes that keyword), it returns an nn.Module mapping N x C x H x W floats to
  N x K logits;
- a user's width family, ``path/to/file.py:function@<width>`` (or ``package.module:function@<width>``): the
  factory called with ``width=<width>`` besides; the grid's ``{family: path/to/file.py:function, widths: [...]}``
  lists them.

Parsing an entry (`parse`, `run_name`, `model_file`) imports no torch, so planning a grid stays fast;
`build_model` and `check_model` do. A new built-in model is one file in this folder and one line in
BUILTIN.

Trainable parameter counts at ``in_shape=(3, 28, 28)``, 10 classes (the paper's 28x28 CIFAR-10 crop):
mlp_1x512 1,209,866; mlp_3x512 1,735,178; alexnet 1,387,786; inception and inception_nobn 1,649,402.
resnet18 (and resnet18_k64) at 3x32x32: 11,173,962. Dropout (``dropout > 0``) never changes a count.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

PAPER_MODELS = ("mlp_1x512", "mlp_3x512", "alexnet", "inception", "inception_nobn")
MODELS = PAPER_MODELS  # what `models` lists by default
STREAM_MODELS = ("inception_v3",)  # trained on streamed image trees only (rethinking.engine.streamed)
MIN_IMAGE_SIZE = {"inception_v3": 75}  # smallest input side of a model (inception_v3.py)
AUX_WEIGHT = 0.4  # Inception V3: weight of the auxiliary classifier's loss in training (a run setting)

# name -> (module of this package, its builder); builder(in_shape, num_classes, dropout) -> nn.Module
BUILTIN = {
    "alexnet": ("alexnet", "alexnet"),
    "inception": ("inception", "inception"),
    "inception_nobn": ("inception", "inception_nobn"),
    "resnet18": ("resnet", "resnet18"),
    "inception_v3": ("inception_v3", "build"),
}
MLP = re.compile(r"mlp_([1-9][0-9]*)x([1-9][0-9]*)")
RESNET = re.compile(r"resnet18_k([1-9][0-9]*)")  # Nakkiran et al.'s width family: k channels in the first stage
TORCHVISION = "torchvision."
FACTORY = re.compile(r"(?P<target>[^:\s]+):(?P<func>[A-Za-z_][A-Za-z0-9_]*)(?:@(?P<width>[1-9][0-9]*))?")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KINDS = (
    "the paper's five (mlp_1x512, mlp_3x512, alexnet, inception, inception_nobn), mlp_<depth>x<width>, "
    "resnet18, resnet18_k<width>, inception_v3 (streamed trees), torchvision.<name>, path/to/file.py:function or "
    "package.module:function (@<width>: called with width=<width>)"
)


@dataclass(frozen=True)
class Spec:
    entry: str
    kind: str  # builtin | mlp | resnet | torchvision | file | module
    target: str = ""  # builtin or torchvision name, file path as written, module name
    func: str = ""  # the factory's function
    width: int | None = None  # a factory's width (entry `...:function@<width>`), passed as width=


def parse(entry) -> Spec:
    """What kind of model an entry names (no file is read, nothing is imported)."""
    if not isinstance(entry, str) or not entry:
        raise ModelError(f"{entry!r} is not a model entry (a string: {KINDS})")
    if entry in BUILTIN or entry in PAPER_MODELS:
        return Spec(entry, "builtin", entry)
    if MLP.fullmatch(entry):
        return Spec(entry, "mlp", entry)
    if RESNET.fullmatch(entry):
        return Spec(entry, "resnet", entry)
    if entry.startswith(TORCHVISION):
        name = entry[len(TORCHVISION) :]
        if not IDENTIFIER.fullmatch(name):
            raise ModelError(
                f"{entry!r}: torchvision.<name> takes the name of a torchvision.models classifier "
                "(e.g. torchvision.resnet50)"
            )
        return Spec(entry, "torchvision", name)
    m = FACTORY.fullmatch(entry)
    if m:
        target, func, width = m["target"], m["func"], int(m["width"]) if m["width"] else None
        if target.endswith(".py"):
            return Spec(entry, "file", target, func, width)
        if all(IDENTIFIER.fullmatch(p) for p in target.split(".")):
            return Spec(entry, "module", target, func, width)
    raise ModelError(f"{entry!r} is not a model (an entry is one of: {KINDS})")


@dataclass(frozen=True)
class WidthFamily:
    """A family of models that differ only in a width: a member's entry is the family's prefix and the width
    (mlp_1x + 16, resnet18_k + 4, nets.py:wide@ + 8). A new built-in family is one entry of WIDTH_FAMILIES (and
    its builder); the grid's `{family: ..., widths: [...]}` and the capacity outputs read it."""

    names: re.Pattern  # what the grid's `family` may say
    prefix: Callable[[str], str]  # that name -> the members' common prefix
    describe: str  # for errors and the docs


WIDTH_FAMILIES = (
    WidthFamily(re.compile(r"mlp_[1-9][0-9]*x"), lambda name: name, "mlp_<depth>x (MLPs of that depth)"),
    WidthFamily(re.compile(r"resnet18(_k)?"), lambda name: "resnet18_k", "resnet18 (resnet18_k<width>)"),
    WidthFamily(
        re.compile(r"[^:\s@]+:[A-Za-z_][A-Za-z0-9_]*"),
        lambda name: f"{name}@",
        "path/to/file.py:function or package.module:function (called with width=<width>)",
    ),
)
MEMBER = re.compile(r"(.+?)([1-9][0-9]*)")  # a prefix and a width


def family_member(family: str, width: int) -> str:
    """The model entry of a width family at `width` (the grid's `{family: ..., widths: [...]}`): family
    mlp_<depth>x gives mlp_<depth>x<width>, resnet18 (or resnet18_k) gives resnet18_k<width>, a user's factory
    path/to/file.py:function gives path/to/file.py:function@<width>."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelError(f"width {width!r} is not a positive integer")
    for f in WIDTH_FAMILIES:
        if isinstance(family, str) and f.names.fullmatch(family):
            member = f"{f.prefix(family)}{width}"
            parse(member)  # a model entry (a factory's target checked), or a one-line error
            return member
    raise ModelError(
        f"family {family!r} is not a width family (one of: {', '.join(f.describe for f in WIDTH_FAMILIES)})"
    )


def width_of(entry: str) -> tuple[str, int] | None:
    """(the family's prefix, the width) of a member of a width family (mlp_1x16 -> ("mlp_1x", 16)); None for
    any other model entry."""
    m = MEMBER.fullmatch(str(entry))
    if m is None:
        return None
    for f in WIDTH_FAMILIES:
        for name in (m[1], m[1].removesuffix("@")):
            if f.names.fullmatch(name) and f.prefix(name) == m[1]:
                return m[1], int(m[2])
    return None


def short_hash(entry: str) -> str:
    return hashlib.sha256(entry.encode()).hexdigest()[:8]


def run_name(entry: str) -> str:
    """The model's part of a run id, a valid folder name: the entry itself for built-in models and
    MLPs, tv-<name> for torchvision.<name>, <function>-<8 hex digits of the entry's hash> for a factory, and
    <function>-<the hash of the entry without its width>-w<width> for a factory at a width."""
    spec = parse(entry)
    if spec.kind in ("builtin", "mlp", "resnet"):
        return entry
    if spec.kind == "torchvision":
        return f"tv-{spec.target}"
    if spec.width is not None:
        return f"{spec.func}-{short_hash(entry.rsplit('@', 1)[0])}-w{spec.width}"
    return f"{spec.func}-{short_hash(entry)}"


def is_user_code(entry: str) -> bool:
    return parse(entry).kind in ("file", "module")


def model_file(entry: str, base=None) -> Path | None:
    """The file of a `file.py:function` entry (None for other kinds), looked up relative to `base`
    (the params file's folder) and then to the working directory; relative to the working directory
    when it lies below it (as Snakemake and DVC name their inputs)."""
    spec = parse(entry)
    if spec.kind != "file":
        return None
    path = Path(spec.target)
    candidates = [path] if path.is_absolute() else [Path(base or ".") / path, path]
    for c in dict.fromkeys(candidates):
        if c.is_file():
            c = c.resolve()
            try:
                return c.relative_to(Path.cwd())
            except ValueError:
                return c
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise ModelError(f"{entry!r}: the file {spec.target} does not exist (looked for {looked})")


def source_digest(entry: str, base=None) -> dict | None:
    """For a file factory: its path and the sha256 of its content (part of its runs' settings, so
    editing the file reruns exactly the runs of that model); None for every other kind."""
    path = model_file(entry, base)
    if path is None:
        return None
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# ---------------------------------------------------------------------------- building (imports torch)


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def traits(model) -> dict:
    """What the engines decide from a built module: batch norm, active dropout, convolutions."""
    from torch import nn

    mods = list(model.modules())
    return {
        "batchnorm": any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods),
        "dropout": any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in mods),
        "conv": any(isinstance(m, nn.modules.conv._ConvNd) for m in mods),
    }


def build_model(entry: str, in_shape, num_classes: int = 10, dropout: float = 0.0, *, base=None):
    """Build `entry` untrained for N x C x H x W inputs, in_shape = (C, H, W); `base` is the folder
    a file factory's relative path is looked up in first (the params file's)."""
    spec = parse(entry)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    in_shape = tuple(int(s) for s in in_shape)
    if spec.kind == "builtin":
        module, builder = BUILTIN.get(entry) or ("mlp", None)
        if builder is None:  # mlp_1x512, mlp_3x512
            return _mlp(entry, in_shape, num_classes, dropout)
        return getattr(importlib.import_module(f"{__name__}.{module}"), builder)(in_shape, num_classes, dropout)
    if spec.kind == "mlp":
        return _mlp(entry, in_shape, num_classes, dropout)
    if spec.kind == "resnet":
        from .resnet import resnet18

        return resnet18(in_shape, num_classes, dropout, width=int(RESNET.fullmatch(entry)[1]))
    if spec.kind == "torchvision":
        return _torchvision(spec, in_shape, num_classes, dropout)
    return _factory(spec, in_shape, num_classes, dropout, base)


def _mlp(entry, in_shape, num_classes, dropout):
    from .mlp import mlp

    depth, width = (int(v) for v in MLP.fullmatch(entry).groups())
    return mlp(in_shape, num_classes, depth=depth, width=width, dropout=dropout)


def _without(kwargs: dict, exc: TypeError) -> dict | None:
    """kwargs less the keyword a TypeError says is unexpected (None if it names none of them)."""
    m = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if m and m[1] in kwargs:
        return {k: v for k, v in kwargs.items() if k != m[1]}
    return None


def _torchvision(spec: Spec, in_shape, num_classes, dropout):
    import warnings

    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if spec.target not in names:
        raise ModelError(
            f"{spec.entry!r}: {spec.target!r} is not a classification model of torchvision.models "
            f"(torchvision.models.list_models(module=torchvision.models) lists {len(names)}, "
            "e.g. resnet18, resnet50, vgg11, mobilenet_v3_small, vit_b_16)"
        )
    # torchvision's own dropout is the grid's dropout regularizer (0 without it); no auxiliary heads
    kwargs = {"dropout": dropout, "aux_logits": False, "init_weights": True}
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return tvm.get_model(spec.target, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as exc:
            fewer = _without(kwargs, exc)
            if fewer is None:
                raise ModelError(
                    f"{spec.entry!r}: torchvision.models.get_model({spec.target!r}, weights=None, "
                    f"num_classes={num_classes}) fails ({exc})"
                ) from None
            if "dropout" in kwargs and "dropout" not in fewer and dropout > 0:
                raise ModelError(
                    f"{spec.entry!r} has no dropout setting, so it cannot take the dropout regularizer"
                ) from None
            kwargs = fewer


def _import_factory(spec: Spec, base):
    if spec.kind == "file":
        path = model_file(spec.entry, base)
        name = f"rethinking_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                raise ModelError(f"{spec.entry!r}: importing {path} fails ({type(exc).__name__}: {exc})") from None
            sys.modules[name] = module
        where = str(path)
    else:
        try:
            module = importlib.import_module(spec.target)
        except ModuleNotFoundError as exc:
            raise ModelError(
                f"{spec.entry!r}: no module {spec.target!r} importable from this environment "
                f"({exc}); for a file, write path/to/file.py:{spec.func}"
            ) from None
        except Exception as exc:
            raise ModelError(f"{spec.entry!r}: importing {spec.target} fails ({type(exc).__name__}: {exc})") from None
        where = spec.target
    func = getattr(module, spec.func, None)
    if func is None or not callable(func):
        raise ModelError(f"{spec.entry!r}: {where} has no function {spec.func!r}")
    return func


def import_only(entry: str, *, base=None) -> None:
    """A factory's module imports and has the function (nothing is called)."""
    _import_factory(parse(entry), base)


def _factory(spec: Spec, in_shape, num_classes, dropout, base):
    import inspect

    from torch import nn

    func = _import_factory(spec, base)
    kwargs = {"in_shape": in_shape, "num_classes": num_classes}
    try:
        params = inspect.signature(func).parameters
        takes = {
            k for k in ("dropout", "width") if k in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
        }
    except (TypeError, ValueError):
        takes = set()
    if spec.width is not None:
        if "width" not in takes:
            raise ModelError(f"{spec.entry!r}: {spec.func} takes no width= keyword, so it cannot be a width family")
        kwargs["width"] = spec.width
    takes_dropout = "dropout" in takes
    if takes_dropout:
        kwargs["dropout"] = dropout
    elif dropout > 0:
        raise ModelError(
            f"{spec.entry!r}: {spec.func} takes no dropout= keyword, so it cannot take the dropout regularizer"
        )
    call = f"{spec.func}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = func(**kwargs)
    except Exception as exc:
        raise ModelError(f"{spec.entry!r}: {call} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec.entry!r}: {call} returned {type(model).__name__}, not a torch.nn.Module")
    return model


PROBE_SIDES = (8, 16, 24, 32, 48, 64, 75, 96, 128, 160, 192, 224, 256, 299, 384, 512)


def _forward_error(model, shape) -> str | None:
    """None if `model` maps 2 x shape to a tensor, else what went wrong."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None if isinstance(out, torch.Tensor) else f"returns {type(out).__name__}"


def check_model(entry: str, in_shape, num_classes: int, dropout: float = 0.0, *, base=None) -> dict:
    """Build `entry` and run one training-mode forward pass of 2 zero images: it must give 2 x K
    logits. Returns its parameter count and traits; a ModelError says what is wrong, in one line."""
    import torch

    in_shape = tuple(int(s) for s in in_shape)
    state = torch.random.get_rng_state()  # checking draws no random number of the caller's
    try:
        try:
            model = build_model(entry, in_shape, num_classes, dropout, base=base)
        except ValueError as exc:
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{entry!r}: {exc}") from None
        model.train()
        x = torch.zeros(2, *in_shape)
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:
            raise ModelError(_forward_failure(entry, model, in_shape, exc)) from None
    finally:
        torch.random.set_rng_state(state)
    want = (2, num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = f"{' x '.join(map(str, out.shape))} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{entry!r}: expected N x K logits ({want[0]} x {want[1]} for input "
            f"{' x '.join(map(str, x.shape))}), got {got}"
        )
    return {"parameters": count_parameters(model), **traits(model)}


def _forward_failure(entry, model, in_shape, exc) -> str:
    what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    c, h, w = in_shape
    first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
    if first is not None and getattr(first, "in_channels", c) != c:
        return f"{entry!r} takes {first.in_channels}-channel images but the data has {c} (input {c}x{h}x{w}; {what})"
    model.eval()
    tried = [s for s in PROBE_SIDES if s > min(h, w)]
    fits = next((s for s in tried if _forward_error(model, (c, s, s)) is None), None)
    if fits is not None:  # the smallest side between the last failing one and the first that fits
        lo = max([min(h, w)] + [s for s in tried if s < fits])
        while fits - lo > 1:
            mid = (lo + fits) // 2
            lo, fits = (lo, mid) if _forward_error(model, (c, mid, mid)) is None else (mid, fits)
        return (
            f"{entry!r}: the input {c}x{h}x{w} is smaller than the model takes: it needs at least "
            f"{fits}x{fits} ({what})"
        )
    return f"{entry!r}: the forward pass fails on input 2 x {c} x {h} x {w} ({what})"
