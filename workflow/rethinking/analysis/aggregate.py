"""Stage `aggregate`: every run folder of the grid -> tidy tables under results/tables/.

- runs.csv         one row per run and seed: the run's summary
- table1.csv/.md   Table 1: train and test accuracy (percent) per model x
                   regularizers, true and random labels (mean and spread over seeds, when
                   every seed ended in the same state: `status`; "mixed" cells have no mean)
- convergence.csv  Fig. 1b/1c: one row per run without regularizers: status, steps
                   trained, step of first fit, test error, and the time to fit
                   relative to the same-seed true-label run (see convergence())
- loss_curves.csv  Fig. 1a: training loss every `log_every` steps per model x
                   corruption (runs without regularizers), with each run's status
- accuracy_curves.csv  Fig. 2b: train and test accuracy per epoch of every run, with its status
- paper_comparison.csv/.md  each Table 1 / Table 4 cell beside the paper's value
                   (CIFAR-10 and image-folder copies of it; empty otherwise)
- metrics.json     the headline numbers per model (and run counts by state), for `dvc metrics show`
                   and `dvc exp show` (see metrics())
- memorization.csv  memorization under label noise: per epoch of every label-corrupted run
                   (labels at p > 0, random labels, pairflip at p > 0, a label file), the training
                   set split by its labels (clean_acc, noisy_memorized, noisy_true, percent; blank
                   for run folders written before the engines recorded them) beside train and test
                   accuracy; `corruption_kind` and `level` (blank for a label file) say which noise
- early_stopping.csv  per label-corrupted run (and the true-label runs of the same model and
                   regularizers, at level 0): the best test accuracy over its epochs, where it was,
                   the final one and the gap, with the mean over the seeds of a cell when they all
                   ended in one state (see early_stopping())
- table2.csv/.md   Table 2 (ImageNet; only for streamed datasets): top-1 train,
                   top-1 and top-5 test accuracy per labels x regularizers, the
                   paper's numbers beside ours
- noise_detection.csv, example_agreement.csv, suspects.csv, example_metrics.json and the figures
                   data_map, learned_epochs, detection_roc, suspect_images: from the runs' per-example
                   records (examples.npz), in rethinking.analysis.examples and example_figures
Spreads are the sample standard deviation over seeds (sd) and the half-width
of the 95% t-interval of the mean (ci95).

Each table is one entry of the registry (rethinking.analysis.outputs: `@table(...)` on the function that makes
it, with its caption); `aggregate` writes the entries of its stage. pandas is imported on first use (lazy):
the Snakemake rules and the DVC generator import this module for the entries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..engine.metrics import metric_columns
from ..errors import ArtifactError
from ..files import read_meta
from ..lazy import lazy_module
from ..plan import Corruption, base_artifact, dataset_id, expand_runs, is_streamed, run_dir
from ..plan.corruptions import corrupts_labels, kind_of, kinds
from .outputs import entries, produce, table
from .paper import COLUMNS as COMPARISON_COLUMNS
from .paper import compare, comparison_header, is_cifar10, run_flags, table2
from .stats import ci95, over_seeds, t_interval  # noqa: F401  (analysis/stats.py; t_interval: read from here by the figures)
from .stats import spread as _spread

pd = lazy_module("pandas")

RUN_FILES = ("summary.json", "epochs.csv", "steps.csv")  # what aggregate reads of each run


def tables_for(cfg: dict) -> tuple[str, ...]:
    """The tables `aggregate` writes for a config (its registry entries' files)."""
    return tuple(f for e in entries("aggregate", cfg, "table") for f in e.files)


def tables_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "tables"


def load_summaries(cfg: dict) -> pd.DataFrame:
    rows = []
    for run in expand_runs(cfg):
        path = run_dir(cfg, run) / "summary.json"
        try:
            s = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(
                f"{path}: missing; train the run first (python -m rethinking train --run {run.id})"
            ) from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc}); delete the run folder and retrain it") from None
        s.pop("versions", None)
        if isinstance(s.get("adam"), dict):  # an Adam run's settings (plan.settings): flat columns in runs.csv
            adam = s.pop("adam")
            s["adam_beta1"], s["adam_beta2"], s["adam_eps"] = *adam["betas"], adam["eps"]
        s.setdefault("variant", run.variant)
        s["label_level"] = run.corruption.label_level
        rows.append(s)
    frame = pd.DataFrame(rows)
    if "optimizer" in frame:  # only Adam runs name it (an SGD run's settings are what they were before)
        frame["optimizer"] = frame["optimizer"].fillna("sgd")
    # a diverged run is a result, not a number to average: its accuracies are blanked (status says why)
    diverged = frame["status"] == "diverged"
    frame.loc[diverged, ["train_acc", "test_acc", "train_loss", "test_loss"]] = np.nan
    flags = pd.DataFrame([run_flags(r) for r in frame["regularizers"]], index=frame.index)
    frame["random_crop"] = flags["random_crop"]  # the flag; `crop` stays the summary's center-crop size
    frame["weight_decay_on"] = flags["weight_decay"]
    frame["dropout_on"] = flags["dropout"]
    return frame


