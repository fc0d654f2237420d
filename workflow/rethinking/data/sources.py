"""Stage `prepare`: a dataset -> the base artifact.

The base artifact holds uint8 images at native size, NCHW (grayscale stays one
channel), int64 labels, the class names and where the data came from.

Sources:
- digits: scikit-learn's bundled 8x8 digits (values 0..16, scaled to 0..255),
  split into train/test by a seeded stratified split.
- cifar10: torchvision's official CIFAR-10 files (downloaded when asked and the
  network allows).
- mnist, fashion_mnist, kmnist (1 x 28 x 28), cifar100 (its 100 fine labels) and
  svhn (train and test, not extra; digit 0 is label 0): read by torchvision's own
  dataset classes from dataset.root (default data/<source>), downloaded likewise.
- imagefolder: a folder or .zip holding train/<class>/* and test/<class>/*.
"""

from __future__ import annotations

import io as _io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from .. import __version__
from ..errors import ConfigError, DataError
from ..files import save_npz
from ..plan import TORCHVISION_FILES, TORCHVISION_ROOTS, base_artifact, dataset_id, torchvision_expected

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------
# sources


def load_digits(test_fraction: float, seed: int):
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    classes = [str(c) for c in d.target_names]
    prov = {"source": "digits", "origin": "sklearn.datasets.load_digits", "test_fraction": test_fraction}
    return x[tr], y[tr], x[te], y[te], classes, prov, tr


def load_cifar10(root, download: bool):
    from torchvision.datasets import CIFAR10

    root = Path(root or "data/cifar10")
    where = root / CIFAR10.base_folder
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"dataset.root: CIFAR-10 not found or corrupted at {where} ({exc}). Put the official "
            f"python version (the folder cifar-10-batches-py from cifar-10-python.tar.gz) under {root}, "
            "or set dataset.download: true on a machine with network access. "
            "An image-folder copy (train/<class>/*.jpg) is read with dataset.source: imagefolder."
        ) from None
    except OSError as exc:  # download attempted but the network is unreachable
        raise DataError(
            f"dataset.download: could not download CIFAR-10 into {root} ({exc}); "
            f"put cifar-10-batches-py under {root} by hand"
        ) from None

    def arrays(ds):
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)

    xtr, ytr = arrays(train)
    xte, yte = arrays(test)
    prov = {"source": "cifar10", "origin": "torchvision.datasets.CIFAR10", "root": str(root)}
    return xtr, ytr, xte, yte, list(train.classes), prov, np.arange(len(ytr))


# source -> (torchvision class, name in messages); the files each reads: config.TORCHVISION_FILES
TORCHVISION_CLASSES = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST"),
    "kmnist": ("KMNIST", "KMNIST"),
    "cifar100": ("CIFAR100", "CIFAR-100"),
    "svhn": ("SVHN", "SVHN"),
}
assert set(TORCHVISION_CLASSES) == set(TORCHVISION_FILES)


def load_torchvision(source: str, root, download: bool):
    """MNIST, Fashion-MNIST, KMNIST, CIFAR-100 or SVHN, read by torchvision's own class: uint8 NCHW, int64 labels.

    The test split is each dataset's official test set (SVHN: test_32x32.mat; its extra set is not read).
    """
    import pickle

    import torchvision.datasets

    name, title = TORCHVISION_CLASSES[source]
    cls = getattr(torchvision.datasets, name)
    root = Path(root or TORCHVISION_ROOTS[source])
    expected = torchvision_expected(source, root)
    splits = [{"split": "train"}, {"split": "test"}] if source == "svhn" else [{"train": True}, {"train": False}]
    try:
        train, test = [cls(str(root), download=download, **kw) for kw in splits]
    except (RuntimeError, OSError) as exc:  # torchvision: "Dataset not found [or corrupted]"; no network
        detail = " ".join(str(exc).split())  # MNIST's download error spans lines
        if download:
            raise DataError(
                f"dataset.download: could not download {title} into {root} ({detail}); "
                f"put the official files there by hand: {expected}"
            ) from None
        raise DataError(
            f"dataset.root: {title} not found or corrupted at {root} ({detail}). torchvision expects "
            f"{expected}: put the official files there, or set dataset.download: true on a machine "
            "with network access."
        ) from None
    except (ValueError, KeyError, TypeError, IndexError, EOFError, AssertionError, pickle.UnpicklingError) as exc:
        raise DataError(
            f"dataset.root: {title} files under {root} are not in the format torchvision reads "
            f"({exc.__class__.__name__}: {' '.join(str(exc).split())}); expected {expected}"
        ) from None

    def arrays(ds):
        if source == "svhn":  # torchvision already gives N x 3 x 32 x 32, and label 0 for the digit 0 (10 on disk)
            x, y = ds.data, ds.labels
        elif source == "cifar100":  # N x 32 x 32 x 3, the fine labels
            x, y = ds.data.transpose(0, 3, 1, 2), ds.targets
        else:  # MNIST family: torch tensors N x 28 x 28
            x, y = ds.data.numpy()[:, None], ds.targets.numpy()
        x, y = np.ascontiguousarray(x), np.asarray(y, dtype=np.int64).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
            raise DataError(
                f"dataset.root: {title} under {root}: expected uint8 images with one label each, "
                f"got {x.dtype} images of shape {x.shape} and {len(y)} labels"
            )
        return x, y

    xtr, ytr = arrays(train)
    xte, yte = arrays(test)
    if source in ("mnist", "svhn"):
        classes = [str(i) for i in range(10)]  # torchvision's MNIST says "0 - zero", ...; as digits: "0".."9"
    else:
        classes = [str(c) for c in train.classes]  # CIFAR-100: the meta file's fine_label_names
    prov = {"source": source, "origin": f"torchvision.datasets.{name}", "root": str(root)}
    return xtr, ytr, xte, yte, classes, prov, np.arange(len(ytr))


