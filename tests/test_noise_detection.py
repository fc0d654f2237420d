"""Which labels are wrong: the per-example scores (rethinking.analysis.scores), the tables and figures made from
the runs' records (examples.npz) in the aggregate stage, and the `examples` command.

The records are fabricated with engine.examples.write_record in hand-made run folders (test_states.write_run's
summaries): the corrupted examples have lower margins, so detection is high, and every number is checked against
a direct numpy / scikit-learn / scipy computation from the same records."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from rethinking import plan as rc
from rethinking.analysis import aggregate as ag
from rethinking.analysis import example_figures as XF
from rethinking.analysis import examples as X
from rethinking.analysis import scores as S
from rethinking.analysis.outputs import entries
from rethinking.analysis.records import records
from rethinking.data.corrupt import corrupt, load_corrupted
from rethinking.data.sources import prepare
from rethinking.engine.examples import EXAMPLES, correct_matrix, read_record, write_record
from rethinking.errors import ConfigError

from conftest import call_cli

# ---------------------------------------------------------------------------- the numbers, against sklearn


def _tied(rng, n):
    """Scores with many ties and labels with both classes."""
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    return rng.integers(0, 6, n).astype(float), y


def test_roc_auc_and_average_precision_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s, y = _tied(rng, int(rng.integers(2, 80)))
        assert S.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert S.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        np.testing.assert_allclose(S.average_ranks(s), stats.rankdata(s))
    s = rng.normal(size=500)  # and without ties, where a wrong tie rule would not show
    y = rng.random(500) < 0.2
    assert S.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert S.average_precision(s, y) == pytest.approx(average_precision_score(y, s))


def test_the_numbers_can_tell_a_good_score_from_a_bad_one():
    y = np.array([True, True, False, False, False])
    assert S.roc_auc([5, 4, 3, 2, 1], y) == 1.0 and S.roc_auc([1, 2, 3, 4, 5], y) == 0.0
    assert S.roc_auc([1, 1, 1, 1, 1], y) == 0.5  # all tied: chance
    assert S.average_precision([5, 4, 3, 2, 1], y) == 1.0
    assert math.isnan(S.roc_auc([1, 2], [True, True])) and math.isnan(S.roc_auc([np.nan, 1], [True, False]))


def test_precision_at_k_counts_ties_at_the_cut_as_a_random_draw():
    rng = np.random.default_rng(1)
    for _ in range(50):  # no ties: the share of corrupted among the k highest
        s, y = rng.normal(size=40), rng.random(40) < 0.3
        y[0] = True
        k = int(y.sum())
        assert S.precision_at_k(s, y) == pytest.approx(y[np.argsort(-s)[:k]].mean())
        assert S.precision_at_k(s, y) == pytest.approx(y[np.argsort(-s)[:k]].sum() / y.sum())  # = recall
    # k = 2; one sure hit above the cut, then 2 of the 3 tied examples are corrupted, for one place: 1 + 2/3
    s = np.array([9.0, 5.0, 5.0, 5.0, 1.0])
    y = np.array([True, True, True, False, False])
    assert S.precision_at_k(s, y, k=2) == pytest.approx((1 + 2 / 3) / 2)
    draws = [y[np.r_[0, rng.permutation([1, 2, 3])[:1]]].mean() for _ in range(20000)]
    assert S.precision_at_k(s, y, k=2) == pytest.approx(np.mean(draws), abs=0.01)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(2)
    for _ in range(50):
        a, b = rng.integers(0, 5, 60), rng.integers(0, 5, 60) + rng.integers(0, 2, 60)
        assert S.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert math.isnan(S.spearman(np.ones(5), np.arange(5)))


# ---------------------------------------------------------------------------- fabricated records


def fake_record(rng, label, label_true, epochs: int, shift: float = 0.0) -> dict:
    """Every field of examples.npz, consistent with each other as the engine makes them: a right/wrong matrix
    drawn per epoch (corrupted examples right later, some never), learned_epoch and forgetting from it, margins
    low for the corrupted examples."""
    noisy = label != label_true
    n = len(label)
    start = np.where(noisy, rng.integers(max(epochs // 2, 1), epochs + 3, n), rng.integers(1, 3, n))
    e = np.arange(1, epochs + 1)
    right = (e[None, :] >= start[:, None]) | (rng.random((n, epochs)) < 0.15)
    right[rng.random(n) < 0.03, -1] = False  # some wrong at the end: never learned for good
    wrong_after = np.flip(np.cumsum(np.flip(~right, 1), 1), 1) == 0  # right from here to the last epoch
    learned = np.where(wrong_after.any(1), wrong_after.argmax(1) + 1, -1)
    learned = np.where(right[:, -1], learned, -1)
    forgetting = (right[:, :-1] & ~right[:, 1:]).sum(1)
    aum = np.where(noisy, rng.normal(-1.0, 1.0, n), rng.normal(2.0, 1.0, n)) + shift
    confidence = 1 / (1 + np.exp(-aum))
    return {
        "index": np.arange(n),
        "origin": np.arange(n) * 7,  # the source's indices, not the positions
        "label": label.astype(np.int64),
        "label_true": label_true.astype(np.int64),
        "learned_epoch": learned.astype(np.int32),
        "forgetting": forgetting.astype(np.int32),
        "confidence": confidence.astype(np.float32),
        "variability": (confidence * (1 - confidence)).astype(np.float32),
        "aum": aum.astype(np.float32),
        "final_correct": right[:, -1],
        "final_loss": (-np.log(confidence)).astype(np.float32),
        "correct_bits": np.packbits(right, axis=1, bitorder="little"),
    }


# (model, corruption) -> per seed (status, steps, train_acc, test_acc) for test_states.write_run; steps / 5 epochs
PLAN = {
    ("mlp_1x512", "true-labels"): [("fitted", 40, 100, 80)] * 3,
    ("mlp_1x512", "labels-0.4"): [("fitted", 60, 100, 60), ("fitted", 65, 100, 61), ("fitted", 70, 100, 59)],
    ("mlp_1x512", "random-labels"): [("fitted", 90, 100, 10), ("max_epochs", 100, 90, 11), ("diverged", 20, 0, 0)],
    ("mlp_3x512", "true-labels"): [("fitted", 40, 100, 80)] * 3,
    ("mlp_3x512", "labels-0.4"): [("fitted", 50, 100, 60)] * 3,
    ("mlp_3x512", "random-labels"): [("fitted", 80, 100, 10)] * 3,
    ("mlp_1x512", "gaussian"): [("fitted", 30, 100, 10)] * 3,
}
OLD = ("mlp_3x512", "labels-0.4", 2)  # a run folder from before the record: no examples.npz
K = 7  # examples.suspects


def _grid(root, **examples):
    return rc.validate(
        {
            "results_dir": str(root / "results"),
            "seeds": [0, 1, 2],
            "dataset": {"source": "digits", "train_size": 200, "test_size": 40, "seed": 0},
            "preprocess": {"crop": 7},
            "training": {"device": "cpu"},
            "examples": {"suspects": K, **examples},
            "grid": [
                {"name": "a", "models": ["mlp_1x512", "mlp_3x512"], "corruptions": ["labels"], "levels": [0, 0.4, 1]},
                {"name": "b", "models": ["mlp_1x512"], "corruptions": ["gaussian"]},
            ],
        }
    )


def write_runs(cfg, old=(OLD,), record=True):
    """Every run's folder as the engine leaves it; a record in each but the `old` ones."""
    from test_states import write_run

    prepare(cfg)
    for run in rc.expand_runs(cfg):
        corrupt(cfg, run.corruption)
        out, summary = write_run(cfg, run, *PLAN[(run.model, run.corruption.id)][run.seed])
        (out / "summary.json").write_text(json.dumps(summary | {"n_train": 200}))
        if record and (run.model, run.corruption.id, run.seed) not in old:
            meta, arrays = load_corrupted(cfg, run.corruption)
            rng = np.random.default_rng([run.seed, len(run.model), int(100 * (run.corruption.level or 0))])
            rec = fake_record(rng, arrays["y_train"], arrays["y_train_true"], summary["epochs"])
            if summary["status"] == "diverged":
                rec["aum"][:] = np.nan
            classes = meta["classes"]
            write_record(out, {"run": run.id, "epochs": summary["epochs"], "classes": classes, "origin": "index"}, rec)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    cfg = _grid(tmp_path_factory.mktemp("examples"))
    write_runs(cfg)
    ag.aggregate(cfg)
    tables = records(cfg)
    read = lambda name: pd.read_csv(tables / name, dtype={"variant": str}, keep_default_na=True)  # noqa: E731
    runs = ag.load_summaries(cfg)
    return cfg, runs, read


