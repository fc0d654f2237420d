"""How much capacity memorization takes: the interpolation threshold of a model family (issue #24).

A width family is the models of one grid whose names differ only in a width: ``mlp_<depth>x<width>`` (family
``mlp_<depth>x``), ``resnet18_k<k>`` (family ``resnet18_k``) and a user's factory ``file.py:function@<width>``
(family ``file.py:function@``). For each family x training set x corruption x regularizers x variant with at
least two widths, `capacity.csv` gives the smallest width whose runs all fit
their training set within the epoch budget, the largest width below it whose runs did not (none fitted, or
the seeds disagreed: "mixed"), their parameter counts, and beside them Theorem 1's 2n + d (a depth-2 ReLU
network with that many weights fits any labels of n points in d dimensions) and n x K (Belkin et al.'s
interpolation threshold of a network of K outputs). States are never interpolated: a family where every width
fitted says "all fitted", one where none did "no width fitted", and the widths in between are listed as they
ended. The converse, `fit_sizes.csv`, exists where the grid trains on two training-set sizes or more (a group's
`train_sizes`): per model, the largest training set it fits (every smaller size fitted too) and the smallest
size above it that it did not, beside Theorem 1's (P - d) / 2 (the most points P weights are known to fit).
The figure (`double_descent`) draws train and test error against width from runs.csv, one column per family and
training set, and test error against epoch of the threshold-sized and the largest width from
capacity_curves.csv (every run of a width family, per epoch, at every training-set size).
"""

from __future__ import annotations

import math

from ..lazy import lazy_module
from ..models import width_of
from ..plan import expand_runs, runs_root
from .outputs import figure, table
from .stats import ci95

pd = lazy_module("pandas")

CELL_COLUMNS = ["d", "classes", "corruption", "level", "regularizers", "variant"]  # both tables': input size, K, cell
CAPACITY_COLUMNS = [
    "family",
    "dataset",
    "n_train",
    *CELL_COLUMNS,
    "widths",
    "state",
    "fit_width",
    "fit_parameters",
    "nofit_width",
    "nofit_parameters",
    "mixed_widths",
    "theorem1_2n_plus_d",
    "n_times_k",
    "fit_parameters_over_2n_plus_d",
]
FIT_SIZE_COLUMNS = [
    "model",
    "family",
    "width",
    "parameters",
    *CELL_COLUMNS,
    "sizes",
    "fitted_sizes",
    "state",
    "fit_n",
    "nofit_n",
    "mixed_sizes",
    "theorem1_n",
    "parameters_over_k",
]
CURVE_KEYS = ["dataset", "n_train", "model", "corruption", "level", "seed", "status"]
CURVE_COLUMNS = [*CURVE_KEYS, "epoch", "train_acc", "test_acc"]


def family_of(model: str) -> tuple[str, int] | None:
    """(family, width) of a model entry in a width family (rethinking.models.WIDTH_FAMILIES); None for any
    other model. A member's entry is its family and its width: `f"{family}{width}"`."""
    return width_of(model)


def has_width_sweep(cfg: dict) -> bool:
    """The grid trains some family at two widths or more (the capacity outputs exist only then)."""
    widths: dict[str, set] = {}
    for group in cfg.get("grid", []):
        for model in group.get("models", []):
            found = family_of(model)
            if found:
                widths.setdefault(found[0], set()).add(found[1])
    return any(len(w) > 1 for w in widths.values())


def has_size_sweep(cfg: dict) -> bool:
    """The grid trains on two training-set sizes or more (fit_sizes.csv exists only then)."""
    return len({r.dataset for r in expand_runs(cfg)}) > 1


def _with_family(runs):
    """The runs of width families, with their family and width."""
    frame = runs.assign(variant=runs["variant"].fillna(""))
    found = [family_of(m) for m in frame["model"]]
    frame = frame.assign(family=[f[0] if f else None for f in found], width=[f[1] if f else None for f in found])
    return frame[frame["family"].notna()].astype({"width": int})


def _sweeps(frame, keys: list[str], by: str, meta: dict):
    """(the cell's key values, its runs, d, K) of each cell of `keys` whose runs sweep `by` over two values or
    more; d: the input's size after the crop, K: the classes."""
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        if group[by].nunique() >= 2:
            yield (
                dict(zip(keys, key)),
                group,
                math.prod(int(v) for v in group["input_shape"].iloc[0]),
                len(meta["classes"]),
            )


def _width_states(group, by: str = "width") -> list[tuple[int, str, int]]:
    """(value of `by`, how its seeds ended: fitted | not fitted | mixed, parameters), by that value."""
    out = []
    for value, runs in group.groupby(by, sort=True):
        fitted = runs["status"] == "fitted"
        state = "fitted" if fitted.all() else "not fitted" if not fitted.any() else "mixed"
        out.append((int(value), state, int(runs["parameters"].iloc[0])))
    return out


