"""Stage `aggregate`: every run folder of the grid -> tidy tables under results/tables/.

- runs.csv         one row per run and seed: the run's summary
- table1.csv/.md   Table 1: train and test accuracy (percent) per model x
                   regularizers, true and random labels (mean and spread over seeds)
- convergence.csv  Fig. 1b/1c: steps to fit and test error per model x
                   corruption kind x level (runs without regularizers)
- loss_curves.csv  Fig. 1a: training loss every `log_every` steps per model x
                   corruption (runs without regularizers)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import expand_runs, run_dir
from .io import ArtifactError, write_csv, write_text

TABLES = ("runs.csv", "table1.csv", "table1.md", "convergence.csv", "loss_curves.csv")


def tables_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "tables"


def load_summaries(cfg: dict) -> pd.DataFrame:
    rows = []
    for run in expand_runs(cfg):
        path = run_dir(cfg, run) / "summary.json"
        try:
            s = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; train the run first (python -m rethinking train --run {run.id})") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc}); delete the run folder and retrain it") from None
        s.pop("versions", None)
        s["label_level"] = run.corruption.label_level
        rows.append(s)
    frame = pd.DataFrame(rows)
    frame["crop"] = frame["regularizers"].map(lambda r: "yes" if "crop" in r.split("-") else "no")
    frame["weight_decay_on"] = frame["regularizers"].map(lambda r: "yes" if "wd" in r.split("-") else "no")
    frame["dropout_on"] = frame["regularizers"].map(lambda r: "yes" if "dropout" in r.split("-") else "no")
    return frame


def _spread(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    sel = runs[runs["corruption"].isin(["true-labels", "random-labels"])].copy()
    sel["labels"] = sel["corruption"].map({"true-labels": "true", "random-labels": "random"})
    keys = ["model", "labels", "crop", "weight_decay_on", "dropout_on"]
    table = (sel.groupby(keys, sort=False)
             .agg(train_acc=("train_acc", "mean"), train_acc_sd=("train_acc", _spread),
                  test_acc=("test_acc", "mean"), test_acc_sd=("test_acc", _spread),
                  seeds=("seed", "count"), fitted=("status", lambda s: int((s == "fitted").sum())),
                  parameters=("parameters", "first"))
             .reset_index()
             .rename(columns={"weight_decay_on": "weight_decay", "dropout_on": "dropout"}))
    order = {m: i for i, m in enumerate(["inception", "inception_nobn", "alexnet", "mlp_3x512", "mlp_1x512"])}
    table["_m"] = table["model"].map(order).fillna(99)
    table["_l"] = (table["labels"] == "random").astype(int)
    table = table.sort_values(["_m", "_l", "crop", "weight_decay", "dropout"], ascending=[True, True, False, False, False])
    return table.drop(columns=["_m", "_l"]).reset_index(drop=True)


def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    sel = runs[runs["regularizers"] == "none"].copy()
    true_steps = (sel[sel["corruption"] == "true-labels"]
                  .set_index(["model", "seed"])["step_first_fit"].rename("true_steps"))
    sel = sel.join(true_steps, on=["model", "seed"])
    sel["relative_steps"] = sel["step_first_fit"] / sel["true_steps"]
    sel["test_error"] = 100.0 - sel["test_acc"]
    cols = ["model", "corruption", "corruption_kind", "label_level", "seed", "status", "step_first_fit",
            "relative_steps", "epochs", "train_acc", "test_acc", "test_error"]
    return sel[cols].sort_values(["model", "corruption_kind", "label_level", "corruption", "seed"],
                                 na_position="last").reset_index(drop=True)


def loss_curves(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for _, r in runs[runs["regularizers"] == "none"].iterrows():
        path = Path(cfg["results_dir"]) / "runs" / r["run"] / "steps.csv"
        f = pd.read_csv(path)
        f.insert(0, "seed", r["seed"])
        f.insert(0, "corruption", r["corruption"])
        f.insert(0, "model", r["model"])
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=["model", "corruption", "seed", "step", "epoch", "train_loss"])
    return pd.concat(frames, ignore_index=True)


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def aggregate(cfg: dict) -> Path:
    out = tables_dir(cfg)
    runs = load_summaries(cfg)
    write_csv(out / "runs.csv", runs)
    t1 = table1(runs)
    write_csv(out / "table1.csv", t1)
    write_text(out / "table1.md", "# Table 1: training and test accuracy (%)\n\n" + to_markdown(t1))
    write_csv(out / "convergence.csv", convergence(runs))
    write_csv(out / "loss_curves.csv", loss_curves(cfg, runs))
    return out
