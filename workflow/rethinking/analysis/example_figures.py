"""Stage `aggregate`, per example: figures drawn from the runs' records (examples.npz), PNG and PDF.

They need every example of a run, not a table, so they are entries of the aggregate stage (which reads the
records: its `records` context) rather than of `figures` (which reads tables only):

- data_map        variability against confidence of every training example (Swayamdipta et al. 2020), intact
                  and corrupted labels in two colours, per model at the label level nearest examples.map_level
- learned_epochs  the share of intact and of corrupted examples learned for good by each epoch, per model and
                  label level (their cumulative distribution; never-learned examples keep a curve below 1)
- detection_roc   ROC curves of flagging the corrupted labels by each score, per model and level
- suspect_images  the most suspect images by AUM (suspects.csv) per model at the map level, each titled with the
                  label it was trained on and its original label

Figures use the runs without regularizers or variants (as Fig. 1) and one run per model and level (the lowest
seed that did not diverge) where a figure shows one run. pandas and matplotlib on first use.
"""

from __future__ import annotations

import numpy as np

from ..files import load_npz
from ..lazy import lazy_module
from ..plan import base_artifact, is_streamed
from .examples import CELL, recorded
from .outputs import figure
from .plotting import MODEL_LABEL, empty, plot_libs
from .scores import Records, roc_auc, roc_curve, score_names, suspicion

pd = lazy_module("pandas")

COLORS = {"intact": "#1f77b4", "corrupted": "#d62728"}
NOTHING = "no run with a per-example record (examples.npz)"


def _plain(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["regularizers"] == "none") & (runs["variant"] == "") & runs["label_level"].notna()]


def _model(name: str) -> str:
    return MODEL_LABEL.get(name, name)


def by_level(runs: pd.DataFrame, records: Records) -> dict:
    """{model: {level: [(row, meta, arrays) per seed, lowest first]}} of the plain runs on the label axis with a
    record, diverged runs left out."""
    out: dict = {}
    for rec in recorded(_plain(runs).sort_values(["model", "label_level", "seed"]), records, diverged=False):
        r = rec[0]
        out.setdefault(r["model"], {}).setdefault(float(r["label_level"]), []).append(rec)
    return out


def map_cells(cfg: dict, runs: pd.DataFrame, records: Records) -> list:
    """Per model, the records (seeds) of its label-corrupted level nearest examples.map_level (the lower of two
    as near): [(model, level, [records])]."""
    target = float(cfg["examples"]["map_level"])
    out = []
    for model, levels in by_level(runs, records).items():
        corrupted = [lv for lv in levels if lv > 0]
        if corrupted:
            level = min(corrupted, key=lambda lv: (abs(lv - target), lv))
            out.append((model, level, levels[level]))
    return out


def _grid(n: int, ncols: int, size: tuple[float, float]):
    plt = plot_libs()[0]
    ncols = max(1, min(n, ncols))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


@figure(
    "data_map",
    stage="records",
    caption="""\
Data maps (Swayamdipta et al. 2020) of label-corrupted training sets: each
training example's mean probability of its label over the epochs (confidence)
against its standard deviation (variability), intact labels in blue, corrupted
ones in red, one run per model at the label-corruption level nearest
``examples.map_level``. Corrupted labels sit low (hard to learn) until the
network memorizes them.
""",
)
def data_map(cfg: dict, runs: pd.DataFrame, records: Records):
    cells = map_cells(cfg, runs, records)
    fig, axes = _grid(max(len(cells), 1), 3, (4.2, 3.8))
    if not cells:
        empty(axes[0, 0], NOTHING)
        return fig
    for ax, (model, level, recs) in zip(axes.flat, cells):
        r, meta, a = recs[0]
        noisy = a["label"] != a["label_true"]
        size = float(np.clip(6000 / len(noisy), 1, 16))
        for name, mask in (("intact", ~noisy), ("corrupted", noisy)):
            ax.scatter(
                a["variability"][mask],
                a["confidence"][mask],
                s=size,
                alpha=0.5,
                color=COLORS[name],
                linewidths=0,
                rasterized=True,
                label=f"{name} ({int(mask.sum())})",
            )
        ax.set(xlabel="variability (sd of p over epochs)", ylabel="confidence (mean p of its label)", ylim=(0, 1))
        ax.set_title(f"{_model(model)}, p = {level:g} (seed {r['seed']}, {r['epochs']} epochs)", fontsize="medium")
        ax.legend(fontsize="small", loc="upper right", markerscale=max(1.0, 12 / size))
    fig.tight_layout()
    return fig


