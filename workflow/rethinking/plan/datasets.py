"""What the planning layer knows of each data source without reading it: which sources are streamed,
the files torchvision's classes expect, the shape and classes of fixed-size sources, the dataset's id,
and whether the data paths a params file names exist (`check_data`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ConfigError

# sources read from disk while training (too large for memory): an index artifact, label files, rethinking.data.stream
STREAMED_SOURCES = ("imagenet",)


# read by torchvision's own dataset classes (rethinking.data.sources.load_torchvision): the folder under
# dataset.root and the files each class checks before reading (MNIST's .gz downloads unpacked), and the default
# dataset.root
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


TORCHVISION_FILES = {
    "mnist": ("MNIST/raw", _MNIST_FILES),
    "fashion_mnist": ("FashionMNIST/raw", _MNIST_FILES),
    "kmnist": ("KMNIST/raw", _MNIST_FILES),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
    "svhn": ("", ("train_32x32.mat", "test_32x32.mat")),
}


TORCHVISION_ROOTS = {s: f"data/{s}" for s in TORCHVISION_FILES}


def is_streamed(cfg: dict) -> bool:
    """True when the dataset is read from disk while training (an ImageNet-style tree), not held in memory."""
    return cfg["dataset"]["source"] in STREAMED_SOURCES


def check_decode(cfg: dict, source: str = "params") -> None:
    """`training.decode: device` can work: TorchCodec is installed (looked up, not imported: planning imports
    neither torch nor torchcodec), and the device is chosen knowingly: cuda (nvJPEG), or cpu set explicitly (the
    training process decodes alone: a test path). `device: auto` is refused: on a machine without CUDA it would
    decode on the CPU unnoticed."""
    t = cfg["training"]
    if t["decode"] != "device":
        return
    if importlib.util.find_spec("torchcodec") is None:
        raise ConfigError(
            f"{source}: training.decode: 'device' needs TorchCodec (torchcodec, pinned in pyproject.toml), "
            "which is not installed; install it or set decode: workers"
        )
    if t["device"] == "auto":
        raise ConfigError(
            f"{source}: training.decode: 'device' needs training.device set to cuda (nvJPEG) or cpu (decoding "
            "in the training process, a test path), not auto, which decodes on the CPU where there is no GPU"
        )


def check_data(cfg: dict, source: str = "params") -> None:
    """The data paths exist (not checked by load, so a dry run can list a grid whose data is elsewhere)."""
    ds = cfg["dataset"]
    tree = {"imagefolder": "test"}.get(ds["source"], "val" if ds["source"] in STREAMED_SOURCES else None)
    if tree:  # the evaluation split's folder name
        layout = f"a folder or .zip with train/<class>/* and {tree}/<class>/*"
        if not ds["root"]:
            raise ConfigError(f"{source}: dataset.root: required for source {ds['source']} ({layout})")
        if not Path(ds["root"]).exists():
            raise ConfigError(f"{source}: dataset.root: {ds['root']!r} does not exist (expected {layout})")
    if ds["source"] == "cifar10" and not ds["download"]:
        root = Path(ds["root"] or "data/cifar10")
        if not (root / "cifar-10-batches-py").is_dir():
            raise ConfigError(
                f"{source}: dataset.root: {str(root)!r} holds no cifar-10-batches-py folder "
                "(put the official python version of CIFAR-10 there, or set dataset.download: true)"
            )
    if ds["source"] in TORCHVISION_FILES and not ds["download"]:
        root = Path(ds["root"] or TORCHVISION_ROOTS[ds["source"]])
        missing = torchvision_missing(ds["source"], root)
        if missing:
            folder, names = TORCHVISION_FILES[ds["source"]]
            what = (
                f"holds no {ds['source']} files"
                if len(missing) == len(names)
                else f"lacks {', '.join(missing)} in {Path(root, folder).as_posix()}"
            )
            raise ConfigError(
                f"{source}: dataset.root: {str(root)!r} {what} (torchvision expects "
                f"{torchvision_expected(ds['source'], root)}; put the official files there, "
                "or set dataset.download: true on a machine with network access)"
            )


def torchvision_expected(source: str, root) -> str:
    """The files torchvision's class for `source` reads under `root`, as one string: root/folder/{a, b, c}."""
    folder, names = TORCHVISION_FILES[source]
    unpacked = " (the .gz downloads unpacked)" if folder.endswith("/raw") else ""
    return f"{Path(root, folder).as_posix()}/{{{', '.join(names)}}}{unpacked}"


def torchvision_missing(source: str, root) -> list[str]:
    """The expected files of a torchvision source absent under `root` (MNIST's legacy processed/*.pt count too)."""
    folder, names = TORCHVISION_FILES[source]
    missing = [n for n in names if not Path(root, folder, n).is_file()]
    if missing and folder.endswith("/raw"):  # torchvision still reads <Class>/processed/{training,test}.pt
        processed = Path(root, folder).parent / "processed"
        if all((processed / n).is_file() for n in ("training.pt", "test.pt")):
            return []
    return missing


def dataset_id(cfg: dict, train_size: int | None = None) -> str:
    """The id of the params' dataset (its folder under results/data and the first part of its run ids), or,
    with `train_size`, of a training-set size of a grid group's `train_sizes`: `<id>-n<size>`."""
    ds = cfg["dataset"]
    if ds["name"]:
        name = ds["name"]
    else:
        name = ds["source"]
        if ds["train_size"]:
            name += f"-train{ds['train_size']}"
        if ds["test_size"]:
            name += f"-test{ds['test_size']}"
    return name if train_size is None else f"{name}{SIZED}{train_size}"


SIZED = "-n"  # a training-set size's id: the params' dataset's id, -n, the size (not -train<size>: another draw)


def train_sizes(cfg: dict) -> list[int | None]:
    """Every training-set size the grid asks for (None: the params' dataset as it is), in order."""
    sizes = {n for group in cfg["grid"] for n in group.get("train_sizes", [None])}
    return sorted(sizes, key=lambda n: -1 if n is None else n)


def dataset_ids(cfg: dict) -> list[str]:
    """The ids of every dataset a grid trains on, the params' dataset first (always: Section 5 reads it, and
    each training-set size is a subset of it)."""
    return [dataset_id(cfg)] + [dataset_id(cfg, n) for n in train_sizes(cfg) if n is not None]


def train_size_of(cfg: dict, dataset: str) -> int | None:
    """The training-set size of a dataset id of the grid (None: the params' dataset itself)."""
    for n in [None] + train_sizes(cfg):
        if dataset_id(cfg, n) == dataset:
            return n
    raise ConfigError(f"dataset: {dataset!r} is not a dataset of this config (allowed: {', '.join(dataset_ids(cfg))})")


# C x H x W and classes of each source whose images all have one known size
SOURCE_SHAPES = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "kmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "svhn": ((3, 32, 32), 10),
}


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
