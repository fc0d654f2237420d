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
(the comment above `_decode_jpegs` says why TorchCodec and not torchvision.io).
"""

from __future__ import annotations

import io as _io
import math
import os
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


def decode_crop(
    data: bytes, size: int, augment: bool, seed: int = 0, epoch: int = 0, index: int = 0, where: str = ""
) -> np.ndarray:
    """One image file -> its crop, size x size x 3 uint8 (HWC), decoded at reduced scale where the crop allows."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as im:
            width, height = im.size
            box, flip = crop_params(width, height, augment, seed, epoch, index)
            reduce = min(box[2] - box[0], box[3] - box[1]) / size
            if reduce >= 2 and im.format == "JPEG":  # libjpeg decodes at 1/2, 1/4 or 1/8 scale
                im.draft(None, (math.ceil(width / reduce), math.ceil(height / reduce)))
                sx, sy = im.size[0] / width, im.size[1] / height
                box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            if im.mode != "RGB":
                im = im.convert("RGB")
            im = im.resize((size, size), Image.BILINEAR, box=box)
            if flip:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            return np.array(im, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: not a readable image ({exc.__class__.__name__}: {exc})") from None


def image_size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding."""
    from PIL import Image

    with Image.open(_io.BytesIO(data)) as im:
        return im.size


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

    def __init__(self, root, names, labels, size: int, augment: bool, seed: int = 0, raw: bool = False):
        self.reader = _Reader(root)
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
            width, height = image_size_of(data)
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


def _decode_jpegs(datas, device: torch.device) -> list[torch.Tensor]:
    """File bytes (1-D uint8 CPU tensors) -> 3 x H x W uint8 RGB tensors on `device`, the JPEGs in one batched
    call. A file it refuses (a PNG among the JPEGs, a JPEG nvJPEG cannot do) is decoded by Pillow, as the
    workers would, and copied over."""
    from torchcodec.decoders import decode_jpeg

    try:
        return decode_jpeg(list(datas), mode="RGB", device=device)
    except RuntimeError:
        images = []
        for d in datas:
            try:
                images.append(decode_jpeg(d, mode="RGB", device=device))
            except RuntimeError:
                images.append(_pillow_rgb(d).to(device))
        return images


def _pillow_rgb(data: torch.Tensor) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data.numpy().tobytes())) as im:  # an animated GIF/WebP: its first frame
            return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"not a readable image ({exc.__class__.__name__}: {exc})") from None


def decode_batch(datas, boxes, flips, size: int, device: torch.device) -> torch.Tensor:
    """Decode file bytes on `device` (TorchCodec: nvJPEG on CUDA) and crop: N x 3 x size x size floats 0..255.
    On the CPU this runs in the training process alone (slower than `workers` there: a test path)."""
    import torch.nn.functional as F

    images = _decode_jpegs(datas, device)
    out = torch.empty((len(images), 3, size, size), device=device)
    for k, (img, (left, top, right, bottom), flip) in enumerate(zip(images, boxes, flips)):
        crop = img[None, :, top:bottom, left:right]
        # uint8 has a fast antialiased path on the CPU; CUDA resamples floats
        crop = crop.contiguous() if device.type == "cpu" else crop.float()
        out[k] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        if flip:
            out[k] = out[k].flip(-1)
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
        x = decode_batch(datas, boxes, flips, dataset.size, device)
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
