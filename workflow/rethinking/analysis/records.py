"""Stage `records`: the runs' per-example records (examples.npz) -> which labels are wrong, in tables and figures.

Its entries are registered in rethinking.analysis.examples (noise_detection.csv, example_agreement.csv,
suspects.csv, example_metrics.json) and rethinking.analysis.example_figures (data_map, learned_epochs,
detection_roc, suspect_images), from the scores of rethinking.analysis.scores. A stage of its own, beside
`aggregate` rather than in it: both read the finished runs, so Snakemake runs them side by side, and a new
score or a change to these outputs reruns this stage only. Its functions get cfg, runs (the runs' summaries,
as aggregate reads them), meta (the base artifact's) and records (a loader of each run's record).
"""

from __future__ import annotations

from pathlib import Path

from ..files import read_meta
from ..plan import base_artifact
from . import example_figures, examples  # noqa: F401  (the stage's entries)
from .aggregate import load_summaries, of_params_dataset, tables_dir
from .outputs import produce
from .scores import Records


def records(cfg: dict) -> Path:
    """Every entry of the stage, from the grid's run folders (a run without a record is left out)."""
    runs = of_params_dataset(load_summaries(cfg), cfg)
    produce("records", cfg, runs=runs, meta=read_meta(base_artifact(cfg)), records=Records(cfg))
    return tables_dir(cfg)
