"""Per-example scores: from a run's record (examples.npz, rethinking.engine.examples) to one "suspicion" value
per training example, higher = more likely mislabeled; and the numbers that say how well a score finds the
corrupted labels (ROC-AUC, average precision, precision at k), in numpy.

A score is one registry entry, a function of a record's arrays and meta:

    register(Score("never_right", lambda a, meta: (~correct_matrix(a["correct_bits"], meta["epochs"])).sum(1),
                   "evaluations at which it was not classified as its label"))

Then `noise_detection.csv`, `example_agreement.csv`, the ROC figure and `python -m rethinking examples --by
never_right` have it. numpy only at import (the Snakemake rules import the modules holding the tables).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.examples import EXAMPLES, correct_matrix, read_record
from ..errors import ConfigError
from ..plan import runs_root


@dataclass(frozen=True)
class Score:
    name: str
    suspicion: Callable[[dict, dict], np.ndarray]  # (arrays, meta) -> one float per example, higher = more suspect
    text: str  # what it is, one line (the CLI's help, the tables' docs)


SCORES: dict[str, Score] = {}


def register(score: Score) -> Score:
    """Add a score; a name registered by another module is an error (a reloaded module replaces its own)."""
    old = SCORES.get(score.name)
    if old is not None and getattr(old.suspicion, "__module__", None) != getattr(score.suspicion, "__module__", None):
        raise ConfigError(f"score {score.name!r}: registered already; unregister it first or choose another name")
    SCORES[score.name] = score
    return score


def unregister(name: str) -> None:
    SCORES.pop(name, None)


def score_names() -> tuple[str, ...]:
    return tuple(SCORES)


def suspicion(name: str, arrays: dict, meta: dict) -> np.ndarray:
    """Score `name` of every example of a record, as float64."""
    if name not in SCORES:
        raise ConfigError(f"score {name!r}: unknown (known: {', '.join(SCORES)})")
    value = np.asarray(SCORES[name].suspicion(arrays, meta), dtype=np.float64)
    if value.shape != arrays["label"].shape:
        raise ConfigError(f"score {name!r}: gives shape {value.shape}, expected one value per example")
    return value


def _never(meta: dict) -> int:
    """The value of "never": after every epoch the run trained (epochs + 1)."""
    return int(meta["epochs"]) + 1


def _learned(arrays: dict, meta: dict) -> np.ndarray:
    learned = arrays["learned_epoch"].astype(np.int64)
    return np.where(learned < 0, _never(meta), learned)


def _forgetting(arrays: dict, meta: dict) -> np.ndarray:
    # Toneva et al. count an example never classified right as forgotten infinitely often: here epochs + 1,
    # above any count a run can reach (a forgetting event takes two evaluations: at most epochs / 2 of them)
    ever = correct_matrix(arrays["correct_bits"], int(meta["epochs"])).any(1)
    return np.where(ever, arrays["forgetting"].astype(np.int64), _never(meta))


register(Score("aum", lambda a, m: -a["aum"], "area under the margin (Pleiss et al. 2020), negated"))
register(Score("learned", _learned, "epoch from which it is classified as its label for good; never: epochs + 1"))
register(Score("forgetting", _forgetting, "forgetting events (Toneva et al. 2019); never right once: epochs + 1"))
register(Score("confidence", lambda a, m: -a["confidence"], "mean probability of its label over epochs, negated"))
register(Score("loss", lambda a, m: a["final_loss"], "cross-entropy of its label at the last evaluation"))
# data maps' third coordinate (Swayamdipta et al. 2020), from the per-epoch bits: on the default experiment it
# finds the corrupted labels at level 0.8 where the AUM's mean margin, which the late (memorized) epochs'
# large logits dominate, no longer does (README, "Which of my labels are wrong?")
register(
    Score(
        "correctness",
        lambda a, m: -correct_matrix(a["correct_bits"], int(m["epochs"])).mean(1),
        "share of the evaluations at which it was classified as its label (data maps), negated",
    )
)


# ----------------------------------------------------------------------------------------- ranks and detection


def average_ranks(x) -> np.ndarray:
    """1-based ranks of `x`, ties given the mean of the ranks they span (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    first = np.r_[True, s[1:] != s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends + 1) / 2.0)[group]
    return ranks


