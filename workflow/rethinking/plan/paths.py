"""Paths of artifacts and outputs, relative to the working directory as Snakemake and DVC see them."""

from __future__ import annotations

from pathlib import Path

from .datasets import dataset_id
from .grid import Corruption, Run


def base_artifact(cfg: dict, dataset: str | None = None) -> Path:
    """The base artifact of a dataset id (default: the params' dataset; a training-set size's id, `<id>-n<size>`)."""
    return Path(cfg["results_dir"]) / "data" / (dataset or dataset_id(cfg)) / "base.npz"


def corrupted_artifact(cfg: dict, corruption: Corruption, dataset: str | None = None) -> Path:
    return Path(cfg["results_dir"]) / "data" / (dataset or dataset_id(cfg)) / f"{corruption.id}.npz"


def artifact_name(dataset: str, corruption: Corruption) -> str:
    """A corrupt job's name, and its artifact's path under results/data without .npz: `<dataset>/<corruption id>`."""
    return f"{dataset}/{corruption.id}"


def runs_root(cfg: dict) -> Path:
    """The folder holding every run folder."""
    return Path(cfg["results_dir"]) / "runs"


def run_dir(cfg: dict, run: Run) -> Path:
    return runs_root(cfg) / run.id