def _threshold(states: list[tuple[int, str, int]]) -> dict:
    """The smallest width from which every width fitted, and the largest below it that did not."""
    fit = None
    for i in range(len(states) - 1, -1, -1):  # from the widest down, while every width fitted
        if states[i][1] != "fitted":
            break
        fit = i
    row = {"mixed_widths": " ".join(str(w) for w, s, _ in states if s == "mixed")}
    if fit is None:  # the widest did not fit every seed: no width from which all fitted, whatever fitted below
        if any(s == "fitted" for _, s, _ in states):
            return {**row, "state": f"no threshold (widest {states[-1][1]})"}
        return {**row, "state": "no width fitted"}
    below = states[fit - 1] if fit > 0 else None
    row.update(fit_width=states[fit][0], fit_parameters=states[fit][2])
    if below is None:
        return {**row, "state": "all fitted"}
    row.update(nofit_width=below[0], nofit_parameters=below[2], state=f"threshold ({below[1]} below)")
    return row


@table(
    "capacity.csv",
    when=has_width_sweep,
    caption="""\
The interpolation threshold of each width family (MLP widths, ResNet-18 widths k): per training set, label
corruption and regularizers, the smallest width whose runs all fit the training set within the epoch budget
and the largest width below it that did not (none of its seeds fitted, or they disagreed: mixed), with their
parameter counts beside Theorem 1's 2n + d and n x K. "no width fitted" and "all fitted" say when the sweep
does not bracket the threshold, "no threshold (widest ...)" when the widest width did not fit every seed.
""",
)
def capacity(all_runs, meta: dict):
    frame = _with_family(all_runs)
    keys = ["family", "dataset", "n_train", "corruption", "level", "regularizers", "variant"]
    rows = []
    for cell, group, d, k in _sweeps(frame, keys, "width", meta):
        n = int(cell["n_train"])
        row = dict(cell, d=d, classes=k, widths=" ".join(str(w) for w in sorted(group["width"].unique())))
        row.update(_threshold(_width_states(group)), theorem1_2n_plus_d=2 * n + d, n_times_k=n * k)
        if "fit_parameters" in row:
            row["fit_parameters_over_2n_plus_d"] = row["fit_parameters"] / (2 * n + d)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=CAPACITY_COLUMNS)


def _largest_fitted(states: list[tuple[int, str, int]]) -> dict:
    """The largest training-set size up to which every size fitted, and the smallest above it that did not."""
    fit = None
    for i, (_, state, _) in enumerate(states):  # from the smallest up, while every size fitted
        if state != "fitted":
            break
        fit = i
    row = {
        "mixed_sizes": " ".join(str(n) for n, s, _ in states if s == "mixed"),
        "fitted_sizes": " ".join(str(n) for n, s, _ in states if s == "fitted"),
    }
    if fit is None:  # the smallest did not fit every seed (fitted_sizes lists any larger one that did)
        if row["fitted_sizes"]:
            return {**row, "state": f"no size fitted up from the smallest (smallest {states[0][1]})"}
        return {**row, "state": "no size fitted"}
    row["fit_n"] = states[fit][0]
    if fit == len(states) - 1:
        return {**row, "state": "all fitted"}
    return {**row, "nofit_n": states[fit + 1][0], "state": f"fits up to n ({states[fit + 1][1]} above)"}


