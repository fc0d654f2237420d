"""The paper's published numbers and the side-by-side comparison with ours.

`paper_reference.csv` (beside this file) holds every number of the tables of
Zhang et al. (ICLR 2017): Table 1 (CIFAR-10), Table 2 (ImageNet), Table 4
(random labels with regularizers, appendix) and Section 5 (kernels), as
printed. `compare` puts each Table 1 and Table 4 cell beside our mean over
seeds. Table 1 cells match runs without a training variant; Table 4 cells
(trained with the learning-rate decay raised to 0.999) match runs of a variant.
`table2` does the same for Table 2 (ImageNet, Inception V3), one row per
labels x regularizer setting, where "data augmentation" is our `crop`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE = Path(__file__).with_name("paper_reference.csv")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLUMNS = ["table", "model", "labels", "random_crop", "weight_decay", "dropout", "metric", "paper", "ours",
           "ours_sd", "seeds", "diff", "tolerance", "within_tolerance", "note"]


def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE, dtype={"random_crop": str, "weight_decay": str, "dropout": str})


def is_cifar10(meta: dict) -> bool:
    """Official CIFAR-10 or an image-folder copy of it (same classes, 32x32 RGB)."""
    return list(meta.get("classes", [])) == CIFAR10_CLASSES and list(meta.get("shape", [])) == [3, 32, 32]


def run_flags(regularizers: str) -> dict:
    regs = set(regularizers.split("-"))
    return {"random_crop": "augment" if "augment" in regs else ("yes" if "crop" in regs else "no"),
            "weight_decay": "yes" if "wd" in regs else "no",
            "dropout": "yes" if "dropout" in regs else "no"}


TABLE2_COLUMNS = ["model", "labels", "augmentation", "weight_decay", "dropout",
                  "paper_train_top1", "train_top1", "paper_test_top1", "test_top1", "paper_test_top5", "test_top5",
                  "best_test_top1", "seeds", "status", "note"]


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Table 2: every cell of the paper beside our mean over seeds (blank where not run), then our other
    true/random-label runs of the grid."""
    ref = reference()
    ref = ref[ref["table"] == "table2"]
    ours = runs[runs["corruption"].isin(["true-labels", "random-labels"]) & (runs["variant"].fillna("") == "")].copy()
    ours["labels"] = ours["corruption"].map({"true-labels": "true", "random-labels": "random"})
    flags = pd.DataFrame([run_flags(r) for r in ours["regularizers"]], index=ours.index, dtype=object)
    ours = ours.drop(columns=[c for c in flags.columns if c in ours.columns]).join(flags)
    keys = ["model", "labels", "random_crop", "weight_decay", "dropout"]
    cells = ref[keys].drop_duplicates().values.tolist()
    cells += [c for c in ours[keys].drop_duplicates().values.tolist() if c not in cells]

    def mean(sel, col):
        return float(sel[col].astype(float).mean()) if len(sel) and col in sel else np.nan

    rows = []
    for cell in cells:
        sel = ours[(ours[keys] == pd.Series(cell, index=keys)).all(axis=1)]
        paper = ref[(ref[keys] == pd.Series(cell, index=keys)).all(axis=1)].set_index("metric")
        value = (lambda m: float(paper.loc[m, "value"]) if m in paper.index else np.nan)
        notes = [n for n in paper["note"] if isinstance(n, str) and not n.endswith("columns")] if len(paper) else []
        rows.append({
            "model": cell[0], "labels": cell[1], "augmentation": cell[2], "weight_decay": cell[3],
            "dropout": cell[4], "paper_train_top1": value("train_top1"), "train_top1": mean(sel, "train_acc"),
            "paper_test_top1": value("test_top1"), "test_top1": mean(sel, "test_acc"),
            "paper_test_top5": value("test_top5"), "test_top5": mean(sel, "test_top5"),
            "best_test_top1": mean(sel, "best_test_acc"), "seeds": len(sel),
            "status": ", ".join(sorted(set(sel["status"]))) if len(sel) else "not run",
            "note": "; ".join(notes) if len(paper) else "not in the paper",
        })
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def compare(runs: pd.DataFrame, tolerance: dict) -> pd.DataFrame:
    """Every Table 1 and Table 4 cell: the paper's value, our mean over seeds, the difference."""
    ref = reference()
    ref = ref[ref["table"].isin(["table1", "table4"]) & ref["metric"].isin(["train_acc", "test_acc"])]
    ours = runs.copy()
    ours["labels"] = ours["corruption"].map({"true-labels": "true", "random-labels": "random"})
    ours = ours[ours["labels"].notna()]
    flags = pd.DataFrame([run_flags(r) for r in ours["regularizers"]], index=ours.index)
    ours = ours.drop(columns=[c for c in flags.columns if c in ours.columns]).join(flags)  # coefficients -> yes/no
    ours["table"] = np.where(ours["variant"].fillna("") == "", "table1", "table4")
    rows = []
    for _, r in ref.iterrows():
        sel = ours[(ours["table"] == r["table"]) & (ours["model"] == r["model"]) & (ours["labels"] == r["labels"])
                   & (ours["random_crop"] == r["random_crop"]) & (ours["weight_decay"] == r["weight_decay"])
                   & (ours["dropout"] == r["dropout"])]
        values = sel[r["metric"]].astype(float)
        mean = float(values.mean()) if len(values) else np.nan
        tol = float(tolerance[r["metric"]])
        diff = mean - r["value"] if len(values) and not np.isnan(r["value"]) else np.nan
        rows.append({
            "table": r["table"], "model": r["model"], "labels": r["labels"], "random_crop": r["random_crop"],
            "weight_decay": r["weight_decay"], "dropout": r["dropout"], "metric": r["metric"],
            "paper": r["value"], "ours": mean, "ours_sd": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
            "seeds": len(values), "diff": diff, "tolerance": tol,
            "within_tolerance": ("not run" if not len(values) else
                                 "no paper value" if np.isnan(r["value"]) else
                                 "yes" if abs(diff) <= tol else "no"),
            "note": r["note"] if isinstance(r["note"], str) else "",
        })
    return pd.DataFrame(rows, columns=COLUMNS)