def _record(cfg, model, corruption, seed):
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(corruption), model, "none", seed)
    return read_record(rc.run_dir(cfg, run))


def test_noise_detection_is_the_direct_computation(made):
    cfg, runs, read = made
    t = read("noise_detection.csv")
    assert list(t.columns) == X.NOISE_DETECTION_COLUMNS
    # the label-corrupted runs with a record, each score once; not true labels, gaussian, nor the old folder
    assert set(zip(t["model"], t["corruption"])) == {
        (m, c) for m in ("mlp_1x512", "mlp_3x512") for c in ("labels-0.4", "random-labels")
    }
    assert len(t) == (3 + 3 + 3 + 2) * len(S.score_names())
    assert not ((t["model"] == OLD[0]) & (t["corruption"] == OLD[1]) & (t["seed"] == OLD[2])).any()
    for _, row in t[t["status"] != "diverged"].iterrows():
        meta, a = _record(cfg, row["model"], row["corruption"], row["seed"])
        noisy = a["label"] != a["label_true"]
        s = {
            "aum": -a["aum"],
            "learned": np.where(a["learned_epoch"] < 0, meta["epochs"] + 1, a["learned_epoch"]),
            "forgetting": np.where(
                correct_matrix(a["correct_bits"], meta["epochs"]).any(1), a["forgetting"], meta["epochs"] + 1
            ),
            "confidence": -a["confidence"],
            "loss": a["final_loss"],
            "correctness": -correct_matrix(a["correct_bits"], meta["epochs"]).mean(1),
        }[row["score"]]
        assert row["n_corrupted"] == noisy.sum() and row["n_examples"] == len(noisy)
        assert row["roc_auc"] == pytest.approx(roc_auc_score(noisy, s))
        assert row["average_precision"] == pytest.approx(average_precision_score(noisy, s))
    aum = t[(t["score"] == "aum") & (t["status"] != "diverged")]
    assert (aum["roc_auc"] > 0.9).all() and (aum["precision_recall_at_k"] > 0.7).all()
    diverged = t[t["status"] == "diverged"]
    assert len(diverged) and diverged[list(X.DETECTION_STATS)].isna().all().all()


