"""The paper's published numbers and the side-by-side comparison with ours.

`paper_reference.csv` (beside this file) holds every number of the tables of
Zhang et al. (ICLR 2017): Table 1 (CIFAR-10), Table 2 (ImageNet), Table 4
(random labels with regularizers, appendix) and Section 5 (kernels), as
printed. `table2` puts Table 2 (ImageNet, Inception V3) beside our runs, one
row per labels x regularizer setting, where "data augmentation" is our `crop`.

`compare` puts each Table 1 and Table 4 cell beside our runs of the same model,
labels and regularizers, and compares only runs of the paper's setup
(`setup_differences`): the full 50,000 / 10,000 split, center crop 28 (a 28x28
input), momentum 0.9, the paper's learning rate of the model (0.1 Inception,
0.01 AlexNet and the MLPs) decayed per epoch (lr_decay_images unset, or equal
to n_train), by 0.95 for Table 1 and by 0.999 for Table 4. Table 1 cells take
runs without a training variant; Table 4 cells take runs of the variant
`table4` (config/paper-cifar10.yaml's name for them). Runs of any other
variant, split, crop or schedule are left out: a cell with only such runs says
`not comparable`, and `reason` says why ("n_train 500, the paper's 50,000");
a cell with some says how many were left out and why. Batch size, epoch limit,
weight-decay coefficient and dropout rate are not stated by the paper and are
not checked.

A run ends fitted, stopped at its epoch limit (`max_epochs`) or `diverged`
(accuracies blank), and nothing is averaged across those states. `status` and
`within_tolerance` are "not run" (no run of the cell), "not comparable",
"diverged" (every compared seed diverged: `ours` blank), or "mixed" (the
compared seeds ended in different states: `ours` blank, the counts show the
split); otherwise `status` is the seeds' one state (fitted or max_epochs),
`ours` their mean and `within_tolerance` "yes"/"no" (|ours - paper| within
params' paper_tolerance) or "no paper value". seeds_fitted, seeds_stopped and
seeds_diverged count the compared runs by state, not_comparable the runs left
out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..lazy import lazy_module

pd = lazy_module("pandas")

REFERENCE = Path(__file__).with_name("paper_reference.csv")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLUMNS = [
    "table",
    "model",
    "labels",
    "random_crop",
    "weight_decay",
    "dropout",
    "metric",
    "paper",
    "ours",
    "ours_sd",
    "status",
    "seeds_fitted",
    "seeds_stopped",
    "seeds_diverged",
    "not_comparable",
    "diff",
    "tolerance",
    "within_tolerance",
    "reason",
    "note",
]
FLAGS = ("random_crop", "weight_decay", "dropout")


def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE, dtype={"random_crop": str, "weight_decay": str, "dropout": str})


def is_cifar10(meta: dict) -> bool:
    """Official CIFAR-10 or an image-folder copy of it (same classes, 32x32 RGB)."""
    return list(meta.get("classes", [])) == CIFAR10_CLASSES and list(meta.get("shape", [])) == [3, 32, 32]


def run_flags(regularizers: str) -> dict:
    regs = set(regularizers.split("-"))
    return {
        "random_crop": "augment"
        if "augment" in regs
        else "padcrop"
        if "padcrop" in regs
        else ("yes" if "crop" in regs else "no"),
        "weight_decay": "yes" if "wd" in regs else "no",
        "dropout": "yes" if "dropout" in regs else "no",
    }


TABLE2_COLUMNS = [
    "model",
    "labels",
    "augmentation",
    "weight_decay",
    "dropout",
    "paper_train_top1",
    "train_top1",
    "paper_test_top1",
    "test_top1",
    "paper_test_top5",
    "test_top5",
    "best_test_top1",
    "seeds",
    "status",
    "note",
]


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

    def mean(sel, col):  # over seeds that ended in one state only (a mixed cell has no mean)
        one = len(sel) and sel["status"].nunique() == 1
        return float(sel[col].astype(float).mean()) if one and col in sel else np.nan

    rows = []
    for cell in cells:
        sel = ours[(ours[keys] == pd.Series(cell, index=keys)).all(axis=1)]
        paper = ref[(ref[keys] == pd.Series(cell, index=keys)).all(axis=1)].set_index("metric")
        value = lambda m, paper=paper: float(paper.loc[m, "value"]) if m in paper.index else np.nan
        notes = [n for n in paper["note"] if isinstance(n, str) and not n.endswith("columns")] if len(paper) else []
        rows.append(
            {
                "model": cell[0],
                "labels": cell[1],
                "augmentation": cell[2],
                "weight_decay": cell[3],
                "dropout": cell[4],
                "paper_train_top1": value("train_top1"),
                "train_top1": mean(sel, "train_acc"),
                "paper_test_top1": value("test_top1"),
                "test_top1": mean(sel, "test_acc"),
                "paper_test_top5": value("test_top5"),
                "test_top5": mean(sel, "test_top5"),
                "best_test_top1": mean(sel, "best_test_acc"),
                "seeds": len(sel),
                "status": (
                    "not run"
                    if not len(sel)
                    else sel["status"].iloc[0]
                    if sel["status"].nunique() == 1
                    else "mixed (" + ", ".join(sorted(set(sel["status"]))) + ")"
                ),
                "note": "; ".join(notes) if len(paper) else "not in the paper",
            }
        )
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


# Table 1 and Table 4 setup as the paper states it (SETUP.md); config/paper-cifar10.yaml uses these values.
PAPER_N_TRAIN, PAPER_N_TEST, PAPER_CROP = 50_000, 10_000, 28
PAPER_LR = {"inception": 0.1, "inception_nobn": 0.1, "alexnet": 0.01, "mlp_3x512": 0.01, "mlp_1x512": 0.01}
PAPER_MOMENTUM = 0.9
TABLE4_VARIANT = "table4"  # config/paper-cifar10.yaml's name for Table 4's runs
PAPER_VARIANT = {"table1": "", "table4": TABLE4_VARIANT}
PAPER_LR_DECAY = {"table1": 0.95, "table4": 0.999}  # per epoch
STATES = ("fitted", "max_epochs", "diverged")


def _missing(v) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list (input_shape) is not missing
        return False


def _number(v):
    """A summary value as a float, or None where it is not a number ("yes"/"no" of a flag column)."""
    if _missing(v) or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _shape(v):
    if isinstance(v, str):
        v = [p for p in v.strip("[]() ").replace(",", " ").split()]
    try:
        return [int(p) for p in v]
    except (TypeError, ValueError):
        return None


def _fmt(v) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


def setup_differences(run, table: str) -> list[str]:
    """Why a run is not comparable with a cell of `table` ("table1" or "table4"): its settings that
    differ from the paper's (or are not recorded), one phrase each; empty when it is comparable."""
    why = []
    get = (lambda k: run.get(k)) if isinstance(run, dict) else (lambda k: run[k] if k in run.index else None)
    variant = "" if _missing(get("variant")) else str(get("variant"))
    if variant != PAPER_VARIANT[table]:
        want = f"variant {TABLE4_VARIANT}" if table == "table4" else "no variant"
        why.append(f"variant {variant or 'none'}, the paper's {table} runs are {want}")
    for key, want in (("n_train", PAPER_N_TRAIN), ("n_test", PAPER_N_TEST)):
        v = _number(get(key))
        if v is None:
            why.append(f"{key} not recorded")
        elif v != want:
            why.append(f"{key} {_fmt(v)}, the paper's {want:,}")
    crop = _number(get("crop"))  # the center crop size (load_summaries may have replaced it by a flag)
    if crop is not None and crop != PAPER_CROP:
        why.append(f"crop {_fmt(crop)}, the paper's {PAPER_CROP}")
    shape = _shape(get("input_shape"))
    if shape is None and crop is None:
        why.append("input shape not recorded")
    elif shape is not None and shape[-2:] != [PAPER_CROP, PAPER_CROP]:
        why.append(f"input {'x'.join(map(str, shape))}, the paper's 3x{PAPER_CROP}x{PAPER_CROP}")
    model = get("model")
    for key, want in (("lr", PAPER_LR.get(model)), ("momentum", PAPER_MOMENTUM), ("lr_decay", PAPER_LR_DECAY[table])):
        v = _number(get(key))
        if want is None:
            why.append(f"model {model} is not in the paper's tables")
        elif v is None:
            why.append(f"{key} not recorded")
        elif not np.isclose(v, want, rtol=1e-9, atol=0):
            why.append(f"{key} {_fmt(v)}, the paper's {_fmt(want)}")
    optimizer = get("optimizer")  # recorded only where it is not sgd (plan.settings.run_settings)
    if isinstance(optimizer, str) and optimizer != "sgd":
        why.append(f"optimizer {optimizer}, the paper's SGD with momentum")
    images = _number(get("lr_decay_images"))
    n_train = _number(get("n_train"))
    if images is not None and images != n_train:  # per n_train images seen is the same as per epoch
        why.append(f"lr decay per {_fmt(images)} images, the paper's per epoch")
    return why


