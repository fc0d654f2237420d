"""Training labels read from a file: the `label_file` corruption kind's reader (plan.corruptions).

Formats, by the file's suffix (README "Real and structured label noise", docs/CHOICES.md):
- .npy: one integer array, read with np.load(allow_pickle=False) (an object array is refused); no key.
- .csv: one label per row. Without a key: a single column and no header. With a key: a header row, and
  the key names the column to read (other columns are ignored).
- .pt: a dict of integer numpy arrays, as CIFAR-10N ships CIFAR-10_human.pt (clean_label, worse_label,
  aggre_label, random_label1..3); the key picks one. Read with torch.load(weights_only=True), with only
  numpy's array reconstruction, ndarray, dtype and the integer dtype classes allowed beside torch's own
  safe types: a pickle that names anything else (a function to call) is refused before it runs.

Every label is checked against the base artifact by the caller (plan.corruptions): one per training
example, each in 0..num_classes-1. Every error is a DataError naming the file. torch is imported only to
read a .pt (the Snakemake rules import the registry).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import DataError

SUFFIXES = (".npy", ".csv", ".pt")


def _integers(path: Path, values, what: str) -> np.ndarray:
    """`values` as a 1-d int64 array, or a DataError naming the file."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{path}: {what} has dtype {arr.dtype}, expected integer class labels")
    if arr.ndim != 1:
        raise DataError(f"{path}: {what} has shape {arr.shape}, expected one label per training example (1-d)")
    return arr.astype(np.int64)


def _read_npy(path: Path, key: str | None) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # an object array needs pickle: refused
        raise DataError(f"{path}: not a plain numeric .npy array ({exc}); save integer labels") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as .npy ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: holds several arrays (.npz?); expected one .npy array")
    return _integers(path, arr, "the array")


def _read_csv(path: Path, key: str | None) -> np.ndarray:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: no rows; expected one label per row")
    if key is not None:
        header = [c.strip() for c in rows[0]]
        if key not in header:
            raise DataError(f"{path}: no column {key!r} in the header (columns: {', '.join(header)})")
        col, rows = header.index(key), rows[1:]
    elif len(rows[0]) != 1:
        raise DataError(f"{path}: {len(rows[0])} columns; without a key a .csv is one column of labels, no header")
    else:
        col = 0
    labels = []
    for i, row in enumerate(rows, start=2 if key is not None else 1):
        try:
            labels.append(int(row[col].strip()))
        except (ValueError, IndexError):
            cell = row[col] if col < len(row) else ""
            raise DataError(f"{path}: line {i}: {cell!r} is not an integer label") from None
    return np.asarray(labels, dtype=np.int64)


def _safe_numpy_globals() -> list:
    """What torch.load(weights_only=True) may build besides torch's own types: integer numpy arrays (the
    array reconstruction under its numpy 2 and numpy 1 module names, ndarray, dtype, integer dtype classes)."""
    reconstruct = np._core.multiarray._reconstruct
    ints = [getattr(np.dtypes, f"{s}Int{b}DType") for s in ("", "U") for b in (8, 16, 32, 64)]
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, *ints]


def _read_pt(path: Path, key: str | None) -> np.ndarray:
    import torch

    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (torch raises UnpicklingError, RuntimeError, ...: all mean refused)
        pattern = r"(unsupported GLOBAL \S+|Unsupported global: GLOBAL \S+|Can only build [^\n]*?but got [^\n]*)"
        found = re.search(pattern, str(exc))
        why = found.group(1).rstrip(".") if found else type(exc).__name__
        raise DataError(
            f"{path}: refused by torch.load(weights_only=True) ({why}); expected a dict of integer numpy arrays "
            "such as CIFAR-10N's CIFAR-10_human.pt"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: holds a {type(data).__name__}, expected a dict of label arrays (CIFAR-10N's)")
    if key not in data:
        raise DataError(f"{path}: no key {key!r} (keys: {', '.join(map(str, data))})")
    value = data[key]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    return _integers(path, value, f"key {key!r}")


READERS = {".npy": _read_npy, ".csv": _read_csv, ".pt": _read_pt}


def read_labels(path, key: str | None) -> np.ndarray:
    """The labels of a label file (int64, one per row or element), by its suffix; a DataError naming it."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataError(f"{path}: unknown label file format {path.suffix!r} (expected {', '.join(SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    return READERS[path.suffix](path, key)


def check_labels(path, labels: np.ndarray, n_train: int, num_classes: int) -> np.ndarray:
    """The labels, checked against the base artifact: n_train of them, each in 0..num_classes-1."""
    if len(labels) != n_train:
        raise DataError(
            f"{path}: {len(labels)} labels, expected {n_train} (one per training example of the base artifact, "
            "in its order)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(
            f"{path}: label {bad} is outside 0..{num_classes - 1} (the base artifact's {num_classes} classes)"
        )
    return labels