def _checked(score, positive) -> tuple[np.ndarray, np.ndarray] | None:
    """float scores and bool labels; None where no number can be given (a NaN score, one class only)."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    if np.isnan(score).any() or positive.all() or not positive.any():
        return None
    return score, positive


def roc_auc(score, positive) -> float:
    """Area under the ROC curve of flagging `positive` by a high `score`: the Mann-Whitney U statistic over
    n_pos x n_neg, ties counted one half."""
    checked = _checked(score, positive)
    if checked is None:
        return float("nan")
    score, positive = checked
    n_pos, n_neg = positive.sum(), (~positive).sum()
    u = average_ranks(score)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _thresholds(score, positive) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when flagging every example scored at least each distinct score, highest first."""
    order = np.argsort(-score, kind="mergesort")
    s, p = score[order], positive[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last example of each group of equal scores
    tp = np.cumsum(p)[last]
    fp = np.cumsum(~p)[last]
    return tp.astype(np.float64), fp.astype(np.float64)


def average_precision(score, positive) -> float:
    """Average precision: sum over the distinct thresholds of (recall gained) x precision there, equal scores
    one threshold (sklearn.metrics.average_precision_score's definition, no interpolation)."""
    checked = _checked(score, positive)
    if checked is None:
        return float("nan")
    tp, fp = _thresholds(*checked)
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(score, positive) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at each distinct threshold, from (0, 0)."""
    checked = _checked(score, positive)
    if checked is None:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    tp, fp = _thresholds(*checked)
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def precision_at_k(score, positive, k: int | None = None) -> float:
    """The share of corrupted examples among the k most suspect (k: the number of corrupted ones, where
    precision and recall are the same number). Examples tied at the k-th score count as a random draw among
    them would: their expected share."""
    checked = _checked(score, positive)
    if checked is None:
        return float("nan")
    score, positive = checked
    k = int(positive.sum()) if k is None else int(k)
    if k <= 0:
        return float("nan")
    cut = np.sort(score)[::-1][min(k, len(score)) - 1]
    above, tied = score > cut, score == cut
    hits = positive[above].sum() + positive[tied].sum() * (k - above.sum()) / tied.sum()
    return float(hits / k)


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks); NaN where either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def detection(arrays: dict, meta: dict, name: str) -> dict:
    """How score `name` finds a record's corrupted examples (label != label_true)."""
    positive = arrays["label"] != arrays["label_true"]
    s = suspicion(name, arrays, meta)
    return {
        "roc_auc": roc_auc(s, positive),
        "average_precision": average_precision(s, positive),
        "precision_recall_at_k": precision_at_k(s, positive),
    }


# ----------------------------------------------------------------------------------------- reading records


class Records:
    """The per-example records of a results tree's runs by run id, each read once; None for a run folder made
    before the record existed. A damaged record raises ArtifactError naming its file."""

    def __init__(self, cfg: dict):
        self.root = runs_root(cfg)
        self._read: dict = {}

    def __call__(self, run_id: str) -> tuple[dict, dict] | None:
        if run_id not in self._read:
            self._read[run_id] = read_record(self.root / run_id)
        return self._read[run_id]

    def path(self, run_id: str) -> Path:
        return self.root / run_id / EXAMPLES


def class_names(record_meta: dict, base_meta: dict | None = None) -> list[str] | None:
    """The class names of a record: its meta's `classes` when a list of names, else the base artifact's."""
    for meta in (record_meta, base_meta or {}):
        classes = meta.get("classes")
        if isinstance(classes, (list, tuple)) and classes:
            return [str(c) for c in classes]
    return None


def label_name(labels, names: list[str] | None) -> list[str]:
    """Each label's class name (the label itself where there are no names or it is out of range)."""
    labels = np.asarray(labels)
    if not names:
        return [str(v) for v in labels]
    return [names[v] if 0 <= v < len(names) else str(v) for v in labels.tolist()]
