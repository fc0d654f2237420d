"""The planning layer: what the pipeline runs, decided from the params file alone, without torch.

- params.py    load and validate a params file, fill in defaults
- datasets.py  what is known of a data source without reading it; its id; whether its paths exist
- corruptions.py  the corruption kinds' registry: names, seeds, draws (draws.py), options, job costs, legends
- label_files.py  the label_file kind's reader (.npy, .csv, CIFAR-10N .pt; torch only to read a .pt)
- grid.py      corruptions, runs and run ids, each run's training settings
- paths.py     where every artifact and output lives
- settings.py  what decides a run's result (its checkpoint's fingerprint)
- packs.py     which runs train together (training.pack) and which jobs start first

The Snakemake rules, the DVC generator and every command plan through this package; it imports
nothing from the stages above it (data, engine, analysis, section5) and never imports torch, except
to build a user's model when its packing or its output shape must be checked.
"""

from ..errors import ConfigError
from .corruptions import CORRUPT_SOURCES, CorruptionKind
from .datasets import (
    SOURCE_SHAPES,
    STREAMED_SOURCES,
    TORCHVISION_FILES,
    TORCHVISION_ROOTS,
    check_data,
    data_shape,
    dataset_id,
    dataset_ids,
    is_streamed,
    torchvision_expected,
    torchvision_missing,
    train_size_of,
    train_sizes,
)
from .grid import (
    REGULARIZERS,
    Corruption,
    Run,
    artifacts_of,
    corruptions_of,
    expand_runs,
    find_run,
    lr_for,
    parse_artifact,
    regularizer_id,
    training_for,
)
from .params import DEFAULTS, SECTION5_DEFAULTS, load, validate
from .paths import artifact_name, base_artifact, corrupted_artifact, run_dir, runs_root

__all__ = [
    "SOURCE_SHAPES",
    "STREAMED_SOURCES",
    "TORCHVISION_FILES",
    "TORCHVISION_ROOTS",
    "check_data",
    "data_shape",
    "dataset_id",
    "dataset_ids",
    "is_streamed",
    "torchvision_expected",
    "torchvision_missing",
    "train_size_of",
    "train_sizes",
    "CORRUPT_SOURCES",
    "CorruptionKind",
    "REGULARIZERS",
    "Corruption",
    "Run",
    "artifacts_of",
    "corruptions_of",
    "expand_runs",
    "find_run",
    "lr_for",
    "parse_artifact",
    "regularizer_id",
    "training_for",
    "DEFAULTS",
    "SECTION5_DEFAULTS",
    "load",
    "validate",
    "artifact_name",
    "base_artifact",
    "corrupted_artifact",
    "run_dir",
    "runs_root",
    "ConfigError",
]