def test_noise_detection_averages_over_the_seeds_of_one_state_only(made):
    _, _, read = made
    t = read("noise_detection.csv")
    cell = t[(t["model"] == "mlp_1x512") & (t["corruption"] == "labels-0.4") & (t["score"] == "aum")]
    assert (cell["cell_status"] == "fitted").all() and (cell["seeds"] == 3).all()
    assert cell["roc_auc_mean"].iloc[0] == pytest.approx(cell["roc_auc"].mean())
    assert cell["roc_auc_sd"].iloc[0] == pytest.approx(cell["roc_auc"].std(ddof=1))
    half = stats.t.ppf(0.975, 2) * cell["roc_auc"].std(ddof=1) / np.sqrt(3)
    assert cell["roc_auc_ci95"].iloc[0] == pytest.approx(half)
    old = t[(t["model"] == OLD[0]) & (t["corruption"] == OLD[1]) & (t["score"] == "aum")]
    assert (old["seeds"] == 2).all()  # the old folder is not a seed of its cell here
    mixed = t[(t["model"] == "mlp_1x512") & (t["corruption"] == "random-labels")]
    assert (mixed["cell_status"] == "mixed").all()
    assert mixed[[c for c in t.columns if c.endswith(("_mean", "_sd", "_ci95"))]].isna().all().all()