class _Tree:
    """Read-only view of train/<class>/* and test/<class>/* in a folder or a zip."""

    def __init__(self, root):
        self.root = Path(root)
        self.zip = None
        if self.root.is_file():
            try:
                self.zip = zipfile.ZipFile(self.root)
            except zipfile.BadZipFile:
                raise DataError(
                    f"dataset.root: {self.root} is a file but not a zip archive "
                    "(expected a folder or .zip with train/<class>/* and test/<class>/*)"
                ) from None
            names = [n for n in self.zip.namelist() if not n.endswith("/")]
            # allow one top-level folder around train/ and test/
            prefix = self.prefix = ""
            if not any(n.startswith(("train/", "test/")) for n in names):
                tops = {n.split("/", 1)[0] for n in names if "/" in n}
                for top in sorted(tops):
                    if any(n.startswith(f"{top}/train/") for n in names):
                        prefix = self.prefix = top + "/"
                        break
            self.files = {}
            for n in names:
                if not n.startswith(prefix):
                    continue
                rel = PurePosixPath(n[len(prefix) :])
                if len(rel.parts) == 3 and not rel.name.startswith("."):
                    self.files.setdefault(rel.parts[0], {}).setdefault(rel.parts[1], []).append(n)
        elif self.root.is_dir():
            self.files = {}
            for split in ("train", "test"):
                sdir = self.root / split
                if not sdir.is_dir():
                    continue
                self.files[split] = {}
                for cdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
                    self.files[split][cdir.name] = [
                        str(p) for p in cdir.iterdir() if p.is_file() and not p.name.startswith(".")
                    ]
        else:
            raise DataError(
                f"dataset.root: {self.root} does not exist "
                "(expected a folder or .zip with train/<class>/* and test/<class>/*)"
            )

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return Path(name).read_bytes()

    def relative(self, name: str) -> str:
        """A file's path under the root (train/<class>/<file>): its origin in a run's per-example record."""
        if self.zip is not None:
            return name[len(self.prefix) :]
        return Path(name).relative_to(self.root).as_posix()

    def where(self, name: str) -> str:
        return f"{self.root}:{name}" if self.zip is not None else name


def _decode(tree: _Tree, name: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(tree.read(name))) as im:
            im.load()
            if im.mode in ("L", "1", "I", "I;16", "F"):
                im = im.convert("L")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{tree.where(name)}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_imagefolder(root):
    tree = _Tree(root)
    for split in ("train", "test"):
        if not tree.files.get(split):
            raise DataError(
                f"dataset.root: {root} has no {split}/<class>/ folders with images "
                "(expected train/<class>/* and test/<class>/*)"
            )
    classes = sorted(tree.files["train"])
    test_classes = sorted(tree.files["test"])
    if not set(test_classes) <= set(classes):
        extra = sorted(set(test_classes) - set(classes))
        raise DataError(f"dataset.root: {root}: test classes {extra} have no train folder")
    for split in ("train", "test"):
        for c, files in tree.files[split].items():
            if not files:
                raise DataError(f"dataset.root: {root}: {split}/{c}/ is empty (every class folder needs images)")

    out, origins = {}, None
    for split in ("train", "test"):
        items = [(name, classes.index(c)) for c in sorted(tree.files[split]) for name in sorted(tree.files[split][c])]
        for name, _ in items:
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{tree.where(name)}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        if tree.zip is not None:  # a ZipFile is not safe to share between threads
            images = [_decode(tree, name) for name, _ in items]
        else:
            with ThreadPoolExecutor(max_workers=4) as pool:
                images = list(pool.map(lambda it: _decode(tree, it[0]), items))
        shapes = {}
        for (name, _), im in zip(items, images):
            shapes.setdefault(im.shape, name)
        if len(shapes) > 1:
            desc = "; ".join(f"{tuple(s)} e.g. {tree.where(n)}" for s, n in shapes.items())
            raise DataError(
                f"dataset.root: {root}: images of different sizes or channels in {split}/ ({desc}); "
                "all images must share one size"
            )
        out[split] = (np.stack(images), np.array([y for _, y in items], dtype=np.int64))
        if split == "train":
            origins = np.array([tree.relative(name) for name, _ in items])
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise DataError(
            f"dataset.root: {root}: train images are {out['train'][0].shape[1:]} "
            f"but test images are {out['test'][0].shape[1:]}"
        )
    prov = {"source": "imagefolder", "root": str(Path(root).resolve())}
    return out["train"][0], out["train"][1], out["test"][0], out["test"][1], classes, prov, origins


