"""What every stage that draws shares: matplotlib and seaborn imported on demand, and figures saved as
PNG and PDF, atomically and without timestamps.

The figure stages (rethinking.analysis.figures; rethinking.section5.stages for Section 5 and Theorem 1) import this
module and not each other. It imports neither matplotlib nor seaborn itself: the Snakemake rules import
the stages for their file names, and seaborn (with scipy) alone takes ~3 s to import.
"""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_path

MODEL_LABEL = {  # the models' names in the figures (others: the entry as written)
    "inception": "Inception",
    "inception_nobn": "Inception w/o BatchNorm",
    "alexnet": "AlexNet",
    "mlp_1x512": "MLP 1x512",
    "mlp_3x512": "MLP 3x512",
    "inception_v3": "Inception V3",
}


def plot_libs():
    """pyplot (Agg backend) and seaborn, imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    return plt, sns


def save_figure(fig, base: Path) -> None:
    """PNG and PDF of a figure (`base` without its suffix), each written atomically; the figure is closed."""
    plt = plot_libs()[0]
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(base.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=_metadata(ext))
    plt.close(fig)


def _metadata(ext):  # no timestamps: the same tables give the same files
    return {"CreationDate": None} if ext == "pdf" else {"Software": None}


def empty(ax, text):
    """An axes with nothing to draw: `text` in its middle, no frame."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
