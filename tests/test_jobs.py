"""rethinking.analysis.jobs: per-stage time and memory from Snakemake's benchmark files, or from the runs' summaries."""

import json
import math

import pandas as pd
import pytest
import yaml

from rethinking import plan as rc
from rethinking.analysis.jobs import COLUMNS, DETAIL_COLUMNS, benchmarks_dir, job_rows, stage_table
from rethinking.cli import main
from rethinking.engine.run import process_usage
from rethinking.pipeline.stages import expected_jobs
from rethinking.plan.packs import pack_name

from conftest import JOB_STAGES, tiny_params

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """config/tiny.yaml (section5 on: kernels and theorem) with its results under tmp_path."""
    monkeypatch.chdir(tmp_path)
    raw = tiny_params()
    raw["results_dir"] = "results"
    raw["training"]["pack"] = 1  # one training job per run (packed jobs: the tiny pipeline, test_pipeline.py)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    return rc.load(tmp_path / "params.yaml")


def bench(path, *rows):
    """A benchmark file as Snakemake 9 writes it: one row per repeat of (s, max_rss, cpu_time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        HEADER + "".join(f"{s}\t0:00:01\t{rss}\t1.00\t1.00\t1.00\t0.50\t0.25\t40.00\t{cpu}\n" for s, rss, cpu in rows)
    )


def summary(run_dir, **numbers):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "fitted", **numbers}))


def test_expected_jobs_name_the_rules_benchmark_files(cfg):
    jobs = expected_jobs(cfg)
    runs = rc.expand_runs(cfg)
    by_stage = {s: [j for j in jobs if j.stage == s] for s in {j.stage for j in jobs}}
    ds = rc.dataset_id(cfg)
    assert [j.file.as_posix() for j in by_stage["prepare"]] == [f"results/benchmarks/prepare/{ds}.tsv"]
    assert sorted(j.name for j in by_stage["corrupt"]) == sorted(f"{ds}/{c.id}" for c in rc.corruptions_of(runs))
    assert {j.file.as_posix() for j in by_stage["train"]} == {f"results/benchmarks/train/{r.id}.tsv" for r in runs}
    assert all(len(j.runs) == 1 for j in by_stage["train"])
    for stage in ("aggregate", "records", "figures", "kernels", "theorem"):  # section5 is on in tiny.yaml
        assert [j.file.as_posix() for j in by_stage[stage]] == [f"results/benchmarks/{stage}.tsv"]
    # a pack of training.pack is one job, train_pack_<n>'s benchmark file named after the pack
    packed = expected_jobs(cfg, packs=[runs[:3], *([r] for r in runs[3:])])
    train = [j for j in packed if j.stage == "train"]
    assert len(train) == len(runs) - 2 and len(train[0].runs) == 3
    assert train[0].file.as_posix() == f"results/benchmarks/train_pack/{pack_name(runs[:3])}.tsv"


def test_stage_table_sums_the_benchmark_files_there_are(cfg):
    jobs = expected_jobs(cfg)
    train = [j for j in jobs if j.stage == "train"]
    corrupt = [j for j in jobs if j.stage == "corrupt"]
    bench(next(j for j in jobs if j.stage == "prepare").file, (2.5, 100.0, 2.0))
    for j in corrupt[1:]:  # the first corruption's job is missing: not run since benchmarks came in
        bench(j.file, (1.0, 50.0, 0.5))
    for k, j in enumerate(train):
        bench(j.file, (10.0 + k, 700.0 + k, 5.0))
    bench(next(j for j in jobs if j.stage == "aggregate").file, (3.0, 140.0, "-"))  # `-`: not measured
    bench(next(j for j in jobs if j.stage == "figures").file, (6.0, 200.0, 4.0), (8.0, 220.0, 6.0))  # repeat: 2
    detail = job_rows(cfg, expected_jobs(cfg))
    assert list(detail.columns) == DETAIL_COLUMNS and len(detail) == len(jobs)
    table = stage_table(detail).set_index("stage")
    assert list(table.reset_index().columns) == COLUMNS
    assert list(table.index) == [*JOB_STAGES, "total"]
    n = len(train)
    assert table.loc["train", ["jobs", "missing", "runs"]].tolist() == [n, 0, n]
    assert table.loc["train", "wall_s"] == pytest.approx(sum(10.0 + k for k in range(n)))
    assert table.loc["train", "cpu_s"] == pytest.approx(5.0 * n)
    assert table.loc["train", "max_rss_mb"] == pytest.approx(700.0 + n - 1)
    assert table.loc["corrupt", ["jobs", "missing"]].tolist() == [len(corrupt) - 1, 1]
    assert table.loc["corrupt", "wall_s"] == pytest.approx(len(corrupt) - 1)
    assert math.isnan(table.loc["aggregate", "cpu_s"]) and table.loc["aggregate", "wall_s"] == 3.0
    assert table.loc["figures", ["wall_s", "cpu_s", "max_rss_mb"]].tolist() == [7.0, 5.0, 220.0]
    for stage in ("records", "kernels", "theorem"):  # no file at all: a row that says so, no numbers
        assert table.loc[stage, ["jobs", "missing"]].tolist() == [0, 1]
        assert math.isnan(table.loc[stage, "wall_s"]) and pd.isna(table.loc[stage, "source"])
    total = table.loc["total"]
    assert total["jobs"] == len(jobs) - 4 and total["missing"] == 4 and total["source"] == "benchmark"
    assert total["wall_s"] == pytest.approx(table["wall_s"].drop("total").sum())
    assert total["max_rss_mb"] == pytest.approx(700.0 + n - 1)
    # a benchmark file of a run no longer in the grid is not read
    bench(benchmarks_dir(cfg) / "train/digits-train100-test50/gone/mlp_1x512/none/seed0.tsv", (99.0, 1.0, 1.0))
    assert stage_table(job_rows(cfg, expected_jobs(cfg))).set_index("stage").loc["train", "jobs"] == n


def test_without_benchmarks_the_train_row_comes_from_the_summaries(cfg):
    """A DVC run: no results/benchmarks/. A pack's members share one process, so its job is their largest."""
    runs = rc.expand_runs(cfg)
    jobs = expected_jobs(cfg, packs=[runs[:2], [runs[2]], [runs[3]], *([r] for r in runs[4:])])
    summary(rc.run_dir(cfg, runs[0]), wall_time=4.0, process_wall_time=9.0, cpu_time=7.0, max_rss_mb=800.0)
    summary(rc.run_dir(cfg, runs[1]), wall_time=5.0, process_wall_time=10.0, cpu_time=8.0, max_rss_mb=810.0)
    summary(rc.run_dir(cfg, runs[2]), wall_time=3.0)  # written before cpu_time and max_rss_mb existed
    # runs[3] has no summary: not trained yet
    for r in runs[4:]:
        summary(rc.run_dir(cfg, r), wall_time=2.0, process_wall_time=6.0, cpu_time=5.0, max_rss_mb=700.0)
    detail = job_rows(cfg, jobs)
    train = detail[detail["stage"] == "train"].set_index("job")
    pack = train.loc[pack_name(runs[:2])]
    assert (pack["runs"], pack["source"]) == (2, "summary.json") and pd.isna(pack["file"])
    assert pack[["wall_s", "cpu_s", "max_rss_mb"]].tolist() == [10.0, 8.0, 810.0]
    old = train.loc[runs[2].id]
    assert old["wall_s"] == 3.0 and math.isnan(old["cpu_s"]) and math.isnan(old["max_rss_mb"])
    assert train.loc[runs[3].id, "source"] == "missing"
    table = stage_table(detail).set_index("stage")
    rest = len(runs) - 4
    assert table.loc["train", ["jobs", "missing", "runs"]].tolist() == [len(train) - 1, 1, 3 + rest]
    assert table.loc["train", "wall_s"] == pytest.approx(10.0 + 3.0 + 6.0 * rest)
    assert table.loc["train", "cpu_s"] == pytest.approx(8.0 + 5.0 * rest)
    assert table.loc["train", "source"] == "summary.json"
    assert table.loc["prepare", "jobs"] == 0 and table.loc["total", "source"] == "summary.json"
    # with a benchmark file for one training job, that job is read from it and the row says both
    bench(jobs[next(i for i, j in enumerate(jobs) if j.name == runs[2].id)].file, (12.0, 650.0, 6.0))
    table = stage_table(job_rows(cfg, jobs)).set_index("stage")
    assert table.loc["train", "source"] == "benchmark+summary.json"
    assert table.loc["train", "wall_s"] == pytest.approx(10.0 + 12.0 + 6.0 * rest)


def test_the_jobs_command_writes_both_tables(cfg, capsys):
    first = expected_jobs(cfg)[0]
    bench(first.file, (1.5, 90.0, 1.0))
    assert main(["jobs", "--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "results/tables/jobs.csv" in out and "not measured" in out
    table = pd.read_csv("results/tables/jobs.csv")
    assert list(table.columns) == COLUMNS and table["stage"].iloc[-1] == "total"
    assert table.set_index("stage").loc["prepare", "wall_s"] == 1.5
    assert len(pd.read_csv("results/tables/jobs_detail.csv")) == len(expected_jobs(cfg))


def test_process_usage_measures_this_process():
    sum(i * i for i in range(200_000))
    u = process_usage()
    assert u["cpu_time"] > 0 and 1 < u["max_rss_mb"] < 1e6
    assert u["process_wall_time"] is None or u["process_wall_time"] >= 0