# ----------------------------------------------------------------------------
# subsets and the stage


def balanced_subset(y: np.ndarray, n: int, num_classes: int, rng: np.random.Generator, split: str) -> np.ndarray:
    """Indices of a seeded class-balanced subset of size n (sorted)."""
    if n > len(y):
        raise DataError(f"dataset.{split}_size: {n} is larger than the {split} split ({len(y)} images)")
    per = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    picked = []
    for c in range(num_classes):
        pool = np.flatnonzero(y == c)
        if len(pool) < per[c]:
            raise DataError(
                f"dataset.{split}_size: {n} needs {per[c]} images of class {c} but the {split} split has {len(pool)}"
            )
        picked.append(rng.choice(pool, size=per[c], replace=False))
    return np.sort(np.concatenate(picked))


def load_source(
    source: str,
    root=None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    download: bool = False,
) -> dict:
    """A dataset as arrays (x_train, y_train, x_test, y_test, classes, provenance, origin_train), seeded subsets
    taken. origin_train: where each training image came from (its index in the source's training split, or
    its file path under an image folder's root), for the runs' per-example records.

    The one loader of the package: `prepare` stores its result as the base artifact, and the
    standalone commands (bench, kernels, theorem) use it directly.
    """
    if source == "digits":
        xtr, ytr, xte, yte, classes, prov, otr = load_digits(test_fraction, seed)
    elif source == "cifar10":
        xtr, ytr, xte, yte, classes, prov, otr = load_cifar10(root, download)
    elif source in TORCHVISION_CLASSES:
        xtr, ytr, xte, yte, classes, prov, otr = load_torchvision(source, root, download)
    elif source == "imagefolder":
        if not root:
            raise DataError(
                "dataset.root: required for imagefolder (a folder or .zip with train/<class>/* and test/<class>/*)"
            )
        xtr, ytr, xte, yte, classes, prov, otr = load_imagefolder(root)
    else:
        raise DataError(
            f"dataset.source: {source!r} is unknown (allowed: digits, cifar10, "
            f"{', '.join(TORCHVISION_CLASSES)}, imagefolder)"
        )
    rng = np.random.default_rng([seed, 1])
    if train_size:
        i = balanced_subset(ytr, train_size, len(classes), rng, "train")
        xtr, ytr, otr = xtr[i], ytr[i], otr[i]
    if test_size:
        i = balanced_subset(yte, test_size, len(classes), rng, "test")
        xte, yte = xte[i], yte[i]
    return {
        "x_train": xtr,
        "y_train": ytr,
        "x_test": xte,
        "y_test": yte,
        "classes": classes,
        "provenance": prov,
        "origin_train": otr,  # each training image's index in the source's training split, or its file path
    }


def prepare(cfg: dict) -> Path:
    ds = cfg["dataset"]
    d = load_source(
        ds["source"], ds["root"], ds["train_size"], ds["test_size"], ds["seed"], ds["test_fraction"], ds["download"]
    )
    xtr, ytr, xte, yte = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    crop = cfg["preprocess"]["crop"]
    if crop and crop > min(xtr.shape[2:]):
        raise ConfigError(f"preprocess.crop: {crop} is larger than the images ({xtr.shape[2]}x{xtr.shape[3]})")

    prov = dict(
        d["provenance"], train_size=int(len(ytr)), test_size=int(len(yte)), seed=ds["seed"], version=__version__
    )
    meta = {
        "kind": "base",
        "dataset": dataset_id(cfg),
        "classes": d["classes"],
        "shape": list(xtr.shape[1:]),
        "provenance": prov,
    }
    out = base_artifact(cfg)
    save_npz(
        out,
        meta,
        x_train=np.ascontiguousarray(xtr),
        y_train=ytr,
        x_test=np.ascontiguousarray(xte),
        y_test=yte,
        origin_train=np.asarray(d["origin_train"]),
    )
    return out