def test_agreement_is_spearman_between_seeds_and_between_models(made):
    cfg, _, read = made
    t = read("example_agreement.csv")
    assert list(t.columns) == X.AGREEMENT_COLUMNS
    assert set(t["pair_kind"]) == {"seeds", "models"} and set(t["score"]) == set(S.score_names())
    row = t[(t["pair_kind"] == "seeds") & (t["model_a"] == "mlp_1x512") & (t["corruption"] == "labels-0.4")]
    row = row[row["score"] == "learned"].iloc[0]
    recs = [_record(cfg, "mlp_1x512", "labels-0.4", s) for s in range(3)]
    learned = [np.where(a["learned_epoch"] < 0, m["epochs"] + 1, a["learned_epoch"]) for m, a in recs]
    rhos = [stats.spearmanr(learned[i], learned[j]).statistic for i, j in ((0, 1), (0, 2), (1, 2))]
    assert row["n_pairs"] == 3 and row["rho_mean"] == pytest.approx(np.mean(rhos))
    assert row["rho_min"] == pytest.approx(min(rhos)) and row["n_examples"] == 200
    # two models with the same seed: seeds 0 and 1 (the old folder is mlp_3x512's seed 2)
    row = t[(t["pair_kind"] == "models") & (t["corruption"] == "labels-0.4") & (t["score"] == "aum")].iloc[0]
    assert (row["model_a"], row["model_b"], row["n_pairs"]) == ("mlp_1x512", "mlp_3x512", 2)
    rhos = [
        stats.spearmanr(
            _record(cfg, "mlp_1x512", "labels-0.4", s)[1]["aum"], _record(cfg, "mlp_3x512", "labels-0.4", s)[1]["aum"]
        ).statistic
        for s in (0, 1)
    ]
    assert row["rho_mean"] == pytest.approx(np.mean(rhos))
    # diverged runs are left out: random labels of mlp_1x512 compare seeds 0 and 1 only
    row = t[(t["pair_kind"] == "seeds") & (t["model_a"] == "mlp_1x512") & (t["corruption"] == "random-labels")]
    assert (row["n_pairs"] == 1).all() and (row["statuses"] == "fitted+max_epochs").all()


def test_suspects_are_the_lowest_mean_aum_with_class_names(made):
    cfg, _, read = made
    t = read("suspects.csv")
    assert list(t.columns) == X.SUSPECT_COLUMNS
    # every cell on the label axis with a record, true labels too; not gaussian (pixels)
    assert set(t["corruption"]) == {"true-labels", "labels-0.4", "random-labels"}
    assert (t.groupby(["model", "corruption"]).size() == K).all()
    cell = t[(t["model"] == "mlp_1x512") & (t["corruption"] == "labels-0.4")]
    recs = [_record(cfg, "mlp_1x512", "labels-0.4", s) for s in range(3)]
    mean = np.mean([a["aum"].astype(float) for _, a in recs], axis=0)
    want = np.argsort(mean, kind="stable")[:K]
    a = recs[0][1]
    assert cell["index"].tolist() == want.tolist() and cell["rank"].tolist() == list(range(1, K + 1))
    np.testing.assert_allclose(cell["aum"], mean[want], rtol=1e-6)
    assert cell["origin"].tolist() == (want * 7).tolist()
    assert cell["label_name"].astype(str).tolist() == [str(v) for v in a["label"][want]]  # digits: "0".."9"
    assert cell["corrupted"].tolist() == (a["label"] != a["label_true"])[want].tolist()
    assert cell["corrupted"].mean() > 0.8 and (cell["seeds"] == 3).all()
    # diverged seeds are left out of the mean
    assert (t[(t["model"] == "mlp_1x512") & (t["corruption"] == "random-labels")]["seeds"] == 2).all()


