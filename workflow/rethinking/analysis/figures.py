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
- memorization: memorization under label noise (Arpit et al. 2017): per
  label-corrupted run, against thousand steps, the accuracy on the training
  examples whose label is intact, the share of the corrupted ones predicted as
  their wrong label (memorized) and as their original label, and the test
  accuracy; a row of panels per model x regularizers, a panel per label noise
  (kind and level: labels and pairflip at one level are two panels).
- early_stopping: the best test accuracy over the epochs against the one at the
  end of training, against label corruption, a panel per model x regularizers
  (beside Fig. 1c: what early stopping would have kept); pairflip's levels as
  series of their own, a label file (no level) in the table only.
- fig2a (streamed datasets, ImageNet only): top-1 training and test accuracy
  against thousand steps of the true-label runs with and without augmentation,
  weight decay and dropout, the cumulative best test accuracy shaded (the
  paper's indicator of what early stopping could gain).
Every figure shows how each run ended (aggregate: fitted, stopped at the epoch limit, diverged), and
nothing is averaged across those states:
- fitted: filled markers, and the line (mean over the fitted seeds, 95% t-interval band);
- stopped at the epoch limit (max_epochs): open markers (Fig. 1b: at the steps it trained over the
  true-label run's, a lower bound on its time to fit; Fig. 1c: at its test error when it stopped;
  Table 4: at its training accuracy when it stopped);
- diverged: crosses on the bottom of the axes (its numbers are blank) or at the end of its curve;
each with a legend entry. Fig. 1b/1c's axis is the paper's label corruption (`labels`: uniform noise); pairflip
runs are not on it (convergence.csv keeps them, label_level blank) but in the memorization and early-stopping
figures as their own panels and series. Fig. 1b/1c draw lines only for models with intermediate label levels
(0 < p < 1); the others (Table 1's levels 0 and 1 only) are markers. Curves (Fig. 1a, 2b) are means over
the seeds up to the step the first seed stops, each seed on its own thin line after that, the end of every
seed marked by its state.

Each figure is one entry of the registry (rethinking.analysis.outputs: `@figure(...)` on the function that draws
it, with the tables it reads and its caption); `figures` draws the entries of its stage. pandas is imported on
first use (lazy): the Snakemake rules and the DVC generator import this module for the entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..lazy import lazy_module
from ..plan import Corruption, is_streamed
from ..plan.corruptions import kind_of as corruption_kind
from ..plan.corruptions import kinds as corruption_kinds
from ..plan.corruptions import names as _kind_names
from .aggregate import noise_of, of_params_dataset, t_interval
from .outputs import entries, figure, has_section5, optional, produce
from .plotting import MODEL_LABEL
from .plotting import empty as _empty
from .plotting import plot_libs as _plot_libs

pd = lazy_module("pandas")
KIND_NAMES = set(_kind_names())

# Fig. 1a's curves: every registered corruption kind (at level 1 where it takes levels: random labels), in the
# registry's order, by corruption id, and its legend (plan.corruptions)
CORRUPTION_ORDER = [Corruption.make(k.name, 1.0).id for k in corruption_kinds()]
CORRUPTION_LABEL = {Corruption.make(k.name, 1.0).id: k.legend or k.name.replace("_", " ") for k in corruption_kinds()}


def figures_for(cfg: dict) -> tuple[str, ...]:
    """The figures `figures` draws for a config (its registry entries' names)."""
    return tuple(e.name for e in entries("figures", cfg, "figure"))


def figures_dir(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "figures"


OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}  # legends beside the axes, not over marks
STATE_LABEL = {"fitted": "fitted", "max_epochs": "stopped at the epoch limit", "diverged": "diverged"}


def _palette(names):
    sns = _plot_libs()[1]
    return dict(zip(names, sns.color_palette(n_colors=max(len(names), 1))))


def _state_legend(ax, extra=(), stopped="", diverged="", **kw):
    """The legend: the axes' labelled artists, then one entry per state (and `extra` handles); `stopped` and
    `diverged` say what the position of those markers means in this figure."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    states = [
        Line2D([], [], color="0.3", marker="o", linestyle="", label=STATE_LABEL["fitted"]),
        Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="none",
            linestyle="",
            label=STATE_LABEL["max_epochs"] + stopped,
        ),
        Line2D([], [], color="0.3", marker="x", linestyle="", label=STATE_LABEL["diverged"] + diverged),
    ]
    all_handles = handles + states + list(extra)
    ax.legend(all_handles, [h.get_label() for h in all_handles], fontsize="x-small", **kw)


def _mean_band(values: pd.DataFrame, x: str, y: str):
    """Mean and 95% t-interval of `y` per `x` (over the rows: seeds), as aggregate.t_interval computes it
    (NaN values left out; the mean itself where fewer than 2 values), in one pass over the groups:
    t_interval per group took 2.6 s of the default experiment's 8 s figures stage."""
    from scipy import stats

    g = values.assign(**{y: values[y].astype(float)}).groupby(x)[y]
    mean, sd, n = g.mean(), g.std(ddof=1), g.count()
    half = pd.Series(stats.t.ppf(0.975, np.maximum(n - 1, 1)), index=n.index) * sd / np.sqrt(n)
    half = half.where(n >= 2, 0.0)
    return mean, pd.DataFrame({"lo": mean - half, "hi": mean + half})


def _seed_curves(ax, d: pd.DataFrame, x: str, y: str, color, label: str, linestyle="-"):
    """One curve of several seeds: the mean (with its t-band) up to the step where the first seed stops,
    then each seed on a thin line; every seed's end marked by its state. Diverged seeds are never in the
    mean: each is a thin line ending in a cross."""
    d = d.copy()
    d[y] = d[y].where(np.isfinite(d[y].astype(float)))
    status = d.groupby("seed")["status"].first()
    ok = status[status != "diverged"].index
    live = d[d["seed"].isin(ok)]
    if len(ok):
        cut = live.groupby("seed")[x].max().min()
        head = live[live[x] <= cut]
        counts = head.groupby(x)["seed"].nunique()
        head = head[head[x].isin(counts[counts == len(ok)].index)]
        mean, band = _mean_band(head, x, y)
        ax.plot(mean.index, mean.values, color=color, linestyle=linestyle, linewidth=1.4, label=label)
        if len(ok) > 1:
            ax.fill_between(band.index, band["lo"], band["hi"], color=color, alpha=0.2, linewidth=0)
            for seed in ok:
                tail = live[(live["seed"] == seed) & (live[x] >= cut)].sort_values(x)
                if len(tail) > 1:
                    ax.plot(tail[x], tail[y], color=color, linestyle=linestyle, linewidth=0.6, alpha=0.8)
    for seed in status[status == "diverged"].index:
        c = d[d["seed"] == seed].sort_values(x)
        ax.plot(
            c[x], c[y], color=color, linestyle=linestyle, linewidth=0.6, alpha=0.8, label=None if len(ok) else label
        )
    for state, kw in (
        ("fitted", {"marker": "o", "facecolors": color, "edgecolors": color}),
        ("max_epochs", {"marker": "o", "facecolors": "none", "edgecolors": color}),
        ("diverged", {"marker": "x", "color": color}),
    ):
        ends = [
            d[d["seed"] == seed].dropna(subset=[y]).sort_values(x).tail(1) for seed in status[status == state].index
        ]
        ends = [e for e in ends if len(e)]
        if ends:
            e = pd.concat(ends)
            ax.scatter(e[x], e[y], s=22, zorder=3, gid=f"end:{state}", **kw)


@figure(
    "fig1a",
    inputs=("loss_curves.csv",),
    caption="""\
Figure 1a: average training loss against thousand steps for true labels, random
labels, shuffled pixels, random pixels and Gaussian noise. The paper (Inception,
CIFAR-10) shows every curve reaching zero loss, random labels last; a public
reproduction reached loss 0.01 after about 5.7k (true), 6.7k (shuffled), 9.9k
(Gaussian), 13.0k (random pixels) and 17.7k (random labels) steps.
Each curve is the mean over the seeds up to the step where the first seed
stops (95% t-interval band), then each seed on a thin line; the end of every
seed is marked: filled circle fitted, open circle stopped at the epoch limit,
cross diverged (diverged seeds are never in the mean).
""",
)
def fig1a(curves: pd.DataFrame):
    plt, sns = _plot_libs()
    kinds = [c for c in CORRUPTION_ORDER if c in set(curves["corruption"])]
    # the models trained on the most corruption kinds (the paper shows Inception on all five)
    kinds_per_model = curves[curves["corruption"].isin(kinds)].groupby("model")["corruption"].nunique()
    models = sorted(kinds_per_model[kinds_per_model == kinds_per_model.max()].index) if len(kinds_per_model) else []
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4.2 * max(len(models), 1), 3.4), squeeze=False)
    colors = _palette(kinds)
    for ax, model in zip(axes[0], models):
        d = curves[(curves["model"] == model) & curves["corruption"].isin(kinds)].copy()
        d["thousand steps"] = d["step"] / 1000.0
        for kind in kinds:
            k = d[d["corruption"] == kind]
            if len(k):
                _seed_curves(ax, k, "thousand steps", "train_loss", colors[kind], CORRUPTION_LABEL[kind])
        ax.set_title(MODEL_LABEL.get(model, model))
        ax.set_xlabel("thousand steps")
        ax.set_ylabel("average loss")
        ax.set_ylim(bottom=0)
        _state_legend(ax)
    if not models:
        _empty(axes[0][0], "no runs without regularizers")
    fig.suptitle("(a) learning curves", y=1.02)
    return fig


