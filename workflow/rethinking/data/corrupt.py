"""Stage `corrupt`: base artifact + corruption -> corrupted artifact (Section 2 of the paper).

What each corruption kind does, its seed and its draw are its entry in the registry,
rethinking.plan.corruptions (the draws themselves: rethinking.plan.draws); this stage reads the base
artifact, asks the kind's draw for the arrays it replaces (with the kind's options from params'
corruption_options, where it takes any, and the base's class names as base["classes"]) and writes the
artifact, the same way for every kind; a kind's `describe` adds what its meta records of its options.

A label-only corruption stores labels and a reference (path and SHA-256) to
its base artifact, never a second copy of the images. Which training labels
are corrupted is not stored: load_corrupted returns the base's training
labels beside the artifact's (`y_train_true`), and corrupted_mask compares
them, so artifacts made before the mask existed give it too. A label the
draw replaced by its own class is not corrupted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..files import load_npz, save_npz, sha256
from ..plan import Corruption, artifact_name, base_artifact, corrupted_artifact, dataset_id
from ..plan import corruptions as registry

# the draws, from where they live (the registry's layer), for the modules and tests that use them from here
from ..plan.draws import corrupt_labels, gaussian_like, gaussian_params, random_pixels, shuffle_pixels, stored_moments

__all__ = [
    "corrupt",
    "load_corrupted",
    "corrupted_mask",
    "training_labels",
    "corrupt_labels",
    "gaussian_like",
    "gaussian_params",
    "random_pixels",
    "shuffle_pixels",
    "stored_moments",
]


def _rng(seed: int, corruption: Corruption) -> np.random.Generator:
    """The generator of a corruption's draws for dataset seed `seed` (from its kind's seed key)."""
    return registry.rng(seed, corruption.kind, corruption.level)


def training_labels(y_train: np.ndarray, level: float, num_classes: int, seed: int) -> np.ndarray:
    """The training labels of the corrupted artifact for label corruption `level` (dataset seed `seed`).

    Exactly what `corrupt` stores as y_train for Corruption.make("labels", level) on a base artifact
    whose training labels are y_train and whose class list has num_classes entries, whether or not that
    artifact exists: level 0 is the true labels, any other level the same seeded draw (the same call,
    plan.corruptions.draw). The kernels stage uses it so its label-noise curve fits the networks' noisy labels.
    """
    corruption = Corruption.make("labels", level)
    y_train = np.asarray(y_train)
    drawn = registry.draw(corruption.kind, corruption.level, {"y_train": y_train}, num_classes, seed)
    return drawn.get("y_train", y_train)


def corrupt(cfg: dict, corruption: Corruption, dataset: str | None = None) -> Path:
    """The corrupted artifact of `corruption` on a dataset id (default: the params' dataset)."""
    base_path = base_artifact(cfg, dataset)
    hint = f"`python -m rethinking prepare --dataset {dataset or dataset_id(cfg)}`"
    meta, base = load_npz(base_path, rebuild_hint=hint)
    kind = registry.kind_of(corruption.kind)
    options = registry.options_for(cfg, corruption.kind)  # {} for a kind without options
    drawn = registry.draw(
        corruption.kind,
        corruption.level,
        {**base, "classes": meta["classes"]},
        len(meta["classes"]),
        cfg["dataset"]["seed"],
        options,
    )
    out = {"y_train": base["y_train"], "y_test": base["y_test"], **drawn}
    info = {
        "kind": "corrupted",
        "corruption": corruption.id,
        "level": corruption.level,
        "dataset": meta["dataset"],
        "classes": meta["classes"],
        "shape": meta["shape"],
        "seed": cfg["dataset"]["seed"],
    }
    if "y_train" in drawn:
        info["labels_changed"] = float(np.mean(out["y_train"] != base["y_train"]))
    if kind.describe is not None:
        info.update(kind.describe(options))  # a label file's path, SHA-256 and key; a pairflip map
    if kind.touches == "labels":
        info["base"] = {"path": str(base_path), "sha256": sha256(base_path)}
    path = corrupted_artifact(cfg, corruption, dataset)
    save_npz(path, info, **out)
    return path


def corrupted_mask(arrays: dict) -> np.ndarray:
    """Which training examples carry a corrupted label (bool, one per training example): those whose label
    differs from the base artifact's, of load_corrupted's arrays (or load_streamed's dict). A label the draw
    replaced by its own class is intact; pixel corruptions corrupt no label. The mask depends on the
    artifact only (dataset.seed), so every training seed of a run shares it."""
    return np.asarray(arrays["y_train"]) != np.asarray(arrays["y_train_true"])


def load_corrupted(cfg: dict, corruption: Corruption, dataset: str | None = None) -> tuple[dict, dict]:
    """(meta, arrays) of a corrupted artifact with images resolved from its base if needed.

    arrays["y_train_true"] holds the base artifact's training labels (the true ones): read from the base a
    label artifact references; for a pixel corruption, whose labels are the base's, its own y_train."""
    path = corrupted_artifact(cfg, corruption, dataset)
    name = artifact_name(dataset or dataset_id(cfg), corruption)
    hint = f"`python -m rethinking corrupt --params <file> --corruption {name}` (or rerun the pipeline)"
    meta, arrays = load_npz(path, rebuild_hint=hint)
    if meta.get("kind") != "corrupted" or meta.get("corruption") != corruption.id:
        raise ArtifactError(
            f"{path}: holds {meta.get('corruption')!r}, expected {corruption.id!r}; rebuild it with {hint}"
        )
    if "x_train" not in arrays:
        base_path = Path(meta["base"]["path"])
        if not base_path.is_file() or sha256(base_path) != meta["base"]["sha256"]:
            raise ArtifactError(
                f"{path}: its base artifact {base_path} is missing or has changed since the "
                f"labels were drawn; rebuild it with {hint}"
            )
        _, base = load_npz(base_path)
        arrays["x_train"], arrays["x_test"] = base["x_train"], base["x_test"]
        arrays["y_train_true"] = base["y_train"]
    else:
        arrays["y_train_true"] = arrays["y_train"]
    return meta, arrays