def compare(runs: pd.DataFrame, tolerance: dict) -> pd.DataFrame:
    """Every Table 1 and Table 4 cell: the paper's value, our mean over seeds, the difference.

    See the module docstring for which runs a cell takes and how their states are reported."""
    ref = reference()
    ref = ref[ref["table"].isin(["table1", "table4"]) & ref["metric"].isin(["train_acc", "test_acc"])]
    ours = runs.copy()
    ours["labels"] = ours["corruption"].map({"true-labels": "true", "random-labels": "random"})
    ours = ours[ours["labels"].notna()]
    flags = pd.DataFrame([run_flags(r) for r in ours["regularizers"]], index=ours.index, columns=list(FLAGS))
    ours = ours.join(flags.add_suffix("_flag"))  # the runs' own weight_decay etc. are coefficients
    if "status" not in ours:
        ours["status"] = np.nan
    rows = []
    for _, r in ref.iterrows():
        cell = ours[
            (ours["model"] == r["model"])
            & (ours["labels"] == r["labels"])
            & (ours["random_crop_flag"] == r["random_crop"])
            & (ours["weight_decay_flag"] == r["weight_decay"])
            & (ours["dropout_flag"] == r["dropout"])
        ]
        why = {i: setup_differences(run, r["table"]) for i, run in cell.iterrows()}
        sel = cell.loc[pd.Series({i: not why[i] for i in cell.index}, index=cell.index, dtype=bool)]
        other = [i for i in cell.index if why[i]]
        reasons = list(dict.fromkeys(w for i in other for w in why[i]))  # each reason once, in order
        counts = {s: int((sel["status"] == s).sum()) for s in STATES}
        states = sorted(set(sel["status"].fillna("unknown")))
        tol = float(tolerance[r["metric"]])
        mean = sd = diff = np.nan
        if not len(cell):
            status = verdict = "not run"
        elif not len(sel):
            status = verdict = "not comparable"
        elif len(states) > 1:
            status = verdict = "mixed"
        elif states[0] == "diverged":
            status = verdict = "diverged"
        else:
            status = states[0]
            values = sel[r["metric"]].astype(float)
            mean = float(values.mean())
            sd = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            if np.isnan(r["value"]):
                verdict = "no paper value"
            else:
                diff = mean - r["value"]
                verdict = "yes" if abs(diff) <= tol else "no"
        reason = "; ".join(reasons)
        if len(sel) and other:
            reason = f"{len(other)} run(s) left out: {reason}"
        rows.append(
            {
                "table": r["table"],
                "model": r["model"],
                "labels": r["labels"],
                "random_crop": r["random_crop"],
                "weight_decay": r["weight_decay"],
                "dropout": r["dropout"],
                "metric": r["metric"],
                "paper": r["value"],
                "ours": mean,
                "ours_sd": sd,
                "status": status,
                "seeds_fitted": counts["fitted"],
                "seeds_stopped": counts["max_epochs"],
                "seeds_diverged": counts["diverged"],
                "not_comparable": len(other),
                "diff": diff,
                "tolerance": tol,
                "within_tolerance": verdict,
                "reason": reason,
                "note": r["note"] if isinstance(r["note"], str) else "",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def comparison_header(runs: pd.DataFrame, meta: dict, tolerance: dict) -> str:
    """The heading of paper_comparison.md: tolerance, dataset and the split sizes our runs had."""

    def sizes(key):
        vals = sorted({int(v) for v in runs[key].dropna()}) if key in runs else []
        return " / ".join(f"{v:,}" for v in vals) or "not recorded"

    return (
        "# Our numbers beside the paper's (Tables 1 and 4, CIFAR-10)\n\n"
        f"Tolerance: train accuracy {tolerance['train_acc']:g} points, test accuracy "
        f"{tolerance['test_acc']:g} points. Dataset: {meta['dataset']} "
        f"({meta.get('provenance', {}).get('source')}); n_train {sizes('n_train')}, n_test {sizes('n_test')} "
        f"(the paper's {PAPER_N_TRAIN:,} / {PAPER_N_TEST:,}). Only runs of the paper's setup are compared "
        "(see `reason`); `status` is the state of a cell's seeds (fitted, max_epochs: stopped at the epoch "
        "limit, diverged), and seeds in different states are `mixed`, not averaged.\n\n"
    )
