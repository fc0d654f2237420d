"""Stage `prepare` of a training-set size (a grid group's `train_sizes`): the base artifact `<id>-n<size>`.

Each size is a seeded class-balanced subset of the params' dataset's training set, read from its base artifact:
every class's images in one seeded order (dataset.seed), the first n // K of each (one more for the first
n % K classes). So the sets are nested (a smaller size's images are inside every larger one's, which makes a
sample-size sweep add examples rather than redraw them), and the test set is the params' dataset's, unchanged,
so test errors at two sizes are measured on the same images. The same code serves base artifacts of images
(x_train) and streamed indices (train_files): every training array is cut, the rest kept as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import load_npz, save_npz, sha256
from ..plan import base_artifact, dataset_id, train_size_of

TRAIN_ARRAYS = ("x_train", "y_train", "origin_train", "train_files")  # one row per training image


def nested_subset(y: np.ndarray, n: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of n training images, class-balanced, each class's first ones in one seeded order (so the
    subsets of two sizes are nested)."""
    if n > len(y):
        raise DataError(f"grid: train_sizes: {n} is larger than the training set ({len(y)} images)")
    rng = np.random.default_rng([seed, 3])  # 1: the params' subsets (data.sources.load_source), 2: unused
    picked = []
    for c in range(num_classes):
        order = rng.permutation(np.flatnonzero(y == c))
        want = n // num_classes + (1 if c < n % num_classes else 0)
        if len(order) < want:
            raise DataError(
                f"grid: train_sizes: {n} needs {want} images of class {c}, the training set has {len(order)}"
            )
        picked.append(order[:want])
    return np.sort(np.concatenate(picked))


def prepare_subset(cfg: dict, dataset: str) -> Path:
    """The base artifact of a training-set size's dataset id, cut from the params' dataset's base artifact."""
    n = train_size_of(cfg, dataset)
    if n is None:
        raise DataError(f"dataset: {dataset!r} is the params' dataset itself, not a training-set size")
    full = base_artifact(cfg)
    meta, arrays = load_npz(full, rebuild_hint=f"`python -m rethinking prepare --dataset {dataset_id(cfg)}`")
    keep = nested_subset(np.asarray(arrays["y_train"]), n, len(meta["classes"]), cfg["dataset"]["seed"])
    cut = {k: (np.asarray(v)[keep] if k in TRAIN_ARRAYS else v) for k, v in arrays.items() if k != "__meta__"}
    provenance = dict(meta.get("provenance", {}), train_size=int(n))
    subset_of = {"path": str(full), "sha256": sha256(full), "dataset": meta["dataset"]}
    out = base_artifact(cfg, dataset)
    save_npz(out, {**meta, "dataset": dataset, "provenance": provenance, "subset_of": subset_of}, **cut)
    return out