def _learned_share(recs: list, mask_of, epochs: np.ndarray) -> np.ndarray | None:
    """The share of the examples selected by `mask_of(arrays)`, pooled over seeds, learned by each epoch."""
    learned = np.concatenate([a["learned_epoch"][mask_of(a)] for _, _, a in recs])
    if not len(learned):
        return None
    done = np.where(learned > 0, learned, np.inf)
    return (done[None, :] <= epochs[:, None]).mean(1)


@figure(
    "learned_epochs",
    stage="records",
    caption="""\
When the training examples are learned for good (classified as their label at
every evaluation from then on): the share of the intact (solid) and of the
corrupted (dashed) examples learned by each epoch, per label-corruption level
(colour) and model, pooled over seeds. Intact labels are learned first, the
corrupted ones later (memorization, Arpit et al. 2017); a curve that ends below
1 has examples the run never learned.
""",
)
def learned_epochs(runs: pd.DataFrame, records: Records):
    plt, sns = plot_libs()
    models = by_level(runs, records)
    fig, axes = _grid(max(len(models), 1), 3, (4.4, 3.6))
    if not models:
        empty(axes[0, 0], NOTHING)
        return fig
    levels = sorted({lv for m in models.values() for lv in m})
    palette = dict(zip(levels, sns.color_palette("viridis", n_colors=len(levels))))
    for ax, (model, by) in zip(axes.flat, models.items()):
        last = max(int(m["epochs"]) for recs in by.values() for _, m, _ in recs)
        epochs = np.arange(1, last + 1)
        for level, recs in by.items():
            for style, mask_of in (
                ("-", lambda a: a["label"] == a["label_true"]),
                ("--", lambda a: a["label"] != a["label_true"]),
            ):
                share = _learned_share(recs, mask_of, epochs)
                if share is not None:
                    ax.step(epochs, share, where="post", color=palette[level], linestyle=style, linewidth=1.3)
        ax.set(xscale="log", xlabel="epoch", ylabel="share learned for good", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(_model(model), fontsize="medium")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[lv], label=f"p = {lv:g}") for lv in levels] + [
        Line2D([], [], color="0.3", linestyle="-", label="intact labels"),
        Line2D([], [], color="0.3", linestyle="--", label="corrupted labels"),
    ]
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small")
    return fig


@figure(
    "detection_roc",
    stage="records",
    caption="""\
Finding the corrupted labels from one training run: ROC curves of flagging the
examples whose label was corrupted by each per-example score (aum: area under
the margin; learned: epoch learned for good; forgetting: forgetting events;
confidence; loss: final cross-entropy), highest suspicion first, with each
curve's area in the legend; a row per model, a column per label-corruption
level, one run each (the lowest seed). The diagonal is chance.
""",
)
def detection_roc(runs: pd.DataFrame, records: Records):
    plt, sns = plot_libs()
    models = {m: {lv: recs[0] for lv, recs in by.items() if lv > 0} for m, by in by_level(runs, records).items()}
    models = {m: by for m, by in models.items() if by}
    levels = sorted({lv for by in models.values() for lv in by})
    nrows, ncols = max(len(models), 1), max(len(levels), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.0 * nrows), squeeze=False, sharex=True, sharey=True)
    if not models:
        empty(axes[0, 0], NOTHING)
        return fig
    palette = dict(zip(score_names(), sns.color_palette(n_colors=len(score_names()))))
    for i, (model, by) in enumerate(models.items()):
        for j, level in enumerate(levels):
            ax = axes[i, j]
            rec = by.get(level)
            if rec is None:
                empty(ax, f"{_model(model)}: no run at p = {level:g}")
                continue
            r, meta, a = rec
            noisy = a["label"] != a["label_true"]
            ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8, linestyle=":")
            for name in score_names():
                s = suspicion(name, a, meta)
                fpr, tpr = roc_curve(s, noisy)
                ax.plot(fpr, tpr, color=palette[name], linewidth=1.2, label=f"{name} {roc_auc(s, noisy):.3f}")
            ax.set_title(f"{_model(model)}, p = {level:g} (seed {r['seed']})", fontsize="small")
            ax.legend(fontsize="x-small", loc="lower right", title="AUC", title_fontsize="x-small")
            ax.set(xlim=(0, 1), ylim=(0, 1.01))
        axes[i, 0].set_ylabel("share of corrupted labels found")
    for ax in axes[-1]:
        ax.set_xlabel("share of intact labels flagged")
    fig.tight_layout()
    return fig


