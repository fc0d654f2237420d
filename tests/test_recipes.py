"""The README's "Extending the pipeline" recipes: a new table or figure is one registry entry
(rethinking.analysis.outputs), and the commands, the Snakemake rules, dvc.yaml and the report follow from it."""

import json

import pandas as pd
import pytest
import yaml
from test_states import write_run

from rethinking import plan as rc
from rethinking.analysis.aggregate import aggregate
from rethinking.analysis.figures import figures
from rethinking.analysis.outputs import check_inputs, figure, produce, table, unregister
from rethinking.data.sources import prepare
from rethinking.errors import ConfigError
from rethinking.pipeline import stages
from rethinking.pipeline.dvcgen import generate


@pytest.fixture
def toy_entries():
    """A toy table and a toy figure, registered as the README says (and removed after the test)."""

    @table("seeds_per_model.csv", caption="Toy table: seeds per model.")
    def seeds_per_model(runs):
        return runs.groupby("model", as_index=False)["seed"].nunique()

    @figure("toy_seeds", inputs=("seeds_per_model.csv",), caption="Toy figure: seeds per model, as bars.")
    def toy_seeds(frame):
        from rethinking.analysis.plotting import plot_libs

        plt = plot_libs()[0]
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.bar(frame["model"], frame["seed"])
        return fig

    yield
    unregister("table", "seeds_per_model.csv")
    unregister("figure", "toy_seeds")


@pytest.fixture
def finished(tmp_path):
    """A small finished results folder: two hand-made runs (test_states.write_run) and the base artifact."""
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "results_dir": str(tmp_path / "results"),
                "seeds": [0],
                "dataset": {"source": "digits", "train_size": 60, "test_size": 40},
                "preprocess": {"crop": 7},
                "training": {"device": "cpu"},
                "grid": [{"name": "t", "models": ["mlp_1x512"], "corruptions": ["true_labels", "random_labels"]}],
            }
        )
    )
    cfg = rc.load(params)
    prepare(cfg)
    for run, state in zip(rc.expand_runs(cfg), [("fitted", 10, 100, 90), ("fitted", 30, 100, 10)]):
        out, summary = write_run(cfg, run, *state)
        (out / "summary.json").write_text(json.dumps(summary))
    return params, cfg


def test_a_table_and_a_figure_are_one_entry_each(toy_entries, finished):
    params, cfg = finished
    tables, figs = aggregate(cfg), figures(cfg)
    assert pd.read_csv(tables / "seeds_per_model.csv").to_dict("records") == [{"model": "mlp_1x512", "seed": 1}]
    assert (figs / "toy_seeds.png").stat().st_size > 1000 and (figs / "toy_seeds.pdf").is_file()
    assert (tables / "table1.csv").is_file() and (figs / "fig1a.png").is_file()  # the shipped ones too
    # the rules' and dvc.yaml's outputs, the figures stage's inputs, and the report's caption follow
    p = stages.plan(cfg, str(params))
    agg, fig = stages.stage("aggregate", cfg), stages.stage("figures", cfg)
    table_out = {o.path: o for o in agg.outputs(p, ())}[str(tables / "seeds_per_model.csv")]
    assert (table_out.caption, table_out.category) == ("Toy table: seeds per model.", "Tables")
    assert str(tables / "seeds_per_model.csv") in fig.inputs(p, ())["tables"]
    paths = {o.path: o for o in fig.outputs(p, ())}
    assert paths[str(figs / "toy_seeds.png")].caption.startswith("Toy figure") and str(figs / "toy_seeds.pdf") in paths
    caption = stages.caption_file(paths[str(figs / "toy_seeds.png")], p.path("captions"))
    assert open(caption).read() == "Toy figure: seeds per model, as bars."
    dvc = yaml.safe_load(generate(str(params)))["stages"]
    assert {str(tables / "seeds_per_model.csv"): {"cache": False}} in dvc["aggregate"]["outs"]
    assert str(tables / "seeds_per_model.csv") in dvc["figures"]["deps"]
    assert {str(figs / "toy_seeds.png"): {"cache": False}} in dvc["figures"]["outs"]


def test_a_misnamed_input_or_parameter_is_a_clear_error(finished):
    params, cfg = finished

    @figure("toy_typo", inputs=("seed_per_model.csv",))
    def toy_typo(frame):
        return None

    try:
        with pytest.raises(ConfigError, match=r"figure 'toy_typo'.*'seed_per_model.csv' is no registered table"):
            check_inputs()
        with pytest.raises(ConfigError, match="toy_typo"):
            stages.plan(cfg, str(params))
    finally:
        unregister("figure", "toy_typo")

    @table("toy_param.csv", stage="toy")
    def toy_param(runs, cfg, colour):
        return pd.DataFrame()

    try:
        with pytest.raises(ConfigError, match=r"parameter 'colour' is neither an input nor given by stage 'toy'"):
            produce("toy", cfg, runs=None)
    finally:
        unregister("table", "toy_param.csv")


def test_a_file_belongs_to_one_entry():
    with pytest.raises(ConfigError, match="'table1.csv': registered already by rethinking.analysis.aggregate"):
        table("table1.csv")(lambda runs: runs)


def test_a_registered_metric_reaches_the_memorization_table_and_dvc_plots(finished):
    """engine.metrics.register: its columns in memorization.csv (blank for run folders written without them) and
    in each label-corrupted run's DVC plot, with no other edit."""
    from rethinking.analysis import aggregate as ag
    from rethinking.engine.metrics import Metric, metric_columns, register
    from rethinking.engine.metrics import unregister as drop

    params, cfg = finished
    register(Metric("toy", ("toy_share",), sums=None, values=None))
    try:
        assert metric_columns()[-1] == "toy_share" and "toy_share" in ag.memorization_columns()
        mem = pd.read_csv(aggregate(cfg) / "memorization.csv")
        assert list(mem.columns) == ag.memorization_columns() and mem["toy_share"].isna().all() and len(mem)
        plots = yaml.safe_load(generate(str(params)))["plots"]
        ys = [y for plot in plots for spec in plot.values() for y in spec["y"].values()]
        assert ys and all(y[-1] == "toy_share" for y in ys)
    finally:
        drop("toy")
