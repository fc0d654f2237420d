"""How the tables and figures show each state a run ends in: fitted, stopped at the epoch limit, diverged.

Run folders written by hand in the engine's formats (train._finish), then aggregate() and the figure
functions; what each figure draws is read back from its Axes. Last, config/states-demo.yaml trained for real
through the CLI."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import yaml

from rethinking import plan as rc
from rethinking.analysis import figures as F
from rethinking.analysis.aggregate import aggregate
from rethinking.data.sources import prepare

from conftest import REPO, run_cli

SPE = 5  # steps per epoch of the hand-made runs

# (model, corruption, regularizers) -> per seed (status, steps, train_acc, test_acc)
PLAN = {
    ("mlp_1x512", "true-labels", "none"): [("fitted", 10, 100, 90), ("fitted", 12, 100, 88), ("fitted", 14, 100, 86)],
    ("mlp_1x512", "labels-0.5", "none"): [
        ("fitted", 30, 100, 50),
        ("fitted", 36, 100, 60),
        ("max_epochs", 100, 90, 40),
    ],
    ("mlp_1x512", "random-labels", "none"): [("fitted", 50, 100, 90), ("fitted", 60, 100, 92), ("diverged", 7, 0, 0)],
    ("alexnet", "true-labels", "none"): [("max_epochs", 100, 95, 70), ("diverged", 4, 0, 0), ("fitted", 20, 100, 80)],
    ("alexnet", "labels-0.5", "none"): [("fitted", 40, 100, 50), ("fitted", 44, 100, 52), ("fitted", 48, 100, 54)],
    ("alexnet", "random-labels", "none"): [
        ("max_epochs", 100, 60, 10),
        ("fitted", 90, 100, 11),
        ("fitted", 80, 100, 9),
    ],
    ("mlp_3x512", "true-labels", "none"): [("fitted", 10, 100, 80)] * 3,
    ("mlp_3x512", "random-labels", "none"): [
        ("fitted", 30, 100, 10),
        ("fitted", 40, 100, 10),
        ("max_epochs", 100, 70, 10),
    ],
    ("inception_nobn", "random-labels", "none"): [("fitted", 70, 100, 10)] * 3,  # no true-label run in the grid
    ("mlp_1x512", "random-labels", "wd"): [("fitted", 55, 100, 10), ("max_epochs", 100, 80, 10), ("diverged", 3, 0, 0)],
}


def write_run(cfg, run, status, steps, train_acc, test_acc):
    """summary.json, epochs.csv, steps.csv as train._finish writes them."""
    out = rc.run_dir(cfg, run)
    out.mkdir(parents=True, exist_ok=True)
    epochs = math.ceil(steps / SPE)
    loss = np.linspace(2.3, 0.01 if status == "fitted" else 1.0, steps)
    if status == "diverged":
        loss[-1] = np.inf
    pd.DataFrame({"step": np.arange(1, steps + 1), "epoch": (np.arange(steps) // SPE) + 1, "train_loss": loss}).to_csv(
        out / "steps.csv", index=False
    )
    acc = np.linspace(0.1, train_acc / 100, epochs)
    pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            "step": np.minimum(np.arange(1, epochs + 1) * SPE, steps),
            "lr": 0.01,
            "batch_train_acc": acc,
            "train_loss": loss[::SPE][:epochs],
            "train_acc": acc,
            "test_loss": 1.0,
            "test_acc": np.linspace(0.1, test_acc / 100, epochs),
            "wall_time": 0.1,
        }
    ).to_csv(out / "epochs.csv", index=False)
    summary = {
        "batch_size": 20,
        "corruption": run.corruption.id,
        "corruption_kind": run.corruption.kind,
        "crop": 7,
        "dataset": run.dataset,
        "level": run.corruption.level,
        "model": run.model,
        "regularizers": run.regularizers,
        "run": run.id,
        "seed": run.seed,
        "status": status,
        "epochs": epochs,
        "steps": steps,
        "steps_per_epoch": SPE,
        "step_first_fit": steps if status == "fitted" else None,
        "diverged_step": steps if status == "diverged" else None,
        "n_train": 60,
        "n_test": 40,
        "train_acc": float("nan") if status == "diverged" else float(train_acc),
        "test_acc": float("nan") if status == "diverged" else float(test_acc),
        "train_loss": float(loss[-1]),
        "test_loss": 1.0,
        "parameters": 1000,
        "variant": run.variant,
    }
    return out, summary


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    cfg = rc.validate(
        {
            "results_dir": str(root / "results"),
            "seeds": [0, 1, 2],
            "dataset": {"source": "digits", "train_size": 60, "test_size": 40, "seed": 0},
            "preprocess": {"crop": 7},
            "training": {"device": "cpu"},
            "grid": [
                {
                    "name": "fig1bc",
                    "models": ["mlp_1x512", "alexnet"],
                    "corruptions": ["labels"],
                    "levels": [0.0, 0.5, 1.0],
                },
                {"name": "table1", "models": ["mlp_3x512"], "corruptions": ["true_labels", "random_labels"]},
                {"name": "nobn", "models": ["inception_nobn"], "corruptions": ["random_labels"]},
                {"name": "table4", "models": ["mlp_1x512"], "corruptions": ["random_labels"], "regularizers": ["wd"]},
            ],
        }
    )
    prepare(cfg)
    for run in rc.expand_runs(cfg):
        key = (run.model, run.corruption.id, run.regularizers)
        out, summary = write_run(cfg, run, *PLAN[key][run.seed])
        (out / "summary.json").write_text(json.dumps(summary))
    tables = aggregate(cfg)
    read = lambda name: pd.read_csv(tables / name, dtype={"variant": str})
    return cfg, {
        n: read(n) for n in ("runs.csv", "convergence.csv", "table1.csv", "loss_curves.csv", "accuracy_curves.csv")
    }


def _row(conv, model, corruption, seed):
    r = conv[(conv["model"] == model) & (conv["corruption"] == corruption) & (conv["seed"] == seed)]
    assert len(r) == 1
    return r.iloc[0]


def test_convergence_table_has_every_run_with_its_state_and_bound(hand_made):
    conv = hand_made[1]["convergence.csv"]
    assert len(conv) == 3 * 9
    expect = {  # (model, corruption, seed): (status, steps, true_status, relative_steps, relative_bound)
        ("mlp_1x512", "labels-0.5", 0): ("fitted", 30, "fitted", 3.0, "exact"),
        ("mlp_1x512", "labels-0.5", 2): ("max_epochs", 100, "fitted", 100 / 14, "lower"),
        ("mlp_1x512", "random-labels", 2): ("diverged", 7, "fitted", None, "none"),
        ("alexnet", "labels-0.5", 0): ("fitted", 40, "max_epochs", 0.4, "upper"),
        ("alexnet", "labels-0.5", 1): ("fitted", 44, "diverged", None, "none"),
        ("alexnet", "labels-0.5", 2): ("fitted", 48, "fitted", 2.4, "exact"),
        ("alexnet", "random-labels", 0): ("max_epochs", 100, "max_epochs", None, "none"),
        ("alexnet", "true-labels", 0): ("max_epochs", 100, "max_epochs", None, "none"),
        ("mlp_3x512", "random-labels", 2): ("max_epochs", 100, "fitted", 10.0, "lower"),
        ("inception_nobn", "random-labels", 0): ("fitted", 70, None, None, "none"),
    }
    for (model, corruption, seed), (status, steps, true_status, rel, bound) in expect.items():
        r = _row(conv, model, corruption, seed)
        assert (r["status"], r["steps"], r["relative_bound"]) == (status, steps, bound), (model, corruption, seed)
        assert pd.isna(r["true_status"]) if true_status is None else r["true_status"] == true_status
        assert pd.isna(r["relative_steps"]) if rel is None else r["relative_steps"] == pytest.approx(rel)
    assert _row(conv, "alexnet", "labels-0.5", 0)["true_steps"] == 100  # the stopped reference's steps
    assert pd.isna(_row(conv, "mlp_1x512", "random-labels", 2)["test_error"])  # diverged: blank


def test_runs_keep_the_crop_size_and_name_the_flag(hand_made):
    runs, t1 = hand_made[1]["runs.csv"], hand_made[1]["table1.csv"]
    assert (runs["crop"] == 7).all() and set(runs["random_crop"]) == {"no"}
    assert set(t1["crop"]) == {"no"}  # Table 1's column: the random-crop flag
    cell = t1[(t1["model"] == "mlp_1x512") & (t1["labels"] == "random") & (t1["weight_decay"] == "yes")].iloc[0]
    assert (cell["seeds"], cell["fitted"], cell["max_epochs"], cell["diverged"]) == (3, 1, 1, 1)
    # seeds that ended in different states give no mean: the cell says "mixed", runs.csv has each seed
    assert cell["status"] == "mixed" and pd.isna(cell["train_acc"]) and pd.isna(cell["test_acc_sd"])
    same = t1[(t1["fitted"] == t1["seeds"])]
    assert len(same) and (same["status"] == "fitted").all() and same["train_acc"].notna().all()


def _by_gid(ax, gid, kind="collections"):
    found = [a for a in getattr(ax, kind) if a.get_gid() == gid]
    assert len(found) == 1, (gid, [a.get_gid() for a in getattr(ax, kind)])
    return found[0]


def _is_open(coll):
    fc = coll.get_facecolors()
    return len(fc) == 0 or np.allclose(fc[:, 3], 0)


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_fig1b_draws_every_state(hand_made):
    fig = F.fig1b(hand_made[1]["convergence.csv"])
    ax = fig.axes[0]
    mlp = _by_gid(ax, "fitted:MLP 1x512", "lines")
    assert mlp.get_linestyle() == "-" and mlp.get_marker() == "o"
    np.testing.assert_allclose(mlp.get_xydata(), [[0, 1], [0.5, 3.0], [1, 5.0]])  # mean of per-seed ratios
    # Table 1's model (levels 0 and 1 only): markers, no line
    m3 = _by_gid(ax, "fitted:MLP 3x512", "lines")
    assert m3.get_linestyle() == "None"
    np.testing.assert_allclose(m3.get_xydata(), [[0, 1], [1, 3.5]])
    # stopped: open marker at the lower bound, in the model's colour
    stop = _by_gid(ax, "stopped:MLP 1x512")
    np.testing.assert_allclose(stop.get_offsets(), [[0.5, 100 / 14]])
    assert _is_open(stop) and np.allclose(stop.get_edgecolors()[0][:3], mlp.get_color()[:3])
    np.testing.assert_allclose(_by_gid(ax, "stopped:MLP 3x512").get_offsets(), [[1, 10.0]])
    # a fitted run with a stopped true-label run: its upper bound
    np.testing.assert_allclose(_by_gid(ax, "upper:AlexNet").get_offsets(), [[0.5, 0.4]])
    np.testing.assert_allclose(_by_gid(ax, "fitted:AlexNet", "lines").get_xydata(), [[0, 1], [0.5, 2.4], [1, 4]])
    # diverged: crosses
    assert _by_gid(ax, "diverged:MLP 1x512").get_offsets()[:, 0].tolist() == [1.0]
    assert _by_gid(ax, "diverged:AlexNet").get_offsets()[:, 0].tolist() == [0.0]
    # no ratio: counted on the axes (alexnet true seed 0, 0.5 seed 1, random seeds 0, 1; inception_nobn 3)
    (note,) = [t for t in ax.texts if t.get_gid() == "no-reference"]
    assert "AlexNet 4" in note.get_text() and "Inception w/o BatchNorm 3" in note.get_text()
    legend = _legend(ax)
    for entry in (
        "fitted",
        "stopped at the epoch limit (lower bound)",
        "diverged (on the axis: no value)",
        "fitted, true-label run stopped (upper bound)",
        "MLP 1x512",
        "MLP 3x512",
        "AlexNet",
    ):
        assert entry in legend


def test_fig1c_averages_fitted_seeds_only(hand_made):
    fig = F.fig1c(hand_made[1]["convergence.csv"])
    ax = fig.axes[0]
    mlp = _by_gid(ax, "fitted:MLP 1x512", "lines")
    np.testing.assert_allclose(mlp.get_xydata(), [[0, 12.0], [0.5, 45.0], [1, 9.0]])
    stop = _by_gid(ax, "stopped:MLP 1x512")
    assert _is_open(stop)
    np.testing.assert_allclose(stop.get_offsets(), [[0.5, 60.0]])
    assert _by_gid(ax, "fitted:MLP 3x512", "lines").get_linestyle() == "None"
    np.testing.assert_allclose(sorted(map(tuple, _by_gid(ax, "stopped:AlexNet").get_offsets())), [[0, 30.0], [1, 90.0]])
    assert _by_gid(ax, "diverged:AlexNet").get_offsets()[:, 0].tolist() == [0.0]
    assert "stopped at the epoch limit (its test error then)" in _legend(ax)  # not a bound here
    assert "diverged (on the axis: no value)" in _legend(ax)


def test_curves_cut_the_mean_where_the_first_seed_stops(hand_made):
    curves = hand_made[1]["loss_curves.csv"]
    assert set(curves["status"]) == {"fitted", "max_epochs", "diverged"}
    fig = F.fig1a(curves)
    ax = [a for a in fig.axes if a.get_title() == "MLP 1x512"][0]
    (true,) = [line for line in ax.lines if line.get_label() == "true labels"]
    assert true.get_xydata()[:, 0].max() == pytest.approx(0.010)  # seed 0 fitted at step 10
    thin = [line for line in ax.lines if line.get_linewidth() < 1 and line.get_color() == true.get_color()]
    assert sorted(line.get_xydata()[-1, 0] for line in thin) == pytest.approx([0.012, 0.014])
    ends = [c for c in ax.collections if c.get_gid() and c.get_gid().startswith("end:")]
    assert {c.get_gid() for c in ends} == {"end:fitted", "end:diverged"}
    # random labels: the diverged seed is never in the mean
    (rand,) = [line for line in ax.lines if line.get_label() == "random labels"]
    assert rand.get_xydata()[:, 0].max() == pytest.approx(0.050)
    fig2 = F.fig2b(hand_made[1]["accuracy_curves.csv"])
    ax2 = fig2.axes[0]
    labels = [line.get_label() for line in ax2.lines]
    assert "AlexNet train" in labels and "MLP 1x512 test" in labels
    opened = [c for c in ax2.collections if c.get_gid() == "end:max_epochs"]
    assert opened and all(_is_open(c) for c in opened)


def test_table4_marks_states(hand_made):
    fig = F.table4(hand_made[1]["runs.csv"])
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    i = [k for k, t in enumerate(ticks) if t.startswith("MLP 1x512\nwd")][0]
    assert ticks[i].endswith("1/1/1")
    np.testing.assert_allclose(_by_gid(ax, f"fitted:{i}").get_offsets(), [[i, 100.0]])
    stop = _by_gid(ax, f"stopped:{i}")
    assert _is_open(stop)
    np.testing.assert_allclose(stop.get_offsets(), [[i, 80.0]])
    assert len(_by_gid(ax, f"diverged:{i}").get_offsets()) == 1
    assert "stopped at the epoch limit" in _legend(ax) and "diverged (on the axis: no value)" in _legend(ax)


@pytest.mark.slow
def test_states_demo_through_the_cli(tmp_path):
    """config/states-demo.yaml for real: every state appears in convergence.csv and in the figures."""
    cfg = yaml.safe_load((REPO / "config/states-demo.yaml").read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    run_cli("prepare", "--params", params, cwd=REPO, check=True)
    for c in run_cli("corruptions", "--params", params, cwd=REPO, check=True).stdout.split():
        run_cli("corrupt", "--params", params, "--corruption", c, cwd=REPO, check=True)
    runs = run_cli("runs", "--params", params, cwd=REPO, check=True).stdout.split()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: run_cli("train", "--params", params, "--run", r, cwd=REPO, check=True), runs))
    run_cli("aggregate", "--params", params, cwd=REPO, check=True)
    run_cli("figures", "--params", params, cwd=REPO, check=True)
    tables = tmp_path / "results/tables"
    conv = pd.read_csv(tables / "convergence.csv")
    assert set(conv["status"]) == {"fitted", "max_epochs", "diverged"}
    assert (conv.loc[conv["model"] == "alexnet", "status"] == "diverged").all()
    stopped = conv[conv["status"] == "max_epochs"]
    assert (stopped["relative_bound"] == "lower").all() and (stopped["steps"] == 51).all()
    names = F.figures_for(rc.load(params))
    assert {"fig1a", "fig1b", "fig1c", "fig2b", "table4", "memorization", "early_stopping"} <= set(names)
    for f in names:
        assert (tmp_path / f"results/figures/{f}.png").stat().st_size > 1000
    ax = F.fig1b(conv).axes[0]
    gids = {c.get_gid() for c in ax.collections}
    assert "stopped:MLP 1x512" in gids and "diverged:AlexNet" in gids
    assert _by_gid(ax, "fitted:MLP 1x512", "lines").get_linestyle() == "-"
    assert _by_gid(ax, "fitted:MLP 3x512", "lines").get_linestyle() == "None"


def test_the_curves_band_is_the_t_interval_of_each_step():
    """figures._mean_band (one pass over the groups) equals aggregate.t_interval applied to every step:
    NaN values left out, the mean itself where a step has fewer than 2 values, NaN where it has none."""
    from rethinking.analysis.aggregate import t_interval
    from rethinking.analysis.figures import _mean_band

    rng = np.random.default_rng(0)
    d = pd.DataFrame({"step": np.repeat(np.arange(30), 4), "v": rng.normal(size=120)})
    d.loc[d.index % 7 == 0, "v"] = np.nan
    d.loc[d["step"] == 3, "v"] = [1.0, np.nan, np.nan, np.nan]
    d.loc[d["step"] == 4, "v"] = np.nan
    mean, band = _mean_band(d, "step", "v")
    for step, v in d.groupby("step")["v"]:
        lo, hi = t_interval(v.values) if v.notna().any() else (np.nan, np.nan)
        np.testing.assert_allclose(
            [mean[step], band.loc[step, "lo"], band.loc[step, "hi"]],
            [np.nanmean(v) if v.notna().any() else np.nan, lo, hi],
            rtol=1e-12,
        )
    assert band.loc[3].tolist() == [1.0, 1.0] and band.loc[0, "hi"] > band.loc[0, "lo"]
