"""Stage `aggregate`, per example: which training labels the runs' records (examples.npz) say are wrong.

- noise_detection.csv   per run whose training set holds corrupted and intact examples, per score
                        (rethinking.analysis.scores): ROC-AUC, average precision and precision (= recall) at
                        k = the number of corrupted examples, of flagging the corrupted ones; mean / sd / ci95
                        over the seeds of a cell when they all ended in one state
- example_agreement.csv how alike two runs rank the examples (Spearman's rho of each score): seeds of one model,
                        and models with the same seed, on the same corrupted artifact
- suspects.csv          per cell on the label axis (true labels, labels at p, random labels): the
                        `examples.suspects` examples of lowest AUM, averaged over the cell's seeds
- example_metrics.json  per model (runs without regularizers), the AUM's ROC-AUC: `dvc metrics show`

Run folders made before the record existed have none: these tables leave them out (`runs_with_record` and
`runs_without_record` in example_metrics.json count them), and every other table reads them as before. The
figures drawn from the records are in rethinking.analysis.example_figures. pandas on first use (lazy).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from ..lazy import lazy_module
from .outputs import table
from .scores import Records, class_names, detection, label_name, score_names, spearman, suspicion
from .stats import over_seeds

pd = lazy_module("pandas")

CELL = ["model", "regularizers", "variant", "corruption"]  # a grid cell: its seeds are the rows averaged
DETECTION_STATS = ("roc_auc", "average_precision", "precision_recall_at_k")
NOISE_DETECTION_COLUMNS = [
    *CELL,
    "level",
    "seed",
    "status",
    "score",
    "n_examples",
    "n_corrupted",
    *DETECTION_STATS,
    "cell_status",
    "seeds",
] + [f"{v}_{s}" for v in DETECTION_STATS for s in ("mean", "sd", "ci95")]
AGREEMENT_COLUMNS = [
    "pair_kind",
    "model_a",
    "model_b",
    "regularizers",
    "variant",
    "corruption",
    "level",
    "score",
    "n_pairs",
    "n_examples",
    "rho_mean",
    "rho_min",
    "rho_max",
    "statuses",
]
SUSPECT_SCORE = "aum"
SUSPECT_COLUMNS = [
    *CELL,
    "level",
    "rank",
    "index",
    "origin",
    "label",
    "label_name",
    "label_true",
    "label_true_name",
    "corrupted",
    "aum",
    "seeds",
]


def recorded(runs: pd.DataFrame, records: Records, diverged: bool = True) -> list:
    """(row, meta, arrays) of every run with a record, in the runs' order (diverged runs left out unless
    `diverged`)."""
    out = []
    for _, r in runs.iterrows():
        if not diverged and r["status"] == "diverged":
            continue
        rec = records(r["run"])
        if rec is not None:
            out.append((r, *rec))
    return out


def _keys(r) -> dict:
    return {**{k: r[k] for k in CELL}, "level": r["label_level"], "seed": r["seed"], "status": r["status"]}


@table(
    "noise_detection.csv",
    stage="records",
    caption="""\
How well each per-example score of the runs' records finds the corrupted labels
(label != original label), per run whose training set holds both: ROC-AUC,
average precision, and precision (equal to recall) among the k most suspect
examples, k the number of corrupted ones; with the mean, sd and 95%
t-interval half-width over the seeds of a cell when every seed ended in the same
state. Scores: aum (area under the margin, Pleiss et al. 2020), learned (epoch
learned for good), forgetting (Toneva et al. 2019), confidence (Swayamdipta et
al. 2020), loss (final cross-entropy). Chance: ROC-AUC 0.5, average precision
and precision at k the share of corrupted labels.
""",
)
def noise_detection(runs: pd.DataFrame, records: Records) -> pd.DataFrame:
    """One row per (run, score) of the runs whose record holds corrupted and intact examples; a diverged run's
    numbers are blank (its status says why). Empty (its header) without such runs."""
    rows = []
    for r, meta, arrays in recorded(runs, records):
        noisy = arrays["label"] != arrays["label_true"]
        if not 0 < noisy.sum() < len(noisy):
            continue
        for name in score_names():
            row = {**_keys(r), "score": name, "n_examples": len(noisy), "n_corrupted": int(noisy.sum())}
            if r["status"] != "diverged":
                row.update(detection(arrays, meta, name))
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=NOISE_DETECTION_COLUMNS)
    frame = pd.DataFrame(rows).reindex(columns=NOISE_DETECTION_COLUMNS)
    frame[list(DETECTION_STATS)] = frame[list(DETECTION_STATS)].astype(float)
    frame = over_seeds(frame, [*CELL, "score"], DETECTION_STATS)
    return frame.sort_values([*CELL[:3], "level", "corruption", "score", "seed"], kind="stable").reset_index(drop=True)


def _aligned(a: dict, b: dict) -> tuple:
    """Positions of the examples two records share (by `index`): all of them, in order, when they hold the same."""
    ia, ib = a["index"], b["index"]
    if len(ia) == len(ib) and np.array_equal(ia, ib):
        return slice(None), slice(None)
    _, pa, pb = np.intersect1d(ia, ib, return_indices=True)
    return pa, pb


def _pairs(by_run: list) -> list:
    """(kind, a, b) of the runs to compare: seeds of one model, and two models with the same seed; `by_run`:
    (row, meta, arrays) of one corrupted artifact x regularizers x variant."""
    out = []
    for x, y in combinations(by_run, 2):
        if x[0]["model"] == y[0]["model"]:
            out.append(("seeds", x, y))
        elif x[0]["seed"] == y[0]["seed"]:
            out.append(("models", *sorted((x, y), key=lambda t: t[0]["model"])))
    return out


@table(
    "example_agreement.csv",
    stage="records",
    caption="""\