def _label_runs(conv: pd.DataFrame) -> pd.DataFrame:
    d = conv[conv["label_level"].notna()].copy()
    d["model"] = d["model"].map(lambda m: MODEL_LABEL.get(m, m))
    d["fitted"] = d["status"] == "fitted"
    return d


def _line_models(d: pd.DataFrame) -> set:
    """Models with an intermediate label level (0 < p < 1): the only ones Fig. 1b/1c draw as lines."""
    lv = d["label_level"]
    return set(d.loc[(lv > 0) & (lv < 1), "model"])


def _by_state(ax, d: pd.DataFrame, y: str, colors: dict, lines: set):
    """Fig. 1b/1c's marks per model: the mean over the fitted seeds (`d["_mean"]` rows) as filled markers, a
    line with its t-band for the models in `lines`, open markers for the stopped runs, crosses on the bottom
    of the axes for the diverged ones."""
    from matplotlib.transforms import blended_transform_factory

    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    for model in colors:
        m = d[d["model"] == model]
        c = colors[model]
        fit = m[m["_mean"]].dropna(subset=[y])
        if len(fit):
            mean, band = _mean_band(fit, "label_level", y)
            line = model in lines
            ax.plot(
                mean.index,
                mean.values,
                color=c,
                marker="o",
                linestyle="-" if line else "",
                label=model,
                gid=f"fitted:{model}",
            )
            if line and len(fit["seed"].unique()) > 1:
                ax.fill_between(band.index, band["lo"], band["hi"], color=c, alpha=0.2, linewidth=0)
            elif not line:
                ax.vlines(band.index, band["lo"], band["hi"], color=c, linewidth=1)
        stop = m[m["status"] == "max_epochs"].dropna(subset=[y])
        if len(stop):
            ax.scatter(
                stop["label_level"],
                stop[y],
                marker="o",
                facecolors="none",
                edgecolors=c,
                zorder=3,
                label=None if len(fit) else model,
                gid=f"stopped:{model}",
            )
        div = m[m["status"] == "diverged"]
        if len(div):
            ax.scatter(
                div["label_level"],
                [0.03] * len(div),
                marker="x",
                color=c,
                transform=bottom,
                zorder=3,
                clip_on=False,
                gid=f"diverged:{model}",
                label=None if len(fit) or len(stop) else model,
            )