def test_example_metrics_are_the_headline_per_model(made):
    cfg, runs, read = made
    got = json.loads((ag.tables_dir(cfg) / "example_metrics.json").read_text())
    t = read("noise_detection.csv")
    aum = t[(t["score"] == "aum") & (t["corruption"] == "labels-0.4")].groupby("model")["roc_auc"].mean()
    # random labels are left out (their intact labels are coincidences): labels-0.4 is each model's one level
    for model in ("mlp_1x512", "mlp_3x512"):
        assert got[model] == {"aum_roc_auc": pytest.approx(round(aum[model], 4)), "levels": 1}
    assert got["records"] == {"runs_with_record": len(runs) - 1, "runs_without_record": 1}
    # a level whose seeds ended in different states: no headline number for the model
    mixed = t.copy()
    cell = (mixed["model"] == "mlp_1x512") & (mixed["corruption"] == "labels-0.4")
    mixed.loc[cell, "cell_status"], mixed.loc[cell, "roc_auc_mean"] = "mixed", np.nan
    again = X.example_metrics(mixed, runs, S.Records(cfg))
    assert again["mlp_1x512"] == {"aum_roc_auc": None, "levels": 1} and again["mlp_3x512"] == got["mlp_3x512"]
    entry = [e for e in entries("records") if e.name == "example_metrics.json"][0]
    assert entry.metrics


def test_old_run_folders_aggregate_without_records(tmp_path):
    """A results tree from before the record (no examples.npz anywhere): every other table as before, the
    per-example tables their header, the figures say there is nothing to draw."""
    cfg = _grid(tmp_path)
    write_runs(cfg, record=False)
    tables = ag.aggregate(cfg)
    assert records(cfg) == tables
    assert len(pd.read_csv(tables / "runs.csv")) == len(rc.expand_runs(cfg))
    assert len(pd.read_csv(tables / "memorization.csv"))
    for name, columns in (
        ("noise_detection.csv", X.NOISE_DETECTION_COLUMNS),
        ("example_agreement.csv", X.AGREEMENT_COLUMNS),
        ("suspects.csv", X.SUSPECT_COLUMNS),
    ):
        t = pd.read_csv(tables / name)
        assert t.empty and list(t.columns) == columns, name
    got = json.loads((tables / "example_metrics.json").read_text())
    assert got == {"records": {"runs_with_record": 0, "runs_without_record": len(rc.expand_runs(cfg))}}
    for name in ("data_map", "learned_epochs", "detection_roc", "suspect_images"):
        assert (ag.Path(cfg["results_dir"]) / "figures" / f"{name}.png").is_file()


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    cfg = _grid(tmp_path)
    write_runs(cfg)
    run = rc.expand_runs(cfg)[0]
    (rc.run_dir(cfg, run) / EXAMPLES).write_bytes(b"not a zip")
    proc = call_cli("records", "--params", _params_file(tmp_path, cfg), cwd=tmp_path)
    assert proc.returncode == 2 and EXAMPLES in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _params_file(root, cfg):
    import yaml

    raw = {k: v for k, v in cfg.items() if not k.startswith("_")}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ---------------------------------------------------------------------------- figures


def test_the_figures_draw_the_records(made):
    cfg, runs, _ = made
    records = S.Records(cfg)
    fig = XF.data_map(cfg, runs, records)
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split(",")[0] for ax in axes] == ["MLP 1x512", "MLP 3x512"]
    assert all("p = 0.4" in ax.get_title() for ax in axes)
    intact, noisy = axes[0].collections
    meta, a = _record(cfg, "mlp_1x512", "labels-0.4", 0)
    assert len(noisy.get_offsets()) == (a["label"] != a["label_true"]).sum()
    assert len(intact.get_offsets()) + len(noisy.get_offsets()) == 200
    fig = XF.detection_roc(runs, records)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == [f"MLP {w}x512, p = {p} (seed 0)" for w in (1, 3) for p in ("0.4", "1")]
    ax = fig.axes[0]
    aum = [line for line in ax.lines if line.get_label().startswith("aum ")][0]
    assert float(aum.get_label().split()[1]) == pytest.approx(
        roc_auc_score(a["label"] != a["label_true"], -a["aum"]), abs=5e-4
    )
    fig = XF.learned_epochs(runs, records)
    assert [ax.get_title() for ax in fig.axes if ax.axison] == ["MLP 1x512", "MLP 3x512"]


