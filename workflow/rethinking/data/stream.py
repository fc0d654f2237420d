"""Streamed image trees (ImageNet): an index instead of pixels, and a loader that decodes while training.

ImageNet (1,281,167 training images of varying size, 1,000 classes) does not
fit in memory, so for `dataset.source: imagenet` the data flow keeps the same
stages with other contents:

- `prepare` writes the base artifact as an *index*: the file names of
  train/<class>/* and of the held-out split (val/<class>/*, else
  test/<class>/*), their labels and the class names (sorted folder names, so
  ImageNet's usual class indices), and the root; no pixels. A folder or a .zip
  (read through data._Tree) both work.
- `corrupt` is unchanged: a label corruption stores labels and the base
  artifact's path and SHA-256 (pixel corruptions are refused by the config).
- the streaming engine (rethinking.engine.streamed) reads images through
  `StreamImages` in DataLoader worker processes.

`StreamImages` yields uint8 HWC crops (normalization happens on the training
device, so 4x fewer bytes cross from the workers than float tensors):

- training with the `crop` regularizer: Inception-style augmentation, a random
  resized crop (torchvision's RandomResizedCrop parameters: scale 0.08-1,
  aspect ratio 3/4-4/3, ten tries then the center) resized to
  `image_size` x `image_size`, and a horizontal flip with probability 1/2;
- otherwise (training without augmentation, and every evaluation): the
  central square of side short_side x 0.875, resized to `image_size` (the
  usual "resize to 342, center crop 299"), in one resampling.

Speed: a crop is decoded and resampled in one Pillow resize with a box, and
when the box is at least twice the output, libjpeg decodes at 1/2, 1/4 or 1/8
scale (`Image.draft`), which skips most of the decoding work on large photos.
Every random choice of a sample comes from (seed, epoch, index), never from a
worker's state: crops are the same for any number of workers or processes and
after a resume. `decode: device` has the workers only read the file bytes and
the crop box; the training process decodes the batch with
torchcodec.decoders.decode_jpeg on its device (nvJPEG on CUDA, libjpeg-turbo on the CPU) and resizes there
(the comment above `_decode_jpegs` says why TorchCodec and not torchvision.io), a batch ahead in a thread
(`DeviceBatches`). Both modes apply a file's EXIF orientation: boxes are drawn on the upright image.
"""

from __future__ import annotations

import contextlib
import io as _io
import math
import os
import queue
import re
import threading
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .. import __version__
from ..errors import ArtifactError, DataError
from ..files import load_npz, save_npz, sha256
from ..plan import Corruption, base_artifact, corrupted_artifact, dataset_id
from .sources import IMAGE_SUFFIXES, _Tree, balanced_subset

HELD_OUT = ("val", "test")  # the held-out split's folder, first found
EVAL_FRACTION = 0.875  # center crop = 0.875 of the short side (299 of 342)
SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults
RATIO = (3 / 4, 4 / 3)


# ----------------------------------------------------------------------------
# the index (stage prepare)


def list_tree(root) -> tuple[dict, str]:
    """({split: {class: [names]}}, held-out split name) of a folder or .zip; names relative to root (or zip members)."""
    root = Path(root)
    if root.is_file():
        files = _Tree(root).files  # a zip: members at <split>/<class>/<file>, one folder around them allowed
    elif root.is_dir():
        files = {}
        for split in ("train", *HELD_OUT):
            sdir = root / split
            if not sdir.is_dir():
                continue
            files[split] = {}
            for cdir in sorted((e for e in os.scandir(sdir) if e.is_dir()), key=lambda e: e.name):
                files[split][cdir.name] = [
                    f"{split}/{cdir.name}/{e.name}"
                    for e in os.scandir(cdir.path)
                    if e.is_file() and not e.name.startswith(".")
                ]
    else:
        raise DataError(
            f"dataset.root: {root} does not exist (expected a folder or .zip with train/<class>/* and val/<class>/*)"
        )
    held = next((s for s in HELD_OUT if files.get(s)), None)
    if not files.get("train") or held is None:
        raise DataError(
            f"dataset.root: {root} needs train/<class>/ and val/<class>/ (or test/<class>/) "
            f"folders with images; found {sorted(files) or 'none'}"
        )
    return files, held