@table(
    "fit_sizes.csv",
    when=has_size_sweep,
    caption="""\
The converse of capacity.csv, per model of a width family: the largest training-set size it fits within the
epoch budget (every smaller size fitted too) and the smallest size above it that it did not (none of its seeds
fitted, or they disagreed: mixed), per label corruption, beside Theorem 1's (P - d) / 2 (the most points a
depth-2 ReLU network of P weights is known to fit) and P / K. fitted_sizes lists every size whose runs all
fitted, so a size fitted above one that was not is never hidden.
""",
)
def fit_sizes(all_runs, meta: dict):
    frame = _with_family(all_runs)
    keys = ["model", "family", "width", "corruption", "level", "regularizers", "variant"]
    rows = []
    for cell, group, d, k in _sweeps(frame, keys, "n_train", meta):
        params = int(group["parameters"].iloc[0])
        row = dict(cell, parameters=params, d=d, classes=k)
        row.update(sizes=" ".join(str(n) for n in sorted(group["n_train"].unique())))
        row.update(_largest_fitted(_width_states(group, "n_train")))
        row.update(theorem1_n=max((params - d) // 2, 0), parameters_over_k=params / k)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=FIT_SIZE_COLUMNS)


@table("capacity_curves.csv", when=has_width_sweep)
def capacity_curves(cfg: dict, all_runs):
    """Every width-family run's accuracies per epoch (epochs.csv), at every training-set size: the double-descent
    figure's epoch-wise panel."""
    frames = []
    for _, r in _with_family(all_runs).iterrows():
        f = pd.read_csv(runs_root(cfg) / r["run"] / "epochs.csv")
        for k in reversed(CURVE_KEYS):
            f.insert(0, k, r[k])
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True).reindex(columns=CURVE_COLUMNS)


@figure(
    "double_descent",
    inputs=("runs.csv", "capacity.csv", "capacity_curves.csv"),
    when=has_width_sweep,
    caption="""\
Train (dashed) and test (solid) error (%) against width (log axis), one column per width family and training
set (n), one colour per label-corruption level (p = 1: random labels): the mean over the seeds of each width,
with the 95% t-band of the test error's mean where there are several seeds; each run's test error as a filled
marker where it fitted its training set, an open one where it stopped at the epoch limit without fitting, a
cross at the top where it diverged (never averaged in); the dotted line marks the interpolation threshold of
capacity.csv (the smallest width from which every run fitted) at each level. Below, epoch-wise: test error
against epoch of the threshold-sized and the largest width at the highest label-corruption level below random
labels that has a threshold (mean over the seeds, to the epoch where the first seed stopped).
""",
)
def double_descent(runs, cap, curves):
    from .plotting import plot_libs

    plt, _ = plot_libs()
    frame = _with_family(runs)
    panels = [(fam, ds) for (fam, ds), g in frame.groupby(["family", "dataset"], sort=True) if g["width"].nunique() > 1]
    panels.sort(key=lambda p: (p[0], int(frame[frame["dataset"] == p[1]]["n_train"].iloc[0])))
    cols = max(len(panels), 1)
    fig, axes = plt.subplots(2, cols, figsize=(5.5 * cols, 7.5), squeeze=False)
    for i, (fam, ds) in enumerate(panels):
        own = frame[(frame["family"] == fam) & (frame["dataset"] == ds)]
        c = cap[(cap["family"] == fam) & (cap["dataset"] == ds)] if len(cap) else cap
        _draw_family(axes[0][i], own, c, plt)
        axes[0][i].set_title(f"{fam}<width>, n = {int(own['n_train'].iloc[0])} ({ds})", fontsize=9)
        on_ds = curves[curves["dataset"] == ds] if len(curves) else curves
        _draw_epochs(axes[1][i], fam, own, c, on_ds)
    fig.tight_layout()
    return fig


def _draw_epochs(ax, family: str, frame, cap, curves) -> None:
    """Epoch-wise: test error against epoch of the threshold-sized and the largest width."""
    have = cap[cap["fit_width"].notna() & (cap["level"].fillna(0) < 1)] if len(cap) else cap
    if not len(have):
        ax.text(0.5, 0.5, "no interpolation threshold to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    row = have.sort_values("level").iloc[-1]
    widths = {int(row["fit_width"]): "threshold"}
    widths.setdefault(int(frame["width"].max()), "largest")  # the same run once where the threshold is the largest
    for width, what in widths.items():
        sub = curves[(curves["model"] == f"{family}{width}") & (curves["corruption"] == row["corruption"])]
        sub = sub[sub["status"] != "diverged"]
        if not len(sub):
            continue
        g = sub.groupby("epoch")["test_acc"]
        mean = g.mean()[g.count() == sub["seed"].nunique()]
        ax.plot(mean.index, 100 * (1 - mean), label=f"width {width} ({what})")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"epoch-wise, {row['corruption']}", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)


def _draw_family(ax, frame, cap, plt) -> None:
    levels = sorted(frame["level"].fillna(0).unique())
    colours = plt.cm.viridis([i / max(len(levels) - 1, 1) for i in range(len(levels))])
    for colour, level in zip(colours, levels):
        runs = frame[frame["level"].fillna(0) == level]
        ok = runs[runs["status"] != "diverged"]
        g = ok.groupby("width")
        mean = g[["train_acc", "test_acc"]].mean().sort_index()
        ax.plot(mean.index, 100 - mean["test_acc"], "-", color=colour, label=f"test, p = {level:g}")
        ax.plot(mean.index, 100 - mean["train_acc"], "--", color=colour, alpha=0.6, label=f"train, p = {level:g}")
        half = g["test_acc"].agg(ci95).reindex(mean.index)
        if half.notna().any():  # several seeds: the 95% t-band of the mean test error
            err = 100 - mean["test_acc"]
            ax.fill_between(mean.index, err - half, err + half, color=colour, alpha=0.2, linewidth=0)
        fitted, stopped = runs[runs["status"] == "fitted"], runs[runs["status"] == "max_epochs"]
        ax.scatter(fitted["width"], 100 - fitted["test_acc"], color=colour, zorder=3)
        ax.scatter(stopped["width"], 100 - stopped["test_acc"], facecolors="white", edgecolors=colour, zorder=3)
        gone = runs[runs["status"] == "diverged"]
        ax.scatter(gone["width"], [100] * len(gone), marker="x", color=colour, zorder=3)
        at = cap[(cap["level"].fillna(0) == level)]["fit_width"].dropna() if len(cap) else []
        for w in at:
            ax.axvline(w, color=colour, linestyle=":", alpha=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("error (%)")
    ax.legend(fontsize=7)