How alike two runs on the same corrupted training set rank its examples:
Spearman's rank correlation of each per-example score (learned epoch, AUM, ...)
between the seeds of one model (pair kind ``seeds``: every pair of seeds) and
between two models trained with the same seed (``models``), averaged over the
pairs (n_pairs), with the smallest and largest. Diverged runs are left out;
``statuses`` lists how the compared runs ended.
""",
)
def example_agreement(runs: pd.DataFrame, records: Records) -> pd.DataFrame:
    """One row per pair kind, pair of models (the same for `seeds`), regularizers, variant, corruption and score:
    the mean, smallest and largest rho over the pairs. Empty (its header) without two comparable records."""
    groups: dict = {}
    for rec in recorded(runs, records, diverged=False):
        r = rec[0]
        groups.setdefault((r["regularizers"], r["variant"], r["corruption"]), []).append(rec)
    rhos: dict = {}
    for (regs, variant, corruption), by_run in groups.items():
        for kind, (ra, ma, a), (rb, mb, b) in _pairs(by_run):
            pa, pb = _aligned(a, b)
            key = (kind, ra["model"], rb["model"], regs, variant, corruption, ra["label_level"])
            entry = rhos.setdefault(key, {"statuses": set(), "n_examples": len(a["index"][pa]), "rho": {}})
            entry["statuses"] |= {ra["status"], rb["status"]}
            for name in score_names():
                rho = spearman(suspicion(name, a, ma)[pa], suspicion(name, b, mb)[pb])
                entry["rho"].setdefault(name, []).append(rho)
    rows = []
    for key, entry in rhos.items():
        for name, values in entry["rho"].items():
            v = np.asarray(values, dtype=float)
            finite = v[~np.isnan(v)]
            rows.append(
                dict(
                    zip(AGREEMENT_COLUMNS[:7], key),
                    score=name,
                    n_pairs=len(v),
                    n_examples=entry["n_examples"],
                    rho_mean=float(finite.mean()) if len(finite) else np.nan,
                    rho_min=float(finite.min()) if len(finite) else np.nan,
                    rho_max=float(finite.max()) if len(finite) else np.nan,
                    statuses="+".join(sorted(entry["statuses"])),
                )
            )
    if not rows:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS)
    frame = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
    order = ["pair_kind", "model_a", "model_b", "regularizers", "variant", "level", "corruption", "score"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def _positions(index: np.ndarray, keep: np.ndarray):
    """Where the values `keep` (all present) are in a record's `index`: everything in order when they are equal."""
    if np.array_equal(index, keep):
        return slice(None)
    order = np.argsort(index, kind="stable")
    return order[np.searchsorted(index[order], keep)]


def cell_suspects(recs: list, k: int, names: list[str] | None) -> pd.DataFrame:
    """The k examples of highest mean suspicion by AUM over a cell's records (seeds), most suspect first (ties:
    in the training set's order). Seeds that recorded different examples: the ones all of them share."""
    first = recs[0][2]
    keep = first["index"]
    for _, _, a in recs[1:]:
        if not np.array_equal(a["index"], keep):
            keep = np.intersect1d(keep, a["index"])
    mean = np.mean([suspicion(SUSPECT_SCORE, a, meta)[_positions(a["index"], keep)] for _, meta, a in recs], axis=0)
    top = np.argsort(-mean, kind="stable")[:k]
    at = np.arange(len(first["index"]))[_positions(first["index"], keep)][top]
    label, true = first["label"][at], first["label_true"][at]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(top) + 1),
            "index": first["index"][at],
            "origin": first["origin"][at],
            "label": label,
            "label_name": label_name(label, names),
            "label_true": true,
            "label_true_name": label_name(true, names),
            "corrupted": label != true,
            "aum": -mean[top],
            "seeds": len(recs),
        }
    )