def _split(files: dict, split: str, classes: list[str], root) -> tuple[list[str], np.ndarray]:
    names, labels = [], []
    for c in sorted(files[split]):
        members = sorted(files[split][c])
        if not members:
            raise DataError(f"dataset.root: {root}: {split}/{c}/ is empty (every class folder needs images)")
        for name in members:
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{root}: {name}: not an image file (expected one of {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        names += members
        labels += [classes.index(c)] * len(members)
    return names, np.array(labels, dtype=np.int64)


def build_index(root, train_size: int | None = None, test_size: int | None = None, seed: int = 0) -> dict:
    """The file lists, labels and classes of a tree (seeded class-balanced subsets taken)."""
    files, held = list_tree(root)
    classes = sorted(files["train"])
    extra = sorted(set(files[held]) - set(classes))
    if extra:
        raise DataError(f"dataset.root: {root}: {held} classes {extra[:5]} have no train folder")
    ftr, ytr = _split(files, "train", classes, root)
    fte, yte = _split(files, held, classes, root)
    rng = np.random.default_rng([seed, 1])  # as data.load_source takes subsets
    if train_size:
        i = balanced_subset(ytr, train_size, len(classes), rng, "train")
        ftr, ytr = [ftr[k] for k in i], ytr[i]
    if test_size:
        i = balanced_subset(yte, test_size, len(classes), rng, "test")
        fte, yte = [fte[k] for k in i], yte[i]
    return {"train_files": ftr, "y_train": ytr, "test_files": fte, "y_test": yte, "classes": classes, "held_out": held}


def _names_array(names: list[str]) -> np.ndarray:
    return np.array([n.encode() for n in names], dtype=bytes) if names else np.zeros(0, dtype="S1")


def prepare_index(cfg: dict) -> Path:
    """Stage `prepare` for a streamed source: the base artifact as an index (names, labels, classes; no pixels)."""
    ds = cfg["dataset"]
    root = Path(ds["root"]).resolve()
    d = build_index(root, ds["train_size"], ds["test_size"], ds["seed"])
    prov = {
        "source": ds["source"],
        "root": str(root),
        "held_out": d["held_out"],
        "train_size": len(d["y_train"]),
        "test_size": len(d["y_test"]),
        "seed": ds["seed"],
        "version": __version__,
    }
    # shape [3, 0, 0]: images of any size, cropped to training.image_size when they are read
    meta = {
        "kind": "index",
        "dataset": dataset_id(cfg),
        "classes": d["classes"],
        "shape": [3, 0, 0],
        "root": str(root),
        "provenance": prov,
    }
    out = base_artifact(cfg)
    save_npz(
        out,
        meta,
        train_files=_names_array(d["train_files"]),
        y_train=d["y_train"],
        test_files=_names_array(d["test_files"]),
        y_test=d["y_test"],
    )
    return out


def load_streamed(cfg: dict, corruption: Corruption, dataset: str | None = None) -> dict:
    """A corrupted label file with its index: root, names, (corrupted) training labels, test labels, classes,
    and the index's own training labels (`y_train_true`: corrupt.corrupted_mask compares the two). `dataset`:
    a training-set size's id (default: the params' dataset)."""
    path = corrupted_artifact(cfg, corruption, dataset)
    hint = f"`python -m rethinking corrupt --params <file> --corruption {corruption.id}` (or rerun the pipeline)"
    meta, labels = load_npz(path, rebuild_hint=hint)
    if meta.get("kind") != "corrupted" or meta.get("corruption") != corruption.id or "base" not in meta:
        raise ArtifactError(
            f"{path}: holds {meta.get('corruption')!r}, expected the label file of "
            f"{corruption.id!r}; rebuild it with {hint}"
        )
    base_path = Path(meta["base"]["path"])
    if not base_path.is_file() or sha256(base_path) != meta["base"]["sha256"]:
        raise ArtifactError(
            f"{path}: its index {base_path} is missing or has changed since the labels were drawn; "
            f"rebuild it with {hint}"
        )
    base_meta, index = load_npz(base_path)
    if base_meta.get("kind") != "index":
        raise ArtifactError(
            f"{base_path}: not an index of a streamed tree; rebuild it with "
            "`python -m rethinking prepare --params <file>`"
        )
    return {
        "root": base_meta["root"],
        "classes": base_meta["classes"],
        "train_files": index["train_files"],
        "y_train": labels["y_train"],
        "y_train_true": index["y_train"],
        "test_files": index["test_files"],
        "y_test": labels["y_test"],
    }


# ----------------------------------------------------------------------------
# crops


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) as torchvision's RandomResizedCrop.get_params draws it."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The central square of side short_side x EVAL_FRACTION."""
    side = max(1, int(round(min(width, height) * EVAL_FRACTION)))
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_params(width: int, height: int, augment: bool, seed: int, epoch: int, index: int):
    """(box, flip) of one sample: random for augmented training (seeded by seed, epoch, index), else the center."""
    if not augment:
        return center_box(width, height), False
    rng = np.random.default_rng([seed, 4, epoch, index])
    box = random_resized_box(width, height, rng)
    return box, bool(rng.random() < 0.5)


# EXIF orientation (tag 0x0112) is applied by both decode modes, as TorchCodec's decode_jpeg (and most image
# libraries) do: boxes are drawn on the upright image, whose size `image_size_of` gives; 5-8 swap width and height
ORIENTATION = 0x0112
_SWAPS = (5, 6, 7, 8)


def _orientation(im) -> int:
    """The EXIF orientation of an opened image (1: none, also when the tag is absent or not 1-8)."""
    o = im.getexif().get(ORIENTATION, 1)
    return o if o in range(1, 9) else 1


def decode_crop(
    data: bytes, size: int, augment: bool, seed: int = 0, epoch: int = 0, index: int = 0, where: str = ""
) -> np.ndarray:
    """One image file -> its crop of the upright image (EXIF orientation applied), size x size x 3 uint8 (HWC),
    decoded at reduced scale where the crop allows."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as im:
            orientation = _orientation(im)
            stored = im.size
            width, height = stored[::-1] if orientation in _SWAPS else stored
            box, flip = crop_params(width, height, augment, seed, epoch, index)
            reduce = min(box[2] - box[0], box[3] - box[1]) / size
            if reduce >= 2 and im.format == "JPEG":  # libjpeg decodes at 1/2, 1/4 or 1/8 scale
                im.draft(None, (math.ceil(stored[0] / reduce), math.ceil(stored[1] / reduce)))
                sx, sy = im.size[0] / stored[0], im.size[1] / stored[1]
                if orientation in _SWAPS:
                    sx, sy = sy, sx
                box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)  # the drafted pixels turned upright (a copy)
            if im.mode != "RGB":
                im = im.convert("RGB")
            im = im.resize((size, size), Image.BILINEAR, box=box)
            if flip:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            return np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def image_size_of(data: bytes, where: str = "") -> tuple[int, int]:
    """(width, height) of the upright image (EXIF orientation applied) from the file's header, without decoding."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as im:
            return im.size[::-1] if _orientation(im) in _SWAPS else im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: not a readable image ({exc.__class__.__name__}: {exc})") from None


# ----------------------------------------------------------------------------
# the dataset and loader


class _Reader:
    """Bytes of a file under a folder or a zip; a zip is opened once per process (workers fork)."""

    def __init__(self, root):
        self.root = Path(root)
        self.is_zip = self.root.is_file()
        self._zip, self._pid = None, None

    def read(self, name: str) -> bytes:
        if not self.is_zip:
            with open(self.root / name, "rb") as f:
                return f.read()
        if self._pid != os.getpid():
            import zipfile

            self._zip, self._pid = zipfile.ZipFile(self.root), os.getpid()
        return self._zip.read(name)

    def where(self, name: str) -> str:
        return f"{self.root}:{name}" if self.is_zip else str(self.root / name)

    def __getstate__(self):  # spawn-safe: the zip handle is reopened where it is used
        return {**self.__dict__, "_zip": None, "_pid": None}


class StreamImages(torch.utils.data.Dataset):
    """Images of an index, read and cropped per item. Items are keyed by (index, epoch).

    Default: (HWC uint8 crop, label). With raw=True (decode on the device): (file bytes as a uint8
    tensor, crop box, flip, label), decoded later by `decode_batch`.
    """

    def __init__(
        self, root, names, labels, size: int, augment: bool, seed: int = 0, raw: bool = False, decode_stats=None
    ):
        self.reader = _Reader(root)
        self.decode_stats = decode_stats  # raw: a DecodeStats that counts TorchCodec's refusals (or None)
        self.names = names
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.augment, self.seed, self.raw = size, augment, seed, raw

    def __len__(self) -> int:
        return len(self.labels)

    def _name(self, i: int) -> str:
        n = self.names[i]
        return n.decode() if isinstance(n, bytes) else str(n)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        name = self._name(i)
        data = self.reader.read(name)
        y = int(self.labels[i])
        if self.raw:
            width, height = image_size_of(data, where=self.reader.where(name))
            box, flip = crop_params(width, height, self.augment, self.seed, epoch, i)
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip, y
        img = decode_crop(data, self.size, self.augment, self.seed, epoch, i, where=self.reader.where(name))
        return torch.from_numpy(img), y


def collate_raw(items):
    datas, boxes, flips, ys = zip(*items)
    return list(datas), list(boxes), list(flips), torch.tensor(ys, dtype=torch.int64)


# `decode: device` decodes with TorchCodec's image decoders (torchcodec==0.17.0, pinned in pyproject.toml), not
# torchvision.io.decode_jpeg: torchvision 0.29 deprecates all of torchvision.io's image decoders and encoders
# ("... superseded by the more complete decoders and encoders of TorchCodec (from torchcodec 0.16)", a
# DeprecationWarning at every call) and will remove them. torchcodec 0.17.0 installs from PyPI with no
# dependencies (a CUDA 13 wheel, as torch 2.14.1's; its compatibility table: torch >= 2.11) and decodes JPEG on
# the CPU (bundled libjpeg-turbo) and on CUDA (bundled nvJPEG, a list decoded in one call) without FFmpeg,
# which only its video and audio decoders load. Measured (benchmarks/decode_bench.py, 2 CPU cores, one thread,
# back to back): the same pixels as torchvision's decode_jpeg and as Pillow (largest difference 0), and
# torchvision's speed (median ratio 1.02-1.06 over two runs, on 4,000 CIFAR-10 JPEGs, ~36,000 images/s, and on
# 300 500x375 ones, ~700 images/s; Pillow 0.15x and 0.66-0.72x of that). nvJPEG on a GPU: not measured yet.


# TorchCodec/nvJPEG/CUDA errors that say nothing about a file (messages of torchcodec 0.17's DecodeJpegCuda.cpp and
# of CUDA): raised, never hidden by the Pillow fallback, which is for files TorchCodec cannot decode
_NOT_THE_FILE = re.compile(
    r"out of memory|not compiled with nvjpeg|failed to initialize nvjpeg|failed to create (nvjpeg|jpeg stream)"
    r"|failed to synchronize cuda|cuda error|cuda driver|no cuda gpus|expected the device parameter",
    re.IGNORECASE,
)


class DecodeStats:
    """How many images `decode: device` decoded, and how many of them TorchCodec refused (Pillow decoded them
    instead), since the last `take`; the streamed engine logs them once per epoch."""

    def __init__(self):
        self.images, self.fallbacks, self.reason = 0, 0, None

    def add(self, images: int, refused: dict) -> None:
        self.images += images
        self.fallbacks += len(refused)
        if refused and self.reason is None:
            self.reason = str(next(iter(refused.values()))).splitlines()[0][:200]

    def take(self) -> tuple[int, int, str | None]:
        """(images, fallbacks, first reason) since the last take; the counts start again at 0."""
        out = (self.images, self.fallbacks, self.reason)
        self.images, self.fallbacks, self.reason = 0, 0, None
        return out


def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) >= 3 and bytes(data[:3].tolist()) == b"\xff\xd8\xff"


