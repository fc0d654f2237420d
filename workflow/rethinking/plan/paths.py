"""Paths of artifacts and outputs, relative to the working directory as Snakemake and DVC see them."""

from __future__ import annotations

from pathlib import Path

from .datasets import dataset_id
from .grid import Corruption, Run


def base_artifact(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "data" / dataset_id(cfg) / "base.npz"


def corrupted_artifact(cfg: dict, corruption: Corruption) -> Path:
    return Path(cfg["results_dir"]) / "data" / dataset_id(cfg) / f"{corruption.id}.npz"


def runs_root(cfg: dict) -> Path:
    """The folder holding every run folder."""
    return Path(cfg["results_dir"]) / "runs"


def run_dir(cfg: dict, run: Run) -> Path:
    return runs_root(cfg) / run.id