def train_images(cfg: dict) -> np.ndarray | None:
    """The base artifact's training images (N x C x H x W uint8); None for a streamed dataset (files on disk)."""
    if is_streamed(cfg):
        return None
    return load_npz(base_artifact(cfg))[1].get("x_train")


def _show(ax, image) -> None:
    """One N x C x H x W image, grayscale for one channel."""
    img = np.asarray(image)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray_r" if img.mean() < 128 else "gray", interpolation="nearest")
    else:
        ax.imshow(np.moveaxis(img[:3], 0, -1), interpolation="nearest")


def _title(row) -> tuple[str, str]:
    changed = bool(row["corrupted"])
    text = f"label: {row['label_name']}\norig.: {row['label_true_name']}"
    return text, "#d62728" if changed else "black"


@figure(
    "suspect_images",
    stage="records",
    inputs=("suspects.csv",),
    category="Figures",
    caption="""\
The training images most likely mislabeled, by area under the margin averaged
over seeds (suspects.csv), a row per model at the label-corruption level nearest
``examples.map_level`` (most suspect first): each titled with the label it was
trained on and its original label, red where the corruption changed it (the
score found a corrupted label), black where the label is the dataset's own.
Streamed datasets show the files' names instead of the images.
""",
)
def suspects_figure(table: pd.DataFrame, cfg: dict, runs: pd.DataFrame, records: Records):
    plt = plot_libs()[0]
    n = int(cfg["examples"]["images"])
    rows = []
    for model, level, recs in map_cells(cfg, runs, records):
        key = dict(zip(CELL, (model, "none", "", recs[0][0]["corruption"])))
        sel = table[np.logical_and.reduce([table[c].fillna("").astype(str) == str(v) for c, v in key.items()])]
        rows.append((model, level, sel.sort_values("rank").head(n)))
    ncols = max([len(sel) for *_, sel in rows] + [1])
    fig, axes = plt.subplots(
        max(len(rows), 1), ncols, figsize=(1.3 * ncols + 0.6, 1.75 * max(len(rows), 1)), squeeze=False
    )
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    if not rows:
        empty(axes[0, 0], NOTHING)
        return fig
    images = train_images(cfg)
    for i, (model, level, sel) in enumerate(rows):
        axes[i, 0].set_ylabel(f"{_model(model)}\np = {level:g}", fontsize="small")
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(sel):
                ax.set_axis_off()
                continue
            row = sel.iloc[j]
            if images is not None:
                _show(ax, images[int(row["index"])])
            else:
                ax.text(
                    0.5, 0.5, str(row["origin"]).rsplit("/", 1)[-1], ha="center", va="center", fontsize=6, wrap=True
                )
            text, color = _title(row)
            ax.set_title(text, fontsize=7.5, color=color, linespacing=1.1)
    fig.suptitle(
        "most suspect first (lowest AUM, mean over seeds); red: the corruption changed the label, black: its own label",
        fontsize="small",
    )
    fig.tight_layout(h_pad=1.2)
    return fig
