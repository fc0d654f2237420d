"""Stage `figures`: tables -> the paper's Figure 1 (seaborn), PNG and PDF.

- fig1a: average training loss against thousand steps, one line per corruption
  (true labels, random labels, shuffled pixels, random pixels, Gaussian), one
  panel per model.
- fig1b: time to overfit (steps to 100% training accuracy) relative to the
  true-label run of the same model, against label corruption.
- fig1c: test error at convergence against label corruption.
- fig2b: training and test accuracy against thousand steps, Inception with and
  without BatchNorm on true labels (other models' true-label runs when the grid
  has neither).
- table4: training accuracy on random labels with explicit regularizers.
- fig2a (streamed datasets, ImageNet only): top-1 training and test accuracy
  against thousand steps of the true-label runs with and without augmentation,
  weight decay and dropout, the cumulative best test accuracy shaded (the
  paper's indicator of what early stopping could gain).
Lines are means over seeds with 95% t-intervals of the mean as bands.
Runs that did not fit within the epoch limit are drawn as open markers at the
step they stopped (a lower bound), never silently averaged in.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .aggregate import t_interval, tables_dir
from .config import is_streamed
from .io import atomic_path

FIGURES = ("fig1a", "fig1b", "fig1c", "fig2b", "table4")
STREAMED_FIGURES = ("fig2a",)   # drawn for streamed datasets (ImageNet) only
INPUTS = ("convergence.csv", "loss_curves.csv", "accuracy_curves.csv", "runs.csv")  # from tables/
CORRUPTION_ORDER = ["true-labels", "random-labels", "shuffled-pixels", "random-pixels", "gaussian"]
CORRUPTION_LABEL = {"true-labels": "true labels", "random-labels": "random labels",
                    "shuffled-pixels": "shuffled pixels", "random-pixels": "random pixels", "gaussian": "Gaussian"}
MODEL_LABEL = {"inception": "Inception", "inception_nobn": "Inception w/o BatchNorm", "alexnet": "AlexNet",
               "mlp_1x512": "MLP 1x512", "mlp_3x512": "MLP 3x512", "inception_v3": "Inception V3"}


def _plot_libs():
    """pyplot (Agg backend) and seaborn, imported when a figure is drawn: the Snakemake rules import
    this module for its file names, and seaborn (with scipy) alone takes ~3 s to import."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    return plt, sns


def figures_for(cfg: dict) -> tuple[str, ...]:
    """The figures `figures` draws for a config."""
    return FIGURES + (STREAMED_FIGURES if is_streamed(cfg) else ())


def figures_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "figures"


def save_figure(fig, base: Path) -> None:
    """PNG and PDF of a figure, each written atomically."""
    plt = _plot_libs()[0]
    base.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(base.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=_metadata(ext))
    plt.close(fig)


def _metadata(ext):  # no timestamps: the same tables give the same files
    return {"CreationDate": None} if ext == "pdf" else {"Software": None}


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def fig1a(curves: pd.DataFrame):
    plt, sns = _plot_libs()
    kinds = [c for c in CORRUPTION_ORDER if c in set(curves["corruption"])]
    # the models trained on the most corruption kinds (the paper shows Inception on all five)
    kinds_per_model = curves[curves["corruption"].isin(kinds)].groupby("model")["corruption"].nunique()
    models = sorted(kinds_per_model[kinds_per_model == kinds_per_model.max()].index) if len(kinds_per_model) else []
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4.2 * max(len(models), 1), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        d = curves[(curves["model"] == model) & curves["corruption"].isin(kinds)].copy()
        d["thousand steps"] = d["step"] / 1000.0
        d["corruption"] = d["corruption"].map(CORRUPTION_LABEL)
        sns.lineplot(data=d, x="thousand steps", y="train_loss", hue="corruption",
                     hue_order=[CORRUPTION_LABEL[k] for k in kinds], errorbar=t_interval, ax=ax, linewidth=1.2)
        ax.set_title(MODEL_LABEL.get(model, model))
        ax.set_ylabel("average loss")
        ax.set_ylim(bottom=0)
    if not models:
        _empty(axes[0][0], "no runs without regularizers")
    fig.suptitle("(a) learning curves", y=1.02)
    return fig


def _label_runs(conv: pd.DataFrame) -> pd.DataFrame:
    d = conv[conv["label_level"].notna()].copy()
    d["model"] = d["model"].map(lambda m: MODEL_LABEL.get(m, m))
    d["fitted"] = d["status"] == "fitted"
    return d


def fig1b(conv: pd.DataFrame):
    plt, sns = _plot_libs()
    d = _label_runs(conv)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ok = d[d["fitted"] & d["relative_steps"].notna()]
    if len(d):
        sns.lineplot(data=ok, x="label_level", y="relative_steps", hue="model", marker="o", errorbar=t_interval, ax=ax)
        bad = d[~d["fitted"]]
        if len(bad):
            ax.scatter(bad["label_level"], [ax.get_ylim()[1]] * len(bad), marker="^", facecolors="none",
                       edgecolors="black", label="not fitted (epoch limit or diverged)")
            ax.legend()
        ax.set_xlabel("label corruption")
        ax.set_ylabel("time to overfit (relative)")
        ax.set_xlim(-0.02, 1.02)
    else:
        _empty(ax, "no label-corruption runs")
    ax.set_title("(b) convergence slowdown")
    return fig