@figure(
    "fig1b",
    inputs=("convergence.csv",),
    caption="""\
Figure 1b: time to overfit (steps until 100% training accuracy) relative to the
true-label run of the same model, against the label-corruption level. The paper
reports a slowdown of a small constant factor that grows with the corruption.
Time to overfit is the mean over seeds of per-seed ratios (a run's step of first
fit over its same-seed true-label run's), with the 95% t-interval of that mean
as a band, over the seeds where both runs fitted. Open circles: runs stopped at
the epoch limit, at steps trained / true-label steps (a lower bound), in the
model's colour; filled down-triangles: fitted runs whose true-label run stopped
(an upper bound); crosses on the bottom: diverged runs; runs with no true-label
reference (it diverged, stopped too, or is not in the grid) are counted below the axes.
Lines only for models with intermediate corruption levels (0 < p < 1); models
with only levels 0 and 1 (Table 1's runs) are markers.
""",
)
def fig1b(conv: pd.DataFrame):
    """Time to overfit relative to the same-seed true-label run (convergence.csv's relative_steps), the line
    the mean over seeds of those per-seed ratios where both runs fitted (relative_bound exact); a stopped run
    an open marker at its lower bound; a fitted run whose true-label run stopped a filled down-triangle at its
    upper bound; runs with no ratio (true-label run diverged or missing, or both stopped) counted on the axes."""
    plt, sns = _plot_libs()
    from matplotlib.lines import Line2D

    d = _label_runs(conv)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    if len(d):
        bound = d["relative_bound"] if "relative_bound" in d else pd.Series("exact", index=d.index)
        d["_mean"] = bound == "exact"
        colors = _palette(list(dict.fromkeys(d["model"])))
        _by_state(
            ax,
            d[(bound != "upper") & ((bound != "none") | (d["status"] == "diverged"))],
            "relative_steps",
            colors,
            _line_models(d),
        )
        extra = []
        up = d[bound == "upper"]
        for model, g in up.groupby("model", sort=False):
            ax.scatter(
                g["label_level"], g["relative_steps"], marker="v", color=colors[model], zorder=3, gid=f"upper:{model}"
            )
        if len(up):
            extra.append(
                Line2D(
                    [], [], color="0.3", marker="v", linestyle="", label="fitted, true-label run stopped (upper bound)"
                )
            )
        none = d[(bound == "none") & (d["status"] != "diverged")]
        if len(none):
            counts = none.groupby("model", sort=False).size()
            text = "no ratio to a fitted true-label run: " + ", ".join(f"{m} {n}" for m, n in counts.items())
            ax.text(
                0.0,
                -0.2,
                text + " run(s), not drawn",
                transform=ax.transAxes,
                fontsize="x-small",
                va="top",
                gid="no-reference",
            )
        _state_legend(ax, extra, stopped=" (lower bound)", diverged=" (on the axis: no value)", **OUTSIDE)
        ax.set_xlabel("label corruption")
        ax.set_ylabel("time to overfit (relative)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(bottom=0)
    else:
        _empty(ax, "no label-corruption runs")
    ax.set_title("(b) convergence slowdown")
    return fig


@figure(
    "fig1c",
    inputs=("convergence.csv", optional("kernel_noise.csv", when=has_section5)),
    caption="""\
Figure 1c: test error at convergence against the label-corruption level. The
paper's curves rise from the clean test error (Inception 14%, AlexNet 24%,
MLP 1x512 50% on CIFAR-10) to chance (90%) at full corruption.
The line is the mean over the fitted seeds (test error at convergence); open
circles: runs stopped at the epoch limit, at their test error when they stopped;
crosses on the bottom: diverged runs (no test error). Lines only for models with
intermediate corruption levels; the others are markers.
""",
)
def fig1c(conv: pd.DataFrame, kernel_noise: pd.DataFrame | None = None):
    """Test error at the end of training: the line the mean over the fitted seeds ("at convergence"); a
    stopped run an open marker at its test error when it stopped; a diverged run a cross. With Section 5
    (`kernel_noise`: kernel_noise.csv), the min-norm kernel interpolant's curve beside the networks'."""
    plt, sns = _plot_libs()
    d = _label_runs(conv)
    kernel = kernel_curve(kernel_noise)
    if kernel is not None and len(d):
        d = pd.concat([d, kernel], ignore_index=True)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    if len(d):
        d["_mean"] = d["status"] == "fitted"
        colors = _palette(list(dict.fromkeys(d["model"])))
        _by_state(ax, d, "test_error", colors, _line_models(d))
        _state_legend(ax, stopped=" (its test error then)", diverged=" (on the axis: no value)", **OUTSIDE)
        ax.set_xlabel("label corruption")
        ax.set_ylabel("test error (%)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 100)
    else:
        _empty(ax, "no label-corruption runs")
    ax.set_title("(c) generalization error growth")
    return fig


@figure(
    "fig2b",
    inputs=("accuracy_curves.csv",),
    caption="""\
Figure 2b: training (solid) and test (dashed) accuracy against thousand steps
for Inception with and without BatchNorm on true labels (other models'
true-label runs when the grid has no Inception). The paper: both fit the
training set; BatchNorm's runs reach about 3 points more test accuracy
(Table 1: 85.75% vs 82.00% without regularizers).
Means over the seeds up to the step where the first seed stops, then each
seed on a thin line; filled circle fitted, open circle stopped at the epoch
limit, cross diverged (never in the mean).
""",
)
def fig2b(acc: pd.DataFrame):
    plt, sns = _plot_libs()
    d = acc[(acc["corruption"] == "true-labels") & (acc["regularizers"] == "none") & (acc["variant"].fillna("") == "")]
    inc = d[d["model"].isin(["inception", "inception_nobn"])]
    d = (inc if len(inc) else d).copy()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    if len(d):
        d["thousand steps"] = d["step"] / 1000.0
        if "status" not in d:
            d["status"] = "fitted"
        models = list(dict.fromkeys(d["model"]))
        colors = _palette(models)
        for model in models:
            m = d[d["model"] == model]
            for split, style in (("train", "-"), ("test", "--")):
                _seed_curves(
                    ax,
                    m,
                    "thousand steps",
                    f"{split}_acc",
                    colors[model],
                    f"{MODEL_LABEL.get(model, model)} {split}",
                    linestyle=style,
                )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("thousand steps")
        ax.set_ylabel("accuracy")
        _state_legend(ax, **OUTSIDE)
    else:
        _empty(ax, "no true-label runs without regularizers")
    ax.set_title("(b) Inception on CIFAR-10" if len(inc) else "(b) learning curves, true labels")
    return fig


REGULARIZER_LABEL = {"none": "none", "crop": "aug", "wd": "wd", "dropout": "dropout"}


def _regularizer_label(regs: str) -> str:
    return " + ".join(REGULARIZER_LABEL.get(r, r) for r in regs.split("-"))


@figure(
    "fig2a",
    inputs=("accuracy_curves.csv",),
    when=is_streamed,
    caption="""\
Figure 2a: top-1 training (solid) and test (dashed) accuracy against thousand
steps of Inception V3 on ImageNet with true labels, with and without data
augmentation, weight decay and dropout; the shaded band reaches up to the best
test accuracy so far (what early stopping could gain). The paper: without
regularizers the test accuracy peaks early (63.16% best, 59.80% at the end).
""",
)
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
        long = d.melt(
            id_vars=["regularizers", "seed", "thousand steps"],
            value_vars=["train_acc", "test_acc"],
            var_name="split",
            value_name="top-1 accuracy",
        )
        long["split"] = long["split"].map({"train_acc": "train", "test_acc": "test"})
        sns.lineplot(
            data=long,
            x="thousand steps",
            y="top-1 accuracy",
            hue="regularizers",
            hue_order=order,
            style="split",
            style_order=["train", "test"],
            errorbar=t_interval,
            ax=ax,
        )
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


@figure(
    "table4",
    inputs=("runs.csv",),
    caption="""\
Table 4 (appendix): training accuracy on random labels with explicit
regularizers, learning-rate decay raised to 0.999. The paper: Inception 100%
(weight decay), 99.93% (random crop), 99.28% (augment); MLP 3x512 100%,
MLP 1x512 99.21% (weight decay); AlexNet with weight decay failed to converge.
Every seed is a marker: filled fitted, open stopped at the epoch limit (at its
training accuracy then), cross on the bottom diverged; the x labels count the
seeds fitted/stopped/diverged.
""",
)
def table4(runs: pd.DataFrame, cfg: dict | None = None):
    """Training accuracy on random labels per model x regularizers, every seed a marker: filled when it fitted,
    open at its accuracy when it stopped at the epoch limit, a cross on the bottom when it diverged; the
    x labels count the seeds per state (fitted/stopped/diverged)."""
    plt, sns = _plot_libs()
    from matplotlib.transforms import blended_transform_factory

    runs = runs if cfg is None else of_params_dataset(runs, cfg)
    d = runs[(runs["corruption"] == "random-labels")].copy()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if len(d) and (d["regularizers"] != "none").any():
        d["variant"] = d["variant"].fillna("")
        d["regularizers"] = d["regularizers"] + d["variant"].map(lambda v: f" ({v})" if v else "")
        d["model"] = d["model"].map(lambda m: MODEL_LABEL.get(m, m))
        regs = list(dict.fromkeys(d["regularizers"]))
        colors = _palette(regs)
        cells = list(dict.fromkeys(zip(d["model"], d["regularizers"])))
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ticks = []
        for i, (model, reg) in enumerate(cells):
            g = d[(d["model"] == model) & (d["regularizers"] == reg)]
            c = colors[reg]
            n = {s: int((g["status"] == s).sum()) for s in ("fitted", "max_epochs", "diverged")}
            fit, stop, div = (g[g["status"] == s] for s in ("fitted", "max_epochs", "diverged"))
            if len(fit):
                ax.scatter(
                    [i] * len(fit),
                    fit["train_acc"],
                    marker="o",
                    color=c,
                    zorder=3,
                    gid=f"fitted:{i}",
                    label=reg if reg not in ax.get_legend_handles_labels()[1] else None,
                )
            if len(stop):
                ax.scatter(
                    [i] * len(stop),
                    stop["train_acc"],
                    marker="o",
                    facecolors="none",
                    edgecolors=c,
                    zorder=3,
                    gid=f"stopped:{i}",
                    label=reg if reg not in ax.get_legend_handles_labels()[1] else None,
                )
            if len(div):
                ax.scatter(
                    [i] * len(div),
                    [0.03] * len(div),
                    marker="x",
                    color=c,
                    transform=bottom,
                    zorder=3,
                    gid=f"diverged:{i}",
                    label=reg if reg not in ax.get_legend_handles_labels()[1] else None,
                )
            ticks.append(f"{model}\n{reg}\n{n['fitted']}/{n['max_epochs']}/{n['diverged']}")
        ax.set_xticks(range(len(cells)), ticks, fontsize="x-small", rotation=30, ha="right")
        ax.set_xlim(-0.5, len(cells) - 0.5)
        ax.set_xlabel("seeds fitted/stopped/diverged")
        ax.set_ylabel("training accuracy (%)")
        ax.set_ylim(0, 105)
        _state_legend(ax, diverged=" (on the axis: no value)", title="regularizers", **OUTSIDE)
    else:
        _empty(ax, "no random-label runs with regularizers")
    ax.set_title("Table 4: random labels with regularizers")
    return fig


SPLIT_SERIES = {
    "clean_acc": "intact labels: accuracy",
    "noisy_memorized": "corrupted: predicted as its wrong label",
    "noisy_true": "corrupted: predicted as its original label",
    "test_acc": "test accuracy",
}


def _cells(d: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(model, regularizers, variant) of the rows, models in MODEL_LABEL's order, runs without regularizers first."""
    order = {m: i for i, m in enumerate(MODEL_LABEL)}
    cells = set(zip(d["model"], d["regularizers"], d["variant"]))
    return sorted(cells, key=lambda c: (order.get(c[0], len(order)), c[0], c[1] != "none", c[1], c[2]))


def _noise_panels(g: pd.DataFrame) -> list[str]:
    """The corruptions of a memorization row's panels, one each (labels and pairflip at one level apart), in the
    registry's order, then by level; a label file (no level) after its kind's place."""
    order = {k.name: i for i, k in enumerate(corruption_kinds())}
    first = g.drop_duplicates("corruption")
    pairs = zip(first["corruption_kind"], first["level"])
    key = [(order.get(k, len(order)), -1.0 if pd.isna(v) else v) for k, v in pairs]
    return [c for _, c in sorted(zip(key, first["corruption"]))]


def _noise_title(row) -> str:
    """A panel's noise: `p = 0.4` for labels (the paper's), `pair flips, p = 0.4`, `labels from a file`."""
    kind = row["corruption_kind"]
    if kind == "labels":
        return f"p = {row['level']:g}"
    legend = (corruption_kind(kind).legend or kind.replace("_", " ")) if kind in KIND_NAMES else kind
    return legend if pd.isna(row["level"]) else f"{legend}, p = {row['level']:g}"


def _cell_title(model: str, regs: str, variant: str) -> str:
    return f"{MODEL_LABEL.get(model, model)}, {_regularizer_label(regs)}" + (f" ({variant})" if variant else "")


@figure(
    "memorization",
    inputs=("memorization.csv",),
    caption="""\
Memorization under label noise (not in the paper; Arpit et al., ICML 2017):
for every label-corrupted run, a row of panels per model and regularizers and
a panel per label noise (random labels at each level p; pair flips at each
level and labels from a file, where the grid has them), against thousand steps, from the evaluation of
the whole training set after each epoch: the accuracy on the examples whose
label is intact (a label the random draw gave back unchanged counts as intact),
the share of the corrupted examples predicted as their assigned (wrong) label
(memorized) and as their original label, and the test accuracy, all percent.
A network first fits the intact labels and predicts the original label of many
corrupted examples; it memorizes the wrong labels later, and the test accuracy
peaks before that. Rows with regularizers (weight decay, dropout) beside the
runs without show whether they slow memorization.
Means over the seeds with the 95% t-interval up to the step where the first
seed stops, then each seed on a thin line; filled circle fitted, open circle
stopped at the epoch limit, cross diverged (never in the mean). A panel of a
run folder written before the engines recorded the split says so.
""",
)
def memorization(mem: pd.DataFrame):
    """Per model x regularizers (rows) and label-corruption level (panels), against thousand steps (one scale per
    model): the accuracy on the training examples whose label is intact, the share of the corrupted examples
    predicted as their (wrong) label and as their original label, and the test accuracy, all percent; means
    over seeds with the t-band up to where the first seed stops, then per seed, each end marked by its state
    (_seed_curves)."""
    plt, sns = _plot_libs()
    from matplotlib.lines import Line2D

    d = mem.copy()
    d["variant"] = d["variant"].fillna("") if len(d) else d["variant"]
    if "corruption_kind" not in d:  # a table written before the column
        d["corruption_kind"] = [noise_of(c)[0] for c in d["corruption"]]
    cells = _cells(d)
    ncols = max(
        [
            d.loc[(d["model"] == m) & (d["regularizers"] == r) & (d["variant"] == v), "corruption"].nunique()
            for m, r, v in cells
        ]
        or [1]
    )
    fig, axes = plt.subplots(
        max(len(cells), 1), ncols, figsize=(2.8 * ncols, 2.4 * max(len(cells), 1)), squeeze=False, sharey=True
    )
    colors = _palette(list(SPLIT_SERIES))
    for i, (model, regs, variant) in enumerate(cells):
        g = d[(d["model"] == model) & (d["regularizers"] == regs) & (d["variant"] == variant)]
        panels = _noise_panels(g)
        for j, ax in enumerate(axes[i]):
            if j >= len(panels):
                ax.set_axis_off()
                continue
            p = g[g["corruption"] == panels[j]].copy()
            p["thousand steps"] = p["step"] / 1000.0
            for column, label in SPLIT_SERIES.items():
                if p[column].notna().any():
                    _seed_curves(ax, p, "thousand steps", column, colors[column], label)
            if not p[["clean_acc", "noisy_memorized", "noisy_true"]].notna().any().any():
                ax.text(
                    0.5,
                    0.5,
                    "no split recorded\n(run folder older than it)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize="x-small",
                    gid="no-split",
                )
            ax.set_title(f"{_cell_title(model, regs, variant)}: {_noise_title(p.iloc[0])}", fontsize="small")
            ax.set_ylim(0, 102)
            # one step axis per model: with and without regularizers side by side at the same scale
            ax.set_xlim(0, 1.02 * d.loc[d["model"] == model, "step"].max() / 1000.0)
            ax.set_xlabel("thousand steps" if i == len(cells) - 1 else "")
            ax.set_ylabel("% of examples" if j == 0 else "")
    if cells:
        handles = [Line2D([], [], color=colors[c], label=label) for c, label in SPLIT_SERIES.items()]
        handles += [
            Line2D([], [], color="0.3", marker="o", linestyle="", label=STATE_LABEL["fitted"]),
            Line2D(
                [], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label=STATE_LABEL["max_epochs"]
            ),
            Line2D([], [], color="0.3", marker="x", linestyle="", label=STATE_LABEL["diverged"]),
        ]
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize="x-small")
    else:
        _empty(axes[0][0], "no label-corruption runs")
    fig.suptitle("Memorization under label noise: the training set split by its labels", y=1.01)
    fig.tight_layout()
    return fig


@figure(
    "early_stopping",
    inputs=("early_stopping.csv",),
    caption="""\
Early stopping under label noise, beside Figure 1c: per model and
regularizers, the best test accuracy over the epochs of each run (solid, "best
during training") and the test accuracy when training ended (fitted, or at the
epoch limit), against the label-corruption level. The gap is what stopping at
the best epoch would have kept (tables/early_stopping.csv: gap = best - final,
in points). The best epoch is chosen on the test set, so this is an upper bound
on what early stopping on held-out data would keep; the paper's Table 2 notes
the same gap on ImageNet (63.16% best, 59.80% at the end).
The line is the mean over the fitted seeds; open circles: runs stopped at the
epoch limit, at their numbers then; crosses on the bottom: diverged runs (no
value). Lines only where a model has levels strictly between 0 and 1.
Pair flips (pairflip) are series of their own ("... (pair flips)"), never
averaged with random labels at the same level; labels from a file have no
level and are in tables/early_stopping.csv only.
""",
)
def early_stopping(es: pd.DataFrame):
    """Per model x regularizers: the best test accuracy over the epochs (solid) and the one at the end of training
    against label corruption, each as Fig. 1c marks a run's state (_by_state): the line the mean over the fitted
    seeds, open markers for runs stopped at the epoch limit, crosses on the axis for diverged runs."""
    plt, sns = _plot_libs()
    d = es.copy()
    d["variant"] = d["variant"].fillna("") if len(d) else d["variant"]
    cells = _cells(d)
    fig, axes = plt.subplots(1, max(len(cells), 1), figsize=(3.6 * max(len(cells), 1), 3.2), squeeze=False, sharey=True)
    series = {"best_test_acc": "best during training", "final_test_acc": "at the end of training"}
    if "corruption_kind" not in d:  # a table written before the column
        d["corruption_kind"] = [noise_of(c)[0] for c in d["corruption"]]
    colors = _palette(list(dict.fromkeys(_early_stopping_series(d, series)["model"])))
    for j, (ax, (model, regs, variant)) in enumerate(zip(axes[0], cells)):
        g = d[(d["model"] == model) & (d["regularizers"] == regs) & (d["variant"] == variant)]
        long = _early_stopping_series(g, series)
        long["_mean"] = long["status"] == "fitted"
        _by_state(ax, long, "test_acc", colors, _line_models(long))
        ax.set_title(_cell_title(model, regs, variant), fontsize="small")
        ax.set_xlabel("label corruption")
        ax.set_ylabel("test accuracy (%)" if j == 0 else "")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0, 100)
    if cells:
        _state_legend(axes[0][-1], stopped=" (its numbers then)", diverged=" (on the axis: no value)", **OUTSIDE)
    else:
        _empty(axes[0][0], "no label-corruption runs")
    fig.suptitle("Early stopping: the best test accuracy during training and at its end", y=1.02)
    return fig


def _early_stopping_series(g: pd.DataFrame, series: dict) -> pd.DataFrame:
    """early_stopping.csv's rows as the figure's series (column `model`, x `label_level`): best and final test
    accuracy per label-noise kind with levels, the true-label runs (level 0) in each; `labels`'s series keep
    their names, pairflip's add the kind's legend ("best during training (pair flips)"). Kinds without levels (a
    label file) have no place on the axis: they are in the table only."""
    with_levels = [k for k in dict.fromkeys(g["corruption_kind"]) if k != "true_labels" and k in KIND_NAMES]
    with_levels = [k for k in with_levels if corruption_kind(k).levels] or ["labels"]
    parts = []
    for kind in with_levels:
        rows = g[g["corruption_kind"].isin([kind, "true_labels"])]
        suffix = "" if kind == "labels" else f" ({corruption_kind(kind).legend or kind})"
        parts += [rows.assign(model=label + suffix, test_acc=rows[column]) for column, label in series.items()]
    long = pd.concat(parts, ignore_index=True)
    long["label_level"] = long["level"]
    return long


def kernel_curve(noise: pd.DataFrame | None) -> pd.DataFrame | None:
    """The min-norm interpolant's test error against label corruption (kernel_noise.csv), as Fig. 1c's rows
    (None without it)."""
    if noise is None:
        return None
    return pd.DataFrame(
        {
            "model": "Gaussian kernel (min-norm)",
            "label_level": noise["level"],
            "test_error": noise["test_error"],
            "status": "fitted",
            "relative_steps": np.nan,
            "seed": 0,
        }
    )


def figures(cfg: dict) -> Path:
    """Every figure entry of the stage, from the tables."""
    sns = _plot_libs()[1]
    sns.set_theme(context="paper", style="whitegrid")
    produce("figures", cfg)
    return figures_dir(cfg)