@table("runs.csv")
def runs_table(all_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run and seed: its summary (every training-set size's runs too)."""
    return all_runs


def of_params_dataset(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """The runs on the params' dataset: the paper's tables and figures and the per-example ones are of it; the
    runs of a group's other training-set sizes (train_sizes) are in runs.csv and the capacity outputs
    (capacity.py), never averaged with them."""
    return runs[runs["dataset"] == dataset_id(cfg)].reset_index(drop=True) if "dataset" in runs else runs


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    sel = runs[runs["corruption"].isin(["true-labels", "random-labels"])].copy()
    sel["labels"] = sel["corruption"].map({"true-labels": "true", "random-labels": "random"})
    keys = ["model", "labels", "random_crop", "weight_decay_on", "dropout_on", "variant"]
    table = (
        sel.groupby(keys, sort=False)
        .agg(
            train_acc=("train_acc", "mean"),
            train_acc_sd=("train_acc", _spread),
            train_acc_ci95=("train_acc", ci95),
            test_acc=("test_acc", "mean"),
            test_acc_sd=("test_acc", _spread),
            test_acc_ci95=("test_acc", ci95),
            seeds=("seed", "count"),
            fitted=("status", lambda s: int((s == "fitted").sum())),
            max_epochs=("status", lambda s: int((s == "max_epochs").sum())),
            diverged=("status", lambda s: int((s == "diverged").sum())),
            parameters=("parameters", "first"),
        )
        .reset_index()
        .rename(columns={"random_crop": "crop", "weight_decay_on": "weight_decay", "dropout_on": "dropout"})
    )
    # one state per cell, or no mean: seeds that fitted and seeds stopped at the epoch limit are not averaged
    # into one number (runs.csv has each seed); diverged seeds have no accuracies at all
    states = sel.groupby(keys, sort=False)["status"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else "mixed")
    table.insert(len(keys), "status", states.to_numpy())
    table.loc[table["status"] == "mixed", [c for c in table.columns if c.startswith(("train_acc", "test_acc"))]] = (
        np.nan
    )
    order = {m: i for i, m in enumerate(["inception", "inception_nobn", "alexnet", "mlp_3x512", "mlp_1x512"])}
    table["_m"] = table["model"].map(order).fillna(99)
    table["_l"] = (table["labels"] == "random").astype(int)
    table = table.sort_values(
        ["_m", "variant", "_l", "crop", "weight_decay", "dropout"], ascending=[True, True, True, False, False, False]
    )
    return table.drop(columns=["_m", "_l"]).reset_index(drop=True)


@table(
    "table1.csv",
    "table1.md",
    caption="""\
Table 1: training and test accuracy (%) per model and regularizer setting, true
and random labels, mean over seeds with standard deviation and 95% t-interval
half-width. The paper (CIFAR-10): every model fits the training set (99.3-100%);
test accuracy Inception 85.75-89.31%, AlexNet 76.07-81.22%, MLPs 50.39-53.35%;
random labels at chance (about 10%).
""",
)
def table1_files(runs: pd.DataFrame):
    t1 = table1(runs)
    return t1, "# Table 1: training and test accuracy (%)\n\n" + to_markdown(t1)


def _plain(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs without regularizers or training variants: the ones Figure 1 is made of."""
    return runs[(runs["regularizers"] == "none") & (runs["variant"] == "")]


RELATIVE = ("exact", "lower", "upper", "none")  # what convergence.csv's relative_steps is


@table("convergence.csv")
def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 1b/1c: every run without regularizers or variants, in the state it ended in.

    `steps` is the steps trained, `step_first_fit` the step it reached 100% train accuracy (fitted runs only).
    `true_status` / `true_steps` are the same-seed true-label run's state and steps (its step of first fit
    when fitted, else the steps it trained). `relative_steps` is the time to fit over the true-label run's,
    and `relative_bound` says what that number is:
      exact  both fitted: step_first_fit / true step_first_fit
      lower  this run stopped at the epoch limit, the true-label run fitted: steps / true step_first_fit,
             a lower bound (the run would have needed more steps)
      upper  this run fitted, the true-label run stopped: step_first_fit / true steps trained, an upper bound
      none   no ratio: this run diverged, or the true-label run diverged or is not in the grid, or both stopped
             (relative_steps blank)
    """
    sel = _plain(runs).copy()
    true = sel[sel["corruption"] == "true-labels"].set_index(["model", "seed"])
    ref = pd.DataFrame(
        {
            "true_status": true["status"],
            "true_steps": true["step_first_fit"].where(true["status"] == "fitted", true["steps"]),
        }
    )
    ref.loc[ref["true_status"] == "diverged", "true_steps"] = np.nan
    sel = sel.join(ref, on=["model", "seed"])
    fit, stop = sel["status"] == "fitted", sel["status"] == "max_epochs"
    tfit, tstop = sel["true_status"] == "fitted", sel["true_status"] == "max_epochs"
    bound = np.select([fit & tfit, stop & tfit, fit & tstop], ["exact", "lower", "upper"], "none")
    sel["relative_bound"] = bound
    num = sel["step_first_fit"].where(fit, sel["steps"])
    sel["relative_steps"] = (num / sel["true_steps"]).where(sel["relative_bound"] != "none")
    sel["test_error"] = 100.0 - sel["test_acc"]
    cols = [
        "model",
        "corruption",
        "corruption_kind",
        "label_level",
        "seed",
        "status",
        "steps",
        "step_first_fit",
        "diverged_step",
        "true_status",
        "true_steps",
        "relative_steps",
        "relative_bound",
        "epochs",
        "train_acc",
        "test_acc",
        "test_error",
    ]
    return (
        sel[cols]
        .sort_values(["model", "corruption_kind", "label_level", "corruption", "seed"], na_position="last")
        .reset_index(drop=True)
    )


def _curves(cfg: dict, runs: pd.DataFrame, name: str, columns: list[str]) -> pd.DataFrame:
    keys = ["model", "corruption", "regularizers", "variant", "seed", "status"]
    frames = []
    for _, r in runs.iterrows():
        f = pd.read_csv(Path(cfg["results_dir"]) / "runs" / r["run"] / name)
        for i, k in enumerate(keys):
            f.insert(i, k, r[k])
        frames.append(f[keys + columns])
    if not frames:
        return pd.DataFrame(columns=keys + columns)
    return pd.concat(frames, ignore_index=True)


@table("loss_curves.csv")
def loss_curves(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    return _curves(cfg, _plain(runs), "steps.csv", ["step", "epoch", "train_loss"])


@table("accuracy_curves.csv")
def accuracy_curves(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    return _curves(cfg, runs, "epochs.csv", ["epoch", "step", "train_acc", "test_acc", "train_loss", "test_loss"])


STATUSES = ("fitted", "max_epochs", "diverged")


def memorization_columns() -> list[str]:
    """memorization.csv's columns: every registered per-epoch metric's (rethinking.engine.metrics) among them."""
    return [
        "model",
        "regularizers",
        "variant",
        "corruption",
        "corruption_kind",
        "level",
        "seed",
        "status",
        "epoch",
        "step",
        *metric_columns(),
        "train_acc",
        "test_acc",
    ]


EARLY_STOPPING_STATS = ("best_test_acc", "final_test_acc", "gap")
EARLY_STOPPING_COLUMNS = [
    "model",
    "regularizers",
    "variant",
    "corruption",
    "corruption_kind",
    "level",
    "seed",
    "status",
    "epochs",
    "best_test_acc",
    "best_epoch",
    "best_step",
    "final_test_acc",
    "gap",
    "cell_status",
    "seeds",
] + [f"{v}_{s}" for v in EARLY_STOPPING_STATS for s in ("mean", "sd", "ci95")]


def _label_corrupted(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs whose labels are corrupted: labels at a level p > 0, random labels, pairflip at p > 0, a label
    file (plan.corruptions.corrupts_labels)."""
    noisy = [corrupts_labels(c.kind, c.level) for c in map(Corruption.parse, runs["corruption"])]
    return runs[pd.Series(noisy, index=runs.index, dtype=bool)]


def noise_of(corruption_id: str) -> tuple[str, float]:
    """(kind, level) of a run's corruption in the memorization tables: the kind's level where it takes levels
    (labels, random labels at 1, pairflip), 0 for the true labels, blank (NaN) for a kind without levels (a
    label file). Rows are grouped by kind and level, so labels and pairflip at one level are never averaged."""
    c = Corruption.parse(corruption_id)
    return c.kind, (c.level if kind_of(c.kind).levels or c.kind == "true_labels" else float("nan"))


def _kind_order(frame: pd.DataFrame) -> pd.Series:
    """A row's kind's place in the registry (its order in the figures)."""
    order = {k.name: i for i, k in enumerate(kinds())}
    return frame["corruption_kind"].map(order)


def _epochs(cfg: dict, run_id: str) -> pd.DataFrame:
    """A run's epochs.csv, the metric columns blank when the run folder predates them."""
    f = pd.read_csv(Path(cfg["results_dir"]) / "runs" / run_id / "epochs.csv")
    for column in metric_columns():
        if column not in f:
            f[column] = np.nan
    return f


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


@table("memorization.csv")
def memorization(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch of every label-corrupted run: the training set's split (percent of its intact-label
    examples predicted right, of its corrupted examples predicted as their wrong label and as their original
    one) beside train and test accuracy (percent), with the run's status. Empty (its header) without
    label-corrupted runs."""
    columns = memorization_columns()
    frames = []
    for _, r in _label_corrupted(runs).iterrows():
        f = _epochs(cfg, r["run"])
        f["train_acc"], f["test_acc"] = 100 * f["train_acc"], 100 * f["test_acc"]
        for k in ("model", "regularizers", "variant", "corruption", "seed", "status"):
            f[k] = r[k]
        f["corruption_kind"], f["level"] = noise_of(r["corruption"])
        frames.append(f[columns])
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)
    table["_k"] = _kind_order(table)
    keys = ["model", "regularizers", "variant", "_k", "level", "seed", "epoch"]
    return _sorted(table, keys).drop(columns="_k")


@table("early_stopping.csv")
def early_stopping(cfg: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """What stopping at the best epoch would have kept, per label-corrupted run, and per true-label run of a
    model x regularizers x variant that has label-corrupted runs (level 0, the reference).

    `best_test_acc` is the highest test accuracy over the run's epochs (percent; the first epoch that reached
    it: `best_epoch`, `best_step`), `final_test_acc` the last epoch's and `gap` = best - final (points). The
    best is chosen on the test set: an upper bound on what early stopping on held-out data keeps. A diverged
    run has none of these numbers (its status says why). Per cell (model, regularizers, variant, corruption):
    `cell_status`, the state every seed ended in or "mixed", `seeds`, and the mean, sd and ci95 of the three
    numbers over the seeds, blank when the seeds ended in different states. Empty (its header) without
    label-corrupted runs."""
    noisy = _label_corrupted(runs)
    if noisy.empty:
        return pd.DataFrame(columns=EARLY_STOPPING_COLUMNS)
    groups = set(zip(noisy["model"], noisy["regularizers"], noisy["variant"]))
    cell = pd.Series([c in groups for c in zip(runs["model"], runs["regularizers"], runs["variant"])], index=runs.index)
    true = runs[(runs["corruption"] == "true-labels") & cell]
    rows = []
    for _, r in pd.concat([true, noisy]).iterrows():
        f = _epochs(cfg, r["run"])
        test = 100 * f["test_acc"].astype(float)
        row = {k: r[k] for k in ("model", "regularizers", "variant", "corruption", "seed", "status", "epochs")}
        row["corruption_kind"], row["level"] = noise_of(r["corruption"])
        if r["status"] != "diverged" and test.notna().any():
            best = test.idxmax()  # the first epoch with the highest test accuracy
            row.update(
                best_test_acc=test[best],
                best_epoch=f["epoch"][best],
                best_step=f["step"][best],
                final_test_acc=test.iloc[-1],
                gap=test[best] - test.iloc[-1],
            )
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=EARLY_STOPPING_COLUMNS)
    table[list(EARLY_STOPPING_STATS)] = table[list(EARLY_STOPPING_STATS)].astype(float)
    table = over_seeds(table, ["model", "regularizers", "variant", "corruption"], EARLY_STOPPING_STATS)
    for k in ("best_epoch", "best_step"):
        table[k] = table[k].astype("Int64")
    table["_k"] = _kind_order(table)
    return _sorted(table, ["model", "regularizers", "variant", "_k", "level", "seed"]).drop(columns="_k")


def _one_state_mean(runs: pd.DataFrame, column: str) -> float | None:
    """The mean over seeds when every seed ended in the same state (fitted, stopped at the epoch limit,
    diverged); None when they did not (runs.csv has each seed) or the value is blank (diverged)."""
    if runs.empty or runs["status"].nunique() != 1 or runs[column].isna().all():
        return None
    return round(float(runs[column].mean()), 4)


@table("metrics.json", metrics=True)
def metrics(runs: pd.DataFrame) -> dict:
    """The headline numbers for `dvc metrics show` and `dvc exp show`: a few per model, short stable names.

    Per model, from its runs without regularizers or training variants (as Fig. 1): `true_test_acc`,
    `random_train_acc`, `random_test_acc` (percent) and `random_fit_ratio` (steps to fit random labels over
    steps to fit true labels, same seed; only when both fitted in every seed: otherwise the random-label
    steps are a lower bound, not a ratio). `runs` counts the grid's runs by how they ended. Every run's
    own numbers are in runs.csv; its curves in `dvc plots`.
    """
    out: dict = {}
    plain = _plain(runs)
    for model, group in plain.groupby("model", sort=True):
        true, rand = (group[group["corruption"] == c] for c in ("true-labels", "random-labels"))
        m = {
            "true_test_acc": _one_state_mean(true, "test_acc"),
            "random_train_acc": _one_state_mean(rand, "train_acc"),
            "random_test_acc": _one_state_mean(rand, "test_acc"),
        }
        if len(true) and len(rand):  # convergence()'s per-seed ratios, when every one is exact
            conv = convergence(group)
            r = conv[conv["corruption"] == "random-labels"]
            m["random_fit_ratio"] = (
                round(float(r["relative_steps"].mean()), 4) if (r["relative_bound"] == "exact").all() else None
            )
        if not len(true):
            del m["true_test_acc"]
        if not len(rand):
            del m["random_train_acc"], m["random_test_acc"]
        if m:
            out[model] = m
    out["runs"] = {s: int((runs["status"] == s).sum()) for s in STATUSES}
    return out


def to_markdown(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


@table(
    "paper_comparison.csv",
    "paper_comparison.md",
    caption="""\
Each Table 1 and Table 4 cell of the paper beside our mean over seeds, the
difference and whether it lies within the tolerance of params' paper_tolerance.
Filled for CIFAR-10 (official or an image-folder copy; a JPEG copy differs from
the official pixels and can move accuracies by about a point). Only runs of the
paper's setup are compared: the full 50,000 / 10,000 split, center crop 28, the
paper's learning rate and momentum, decay 0.95 per epoch for Table 1 (runs
without a variant) and 0.999 for Table 4 (variant ``table4``); other cells read
``not comparable`` with the reason. ``status`` gives the seeds' state (fitted,
max_epochs, diverged; ``mixed`` where they differ, then no mean is given), and
seeds_fitted / seeds_stopped / seeds_diverged count them.
""",
)
def paper_comparison(cfg: dict, runs: pd.DataFrame, meta: dict):
    """Each Table 1 / Table 4 cell beside the paper's (CIFAR-10 and image-folder copies of it; empty otherwise)."""
    if is_cifar10(meta):
        comp = compare(runs, cfg["paper_tolerance"])
        return comp, comparison_header(runs, meta, cfg["paper_tolerance"]) + to_markdown(comp)
    return pd.DataFrame(columns=COMPARISON_COLUMNS), (
        f"# Paper comparison\n\nNot applicable: the paper's tables are for CIFAR-10 and ImageNet; "
        f"this grid runs on {meta['dataset']}"
        + (" (ImageNet's Table 2 is in table2.md).\n" if is_streamed(cfg) else ".\n")
    )


@table(
    "table2.csv",
    "table2.md",
    when=is_streamed,
    caption="""\
Table 2 (ImageNet, Inception V3): top-1 training accuracy and top-1 / top-5
test accuracy (%) per labels and regularizer setting ("augmentation" is the
random resized crop with flips), the paper's numbers beside ours. The paper:
with true labels 92-99.5% train, 59.8% (no regularizer) to 77.8% (all three)
test top-1; with random labels 87.8-95.2% train and chance (about 0.1%) test.
Train accuracy here is measured on the evaluated training images in eval mode
with center crops.
""",
)
def table2_files(runs: pd.DataFrame, meta: dict):
    """Table 2 (streamed datasets only): the paper's numbers beside ours."""
    t2 = table2(runs)
    return t2, (
        "# Table 2: ImageNet, Inception V3: top-1 train, top-1 and top-5 test "
        f"accuracy (%), the paper's beside ours\n\nDataset: {meta['dataset']} "
        f"({len(meta['classes'])} classes, {meta['provenance'].get('train_size')} training images)."
        " Train accuracy is measured on the training images in eval mode with center crops "
        "(training.train_eval_size of them).\n\n" + to_markdown(t2)
    )


def aggregate(cfg: dict) -> Path:
    """Every entry of the stage, from the grid's run folders. (The per-example tables and figures, from the runs'
    examples.npz, are the `records` stage's: rethinking.analysis.records.)"""
    runs = load_summaries(cfg)
    produce("aggregate", cfg, runs=of_params_dataset(runs, cfg), all_runs=runs, meta=read_meta(base_artifact(cfg)))
    return tables_dir(cfg)


# the interpolation threshold of width sweeps (capacity.csv) and its figure: registry entries of this stage and
# of the figures stage; imported last, so that capacity.csv is written after the tables above
from . import capacity  # noqa: E402, F401