def test_the_map_level_is_the_nearest_one(made, tmp_path):
    cfg, runs, _ = made
    cells = XF.map_cells({**cfg, "examples": {**cfg["examples"], "map_level": 0.8}}, runs, S.Records(cfg))
    assert [(m, lv) for m, lv, _ in cells] == [("mlp_1x512", 1.0), ("mlp_3x512", 1.0)]
    assert [len(recs) for *_, recs in cells] == [2, 3]  # the diverged seed left out
    cells = XF.map_cells({**cfg, "examples": {**cfg["examples"], "map_level": 0.7}}, runs, S.Records(cfg))
    assert [lv for _, lv, _ in cells] == [0.4, 0.4]  # as near: the lower


def test_the_suspect_images_are_the_base_artifacts_titled_with_both_labels(made):
    cfg, runs, read = made
    fig = XF.suspects_figure(read("suspects.csv"), cfg, runs, S.Records(cfg))
    shown = [ax for ax in fig.axes if ax.images]
    n = min(cfg["examples"]["images"], K)
    assert len(shown) == 2 * n
    sus = read("suspects.csv")
    first = sus[(sus["model"] == "mlp_1x512") & (sus["corruption"] == "labels-0.4")].iloc[0]
    x = XF.train_images(cfg)
    np.testing.assert_array_equal(shown[0].images[0].get_array(), x[int(first["index"])][0])
    assert shown[0].get_title() == f"label: {first['label_name']}\norig.: {first['label_true_name']}"
    assert shown[0].title.get_color() == ("#d62728" if first["corrupted"] else "black")


# ---------------------------------------------------------------------------- the registry


def test_a_new_score_is_one_registry_entry(made):
    """The README's recipe: a score from correct_matrix, in noise_detection.csv and the examples command."""
    cfg, runs, _ = made
    S.register(
        S.Score(
            "never_right",
            lambda a, meta: (~correct_matrix(a["correct_bits"], meta["epochs"])).sum(1),
            "evaluations at which it was not classified as its label",
        )
    )
    try:
        t = X.noise_detection(runs, S.Records(cfg))
        mine = t[t["score"] == "never_right"]
        assert len(mine) == len(t) // len(S.score_names()) and (mine["roc_auc"].dropna() > 0.8).all()
        with pytest.raises(ConfigError, match="registered already"):
            S.register(S.Score("aum", lambda a, m: a["aum"], "elsewhere"))
    finally:
        S.unregister("never_right")
    assert "never_right" not in S.score_names()


def test_params_examples_defaults_and_errors():
    cfg = rc.validate({"grid": [{"name": "g", "models": ["mlp_1x512"], "corruptions": ["true_labels"]}]})
    assert cfg["examples"] == {"suspects": 50, "map_level": 0.4, "images": 10}
    for bad, key in (({"suspects": 0}, "suspects"), ({"map_level": 1.5}, "map_level"), ({"k": 1}, "examples")):
        with pytest.raises(ConfigError, match=key):
            rc.validate({"examples": bad, "grid": cfg["grid"]})


def test_a_streamed_dataset_shows_the_files_names_instead_of_images(made):
    cfg, runs, read = made
    streamed = {**cfg, "dataset": {**cfg["dataset"], "source": "imagenet"}}
    assert XF.train_images(streamed) is None
    sus = read("suspects.csv")
    sus["origin"] = [f"train/n0144/img_{i}.JPEG" for i in sus["index"]]
    fig = XF.suspects_figure(sus, streamed, runs, S.Records(cfg))
    assert not any(ax.images for ax in fig.axes)
    first = sus[(sus["model"] == "mlp_1x512") & (sus["corruption"] == "labels-0.4")].iloc[0]
    assert fig.axes[0].texts[0].get_text() == f"img_{first['index']}.JPEG"