@table(
    "suspects.csv",
    stage="records",
    caption="""\
The training examples most likely mislabeled, per grid cell on the label axis
(true labels, labels corrupted at p, random labels): the ``examples.suspects``
examples of lowest area under the margin (AUM, Pleiss et al. 2020), averaged
over the cell's seeds (diverged runs left out), with where each came from
(its index in the source's training split, or its file), the label it was
trained on and its original label (class names), and whether the corruption
changed it. On true labels, these are the candidates for errors in the
dataset's own labels.
""",
)
def suspects(cfg: dict, runs: pd.DataFrame, records: Records, meta: dict) -> pd.DataFrame:
    """k = params' examples.suspects rows per cell of runs on the label axis with records (diverged: left out)."""
    k = int(cfg["examples"]["suspects"])
    cells: dict = {}
    for rec in recorded(runs[runs["label_level"].notna()], records, diverged=False):
        cells.setdefault(tuple(rec[0][c] for c in CELL), []).append(rec)
    frames = []
    for cell, recs in cells.items():
        frame = cell_suspects(recs, k, class_names(recs[0][1], meta))
        for i, c in enumerate(CELL):
            frame.insert(i, c, cell[i])
        frame.insert(len(CELL), "level", recs[0][0]["label_level"])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=SUSPECT_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)[SUSPECT_COLUMNS]
    return frame.sort_values([*CELL[:3], "level", "corruption", "rank"], kind="stable").reset_index(drop=True)


@table("example_metrics.json", stage="records", inputs=("noise_detection.csv",), metrics=True)
def example_metrics(detected: pd.DataFrame, runs: pd.DataFrame, records: Records) -> dict:
    """The headline for `dvc metrics show` / `dvc exp show`: per model, from its runs without regularizers or
    variants, `aum_roc_auc`, the mean over the label-corrupted cells (levels) of the AUM's ROC-AUC averaged over
    seeds (None when a cell's seeds ended in different states, as metrics.json), and `levels` (how many cells).
    Random labels (level 1) are left out: the labels its draw gave back are coincidences, with nothing to find.
    `records`: how many of the grid's runs have a per-example record and how many were trained before it."""
    out: dict = {}
    d = detected.assign(variant=detected["variant"].fillna(""))
    plain = d[(d["regularizers"] == "none") & (d["variant"] == "") & (d["score"] == "aum")]
    plain = plain[~(plain["level"] >= 1.0)]  # random labels: its intact labels are the draw's coincidences
    for model, group in plain.groupby("model", sort=True):
        cells = group.groupby("corruption", sort=False).first()
        mixed = (cells["cell_status"] == "mixed").any() or cells["roc_auc_mean"].isna().any()
        out[model] = {
            "aum_roc_auc": None if mixed else round(float(cells["roc_auc_mean"].mean()), 4),
            "levels": len(cells),
        }
    have = sum(records(r) is not None for r in runs["run"])
    out["records"] = {"runs_with_record": have, "runs_without_record": len(runs) - have}
    return out


# ----------------------------------------------------------------------------------------- one run's examples

RANKED_FIELDS = ("learned_epoch", "forgetting", "confidence", "variability", "aum", "final_loss")


def ranked(folder, by: str = "aum", top: int | None = 20) -> pd.DataFrame:
    """A run folder's examples, most suspect by score `by` first (ties: in the training set's order), the `top`
    first (None or 0: all): rank, index, origin, label and original label (class names where the record names
    its classes), corrupted, the score and the record's main fields. `python -m rethinking examples` prints it."""
    from pathlib import Path

    from ..engine.examples import EXAMPLES, read_record
    from ..errors import ArtifactError, ConfigError

    if top is not None and top < 0:
        raise ConfigError(f"--top: {top} is negative (a number of examples, or 0 for every example)")
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such run folder")
    rec = read_record(folder)
    if rec is None:
        raise ArtifactError(
            f"{folder}: no {EXAMPLES}: the run was trained before the per-example record existed, or has not "
            "finished (a finished run writes it beside summary.json; delete summary.json to train it again)"
        )
    meta, a = rec
    s = suspicion(by, a, meta)
    order = np.argsort(-s, kind="stable")[: top or None]
    names = class_names(meta)
    frame = pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "index": a["index"][order],
            "origin": a["origin"][order],
            "label": label_name(a["label"][order], names),
            "original": label_name(a["label_true"][order], names),
            "corrupted": a["label"][order] != a["label_true"][order],
            f"score_{by}": s[order],
        }
    )
    for f in RANKED_FIELDS:
        frame[f] = a[f][order]
    return frame