def fig1c(conv: pd.DataFrame, kernel: pd.DataFrame | None = None):
    plt, sns = _plot_libs()
    d = _label_runs(conv)
    if kernel is not None and len(d):
        d = pd.concat([d, kernel], ignore_index=True)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    if len(d):
        sns.lineplot(data=d, x="label_level", y="test_error", hue="model", marker="o", errorbar=t_interval, ax=ax)
        ax.set_xlabel("label corruption")
        ax.set_ylabel("test error (%)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 100)
    else:
        _empty(ax, "no label-corruption runs")
    ax.set_title("(c) generalization error growth")
    return fig


def fig2b(acc: pd.DataFrame):
    plt, sns = _plot_libs()
    d = acc[(acc["corruption"] == "true-labels") & (acc["regularizers"] == "none") & (acc["variant"].fillna("") == "")]
    inc = d[d["model"].isin(["inception", "inception_nobn"])]
    d = (inc if len(inc) else d).copy()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    if len(d):
        d["thousand steps"] = d["step"] / 1000.0
        d["model"] = d["model"].map(lambda m: MODEL_LABEL.get(m, m))
        long = d.melt(id_vars=["model", "seed", "thousand steps"], value_vars=["train_acc", "test_acc"],
                      var_name="split", value_name="accuracy")
        long["split"] = long["split"].map({"train_acc": "train", "test_acc": "test"})
        sns.lineplot(data=long, x="thousand steps", y="accuracy", hue="model", style="split",
                     style_order=["train", "test"], errorbar=t_interval, ax=ax)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
    else:
        _empty(ax, "no true-label runs without regularizers")
    ax.set_title("(b) Inception on CIFAR-10" if len(inc) else "(b) learning curves, true labels")
    return fig


REGULARIZER_LABEL = {"none": "none", "crop": "aug", "wd": "wd", "dropout": "dropout"}


def _regularizer_label(regs: str) -> str:
    return " + ".join(REGULARIZER_LABEL.get(r, r) for r in regs.split("-"))


def fig2a(acc: pd.DataFrame):
    """Top-1 train (solid) and test (dashed) accuracy of the true-label runs per regularizer setting, with the
    cumulative best test accuracy shaded."""
    plt, sns = _plot_libs()
    d = acc[(acc["corruption"] == "true-labels") & (acc["variant"].fillna("") == "")].copy()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if len(d):
        d["thousand steps"] = d["step"] / 1000.0
        d["regularizers"] = d["regularizers"].map(_regularizer_label)
        order = sorted(d["regularizers"].unique(), key=lambda r: (-r.count("+"), r))
        long = d.melt(id_vars=["regularizers", "seed", "thousand steps"], value_vars=["train_acc", "test_acc"],
                      var_name="split", value_name="top-1 accuracy")
        long["split"] = long["split"].map({"train_acc": "train", "test_acc": "test"})
        sns.lineplot(data=long, x="thousand steps", y="top-1 accuracy", hue="regularizers", hue_order=order,
                     style="split", style_order=["train", "test"], errorbar=t_interval, ax=ax)
        colors = dict(zip(order, sns.color_palette(n_colors=len(order))))
        for reg, g in d.groupby("regularizers"):
            mean = g.groupby("thousand steps")["test_acc"].mean().sort_index()
            ax.fill_between(mean.index, mean.values, mean.cummax().values, color=colors[reg], alpha=0.2, lw=0)
        ax.set_ylim(0, 1.02)
        models = sorted(d["model"].unique())
        ax.set_title(f"(a) {', '.join(MODEL_LABEL.get(m, m) for m in models)} on ImageNet")
    else:
        _empty(ax, "no true-label runs")
        ax.set_title("(a) ImageNet")
    return fig


def table4(runs: pd.DataFrame):
    plt, sns = _plot_libs()
    d = runs[(runs["corruption"] == "random-labels")].copy()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if len(d) and (d["regularizers"] != "none").any():
        d["variant"] = d["variant"].fillna("")
        d["regularizers"] = d["regularizers"] + d["variant"].map(lambda v: f" ({v})" if v else "")
        d["model"] = d["model"].map(lambda m: MODEL_LABEL.get(m, m))
        sns.barplot(data=d, x="model", y="train_acc", hue="regularizers", errorbar=t_interval, ax=ax)
        ax.set_ylabel("training accuracy (%)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize="small", title="regularizers")
    else:
        _empty(ax, "no random-label runs with regularizers")
    ax.set_title("Table 4: random labels with regularizers")
    return fig


def figures(cfg: dict) -> Path:
    sns = _plot_libs()[1]
    sns.set_theme(context="paper", style="whitegrid")
    tables, out = tables_dir(cfg), figures_dir(cfg)
    read = (lambda name: pd.read_csv(tables / name, keep_default_na=True, dtype={"variant": str}))
    curves, conv = read("loss_curves.csv"), read("convergence.csv")
    save_figure(fig1a(curves), out / "fig1a")
    save_figure(fig1b(conv), out / "fig1b")
    from .section5 import kernel_curve
    save_figure(fig1c(conv, kernel_curve(cfg)), out / "fig1c")
    save_figure(fig2b(read("accuracy_curves.csv")), out / "fig2b")
    save_figure(table4(read("runs.csv")), out / "table4")
    if is_streamed(cfg):
        save_figure(fig2a(read("accuracy_curves.csv")), out / "fig2a")
    return out