def _not_the_file(exc: BaseException, device: torch.device) -> None:
    if isinstance(exc, torch.OutOfMemoryError) or _NOT_THE_FILE.search(str(exc)):
        raise RuntimeError(
            f"training.decode: device: TorchCodec cannot decode on {device} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); not a problem of the image files "
            "(use decode: workers, or fix the device)"
        ) from exc


def _decode_jpegs(datas, device: torch.device, stats: DecodeStats | None = None) -> list[torch.Tensor]:
    """File bytes (1-D uint8 CPU tensors) -> 3 x H x W uint8 RGB tensors on `device` (EXIF orientation applied),
    the JPEGs in one batched call. When the batch fails, each file is tried alone; a file TorchCodec refuses (a
    PNG among the JPEGs, a JPEG nvJPEG cannot do) is decoded by Pillow, as the workers would, copied over and
    counted in `stats`. Raised instead: an error that is not about a file (CUDA out of memory, no nvJPEG,
    `_NOT_THE_FILE`), and one that every JPEG of a batch of several gives alone."""
    from torchcodec.decoders import decode_jpeg

    datas = list(datas)
    try:
        images, refused = decode_jpeg(datas, mode="RGB", device=device), {}
    except RuntimeError as exc:
        _not_the_file(exc, device)
        images, refused = [], {}
        for k, d in enumerate(datas):
            try:
                images.append(decode_jpeg(d, mode="RGB", device=device))
            except RuntimeError as one:
                _not_the_file(one, device)
                images.append(None)
                refused[k] = one
        jpegs = [k for k, d in enumerate(datas) if _is_jpeg(d)]
        if len(jpegs) > 1 and all(k in refused for k in jpegs):
            raise RuntimeError(
                f"training.decode: device: TorchCodec refused each of the {len(jpegs)} JPEGs of a batch on {device} "
                f"({refused[jpegs[0]].__class__.__name__}: {str(refused[jpegs[0]]).splitlines()[0]}); not a "
                "problem of the image files (use decode: workers, or fix the device)"
            ) from refused[jpegs[0]]
        for k in refused:
            images[k] = _pillow_rgb(datas[k]).to(device)
    if stats is not None:
        stats.add(len(datas), refused)
    return images


def _pillow_rgb(data: torch.Tensor) -> torch.Tensor:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data.numpy().tobytes())) as im:  # an animated GIF/WebP: its first frame
            if _orientation(im) != 1:
                im = ImageOps.exif_transpose(im)
            return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"not a readable image ({exc.__class__.__name__}: {exc})") from None


def decode_batch(datas, boxes, flips, size: int, device: torch.device, stats: DecodeStats | None = None):
    """Decode file bytes on `device` (TorchCodec: nvJPEG on CUDA) and crop: N x 3 x size x size floats 0..255.
    Crops of one size are resized in one call (equal to the bit to one call per crop, tested). On the CPU this
    runs in the training process alone (slower than `workers` there: a test path)."""
    import torch.nn.functional as F

    images = _decode_jpegs(datas, device, stats)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, (img, (left, top, right, bottom)) in enumerate(zip(images, boxes)):
        if right > img.shape[2] or bottom > img.shape[1] or right <= left or bottom <= top:
            raise DataError(
                f"decode: device: an image decoded as {img.shape[2]}x{img.shape[1]} but its crop box "
                f"{(left, top, right, bottom)} was drawn on its header's size (EXIF orientation read otherwise?)"
            )
        groups.setdefault((bottom - top, right - left), []).append(k)
    out = torch.empty((len(images), 3, size, size), device=device)
    for ks in groups.values():
        crops = torch.stack([images[k][:, boxes[k][1] : boxes[k][3], boxes[k][0] : boxes[k][2]] for k in ks])
        # uint8 has a fast antialiased path on the CPU; CUDA resamples floats
        crops = crops if device.type == "cpu" else crops.float()
        resized = F.interpolate(crops, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for k, one in zip(ks, resized):  # a copy per row: indexing out[ks] at once is slower
            out[k] = one.flip(-1) if flips[k] else one
    return out


def make_loader(dataset: StreamImages, batches, workers: int, pin: bool = False):
    """A DataLoader over precomputed batches of (index, epoch) keys, decoding in `workers` processes."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=collate_raw if dataset.raw else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def to_input(batch, dataset: StreamImages, device: torch.device, channels_last: bool = False):
    """A loader batch -> (N x 3 x S x S float input in [-1, 1] on the device, labels on the device).

    Scaling to [-1, 1] is TF-slim's Inception preprocessing (x / 127.5 - 1).
    """
    if dataset.raw:
        datas, boxes, flips, y = batch
        x = decode_batch(datas, boxes, flips, dataset.size, device, dataset.decode_stats)
    else:
        x, y = batch
        x = x.to(device, non_blocking=True).permute(0, 3, 1, 2)  # HWC -> NCHW: a channels_last view
        if not channels_last:
            x = x.contiguous()  # transpose the uint8s (a quarter of the bytes of floats)
        x = x.float()
    x = x.div_(127.5).sub_(1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


_DONE = object()


class DeviceBatches:
    """(x, y) of each batch of `make_loader(dataset, batches, workers)`, as `to_input` makes them; use in a
    `with` block, which stops and joins the prefetch thread however it ends.

    With `decode: device` (dataset.raw; `prefetch` None) a thread decodes batch N+1 while batch N trains: on
    CUDA on a side stream of its own (TorchCodec syncs the current stream, which is then that one, not the
    training stream); the training stream waits for the batch's event before use, and `record_stream` keeps
    its memory from being reused early. The batches are the ones without prefetching (tested on the CPU).
    With the workers (Pillow) the DataLoader prefetches already: batches are made as they are asked for."""

    def __init__(self, dataset, batches, workers: int, device, channels_last: bool = False, prefetch=None):
        self.loader = make_loader(dataset, batches, workers, pin=device.type == "cuda")
        self.dataset, self.device, self.channels_last = dataset, device, channels_last
        self.prefetch = dataset.raw if prefetch is None else prefetch
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        if not self.prefetch:
            for batch in self.loader:
                yield to_input(batch, self.dataset, self.device, self.channels_last)
            return
        self.thread = threading.Thread(target=self._produce, name="decode-prefetch", daemon=True)
        self.thread.start()
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                x, y, event, _batch = item  # _batch: the file bytes stay referenced until the batch is used
                if event is not None:
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(event)
                    x.record_stream(stream)
                    y.record_stream(stream)
                yield x, y
        finally:
            self.close()

    def _produce(self) -> None:
        try:
            with contextlib.ExitStack() as scope:
                side = None
                if self.device.type == "cuda":  # this thread's current device and stream
                    side = torch.cuda.Stream(self.device)
                    scope.enter_context(torch.cuda.device(self.device))
                    scope.enter_context(torch.cuda.stream(side))
                for batch in self.loader:
                    x, y = to_input(batch, self.dataset, self.device, self.channels_last)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if self._stop.is_set() or not self._put((x, y, event, batch)):
                        return
            self._put(_DONE)
        except BaseException as exc:  # raised in the consumer
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def close(self, timeout: float = 60.0) -> None:
        """Stop the prefetch thread (after the batch it is making) and wait for it."""
        self._stop.set()
        if self.thread is not None:
            while self.thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
                self.thread.join(timeout=0.05)
                timeout -= 0.1
                if timeout <= 0:  # a daemon thread: it cannot keep the process alive
                    break
