"""Snakemake and DVC: the same stages, the same runs, the same outputs; a stale dvc.yaml stops dvc repro."""
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, clone_project, run_cli, tree_files
from rethinking import plan as rc
from rethinking.analysis.aggregate import EARLY_STOPPING_COLUMNS, MEMORIZATION_COLUMNS, SPLIT_COLUMNS
from rethinking.pipeline.dvcgen import generate, stage_key
from rethinking.analysis.jobs import benchmarks_dir
from rethinking.pipeline.stages import expected_jobs
from rethinking.plan.packs import SECTION5_PRIORITY, job_priority

TINY_RESULTS = "results/tiny"
SNAKEMAKE_ONLY = ("tables/jobs.csv", "tables/jobs_detail.csv")   # rule jobs: no DVC stage
CONFIGS = [REPO / "params.yaml", *sorted((REPO / "config").glob("*.yaml"))]


def sh(cmd, cwd, timeout=900, check=True):
    proc = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def expected_runs(path):
    proc = run_cli("runs", "--params", path, cwd=REPO, check=True)
    return proc.stdout.split()


def test_committed_dvc_yaml_is_current():
    assert (REPO / "dvc.yaml").read_text() == generate("params.yaml"), \
        "dvc.yaml is stale: run `python -m rethinking dvc --params params.yaml`"


def test_the_rules_import_neither_torch_nor_seaborn():
    """Every Snakemake start (a dry run, each cluster job) parses the rules: the modules they import
    (and dvcgen, which writes dvc.yaml) must not load torch or seaborn, ~7 s together on the project's CPU."""
    modules = {"rethinking.pipeline.dvcgen"}
    for src in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        modules |= set(re.findall(r"^from (rethinking[\w.]*) import", src.read_text(), flags=re.MULTILINE))
    assert {"rethinking.plan.packs", "rethinking.pipeline.stages", "rethinking.section5.stages"} <= modules, modules
    code = (f"import sys; import {', '.join(sorted(modules))}; "
            "print(sorted(m for m in ('torch', 'seaborn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the rules' imports load {out.strip()}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_snakemake_dry_run_lists_exactly_the_runs(path):
    rel = path.relative_to(REPO)
    proc = sh(f"snakemake -n -F --nolock --configfile {rel}", REPO)
    train_runs = trained_runs(proc.stdout)
    assert sorted(train_runs) == sorted(expected_runs(rel))
    assert len(train_runs) == len(set(train_runs))
    # every job has the benchmark file `jobs` reads for it (and the jobs rule its own, which its table leaves out)
    benchmarks = re.findall(r"^\s*benchmark: (\S+)$", proc.stdout, flags=re.M)
    cfg = rc.load(path)
    expected = [str(j.file) for j in expected_jobs(cfg)] + [str(benchmarks_dir(cfg) / "jobs.tsv")]
    assert sorted(benchmarks) == sorted(expected)
    # the longest jobs first (plan.job_priority); each corrupt job as the highest of the runs it feeds
    by_id = {r.id: r for r in rc.expand_runs(cfg)}
    corrupt_priority, corrupt_jobs = {}, []
    for job in re.split(r"\n(?=(?:local)?rule )", proc.stdout):
        priority = float(m.group(1)) if (m := re.search(r"^\s*priority: (\S+)$", job, flags=re.M)) else 0.0
        if re.match(r"rule train(?:_pack_\d+)?:", job):
            runs = [by_id[r] for r in re.findall(r"/runs/([^,\s]+)/summary\.json", job)]
            assert priority == job_priority(cfg, runs), job
            for r in runs:
                corrupt_priority[r.corruption.id] = max(corrupt_priority.get(r.corruption.id, priority), priority)
        elif re.match(r"rule corrupt:", job):
            corrupt_jobs.append((re.search(r"corruption=(\S+)", job).group(1), priority))
        elif re.match(r"rule kernels:", job):
            assert priority == SECTION5_PRIORITY
    for corruption, priority in corrupt_jobs:
        assert priority == corrupt_priority[corruption], corruption


def test_job_priorities_put_the_longest_runs_first():
    """plan.expected_cost orders what the default experiment measured (docs/PERFORMANCE.md): AlexNet above
    every MLP, MLP 3x512 above 1x512, random labels above partial above true labels, the crop above none."""
    cfg = rc.load(REPO / "params.yaml")
    runs = {r.id: r for r in rc.expand_runs(cfg)}

    def p(run_id):
        return job_priority(cfg, [runs["digits/" + run_id + "/seed0"]])
    assert p("true-labels/alexnet/none") > p("random-labels/mlp_3x512/none") > p("random-labels/mlp_1x512/none")
    assert p("random-labels/alexnet/none") > p("labels-0.5/alexnet/none") > p("true-labels/alexnet/none")
    assert p("true-labels/alexnet/crop") > p("true-labels/alexnet/none") == p("true-labels/alexnet/wd")
    assert p("true-labels/mlp_3x512/none") > p("true-labels/mlp_1x512/none") > p("gaussian/mlp_1x512/none")
    pack = [runs["digits/labels-0.2/mlp_1x512/none/seed0"], runs["digits/labels-0.4/mlp_1x512/none/seed0"]]
    assert job_priority(cfg, pack) > max(job_priority(cfg, [r]) for r in pack)


def trained_runs(dry_run: str) -> list[str]:
    """The runs whose summary.json a train job (one run, or a pack) of a dry run writes."""
    runs = []
    for job in re.split(r"\n(?=(?:local)?rule )", dry_run):
        if re.match(r"(?:local)?rule train(?:_pack_\d+)?:", job):
            out = re.search(r"^\s*output: (.*)$", job, flags=re.M).group(1)
            runs += re.findall(r"/runs/([^,\s]+)/summary\.json", out)
    return runs


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_dvc_stage_list_shows_exactly_the_runs(path, tmp_path):
    """In a clone-like repository (its .gitignore, .dvc/ and .dvcignore): the generated dvc.yaml lists every
    run once, and `dvc status` reads it (a git-ignored dvc.lock once made every DVC command fail there)."""
    rel = path.relative_to(REPO)
    root = clone_project(tmp_path / "project")
    sh(f"python -m rethinking dvc --params {rel}", root)
    proc = sh("dvc stage list", root)
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    train = [n.split("@", 1)[1] for n in names if n.startswith(("train@", "train_user_model@"))]
    packed = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name in (n for n in names if n.startswith("train_pack_")):
        train += [stage_key(o.split("/runs/")[1].rsplit("/", 1)[0]) for out in packed[name]["outs"] for o in out]
    assert sorted(train) == sorted(stage_key(r) for r in expected_runs(rel))
    assert {"check", "prepare", "aggregate", "figures"} <= set(names)
    assert "changed" in sh("dvc status", root).stdout   # nothing has run yet: every stage is to run


@pytest.fixture(scope="module")
def snakemake_tiny(tmp_path_factory):
    dst = clone_project(tmp_path_factory.mktemp("smk"))
    sh("snakemake --cores 2 --configfile config/tiny.yaml", dst)
    return dst


def _outputs(root):
    files = tree_files(root / TINY_RESULTS)
    return [f for f in files if f.startswith(("tables/", "figures/", "runs/", "data/"))]


def test_snakemake_runs_the_tiny_grid_end_to_end(snakemake_tiny):
    files = _outputs(snakemake_tiny)
    for name in ["tables/table1.csv", "tables/table1.md", "tables/convergence.csv", "tables/runs.csv",
                 "figures/fig1a.png", "figures/fig1a.pdf", "figures/fig1b.png", "figures/fig1c.pdf",
                 "tables/memorization.csv", "tables/early_stopping.csv", "figures/memorization.png",
                 "figures/memorization.pdf", "figures/early_stopping.png", "figures/early_stopping.pdf"]:
        assert name in files
    runs = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/runs.csv")
    assert len(runs) == len(expected_runs("config/tiny.yaml"))
    t1 = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/table1.csv")
    assert {"model", "labels", "train_acc", "test_acc"} <= set(t1.columns)
    assert set(t1["labels"]) == {"true", "random"}
    # memorization under label noise: every epoch of the label-corrupted runs, split by corrupted labels
    mem = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/memorization.csv")
    assert list(mem.columns) == MEMORIZATION_COLUMNS
    assert set(mem["corruption"]) == {"labels-0.5", "random-labels"} and mem[list(SPLIT_COLUMNS)].notna().all().all()
    es = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/early_stopping.csv")
    assert list(es.columns) == EARLY_STOPPING_COLUMNS
    assert sorted(es["corruption"]) == ["labels-0.5", "random-labels", "true-labels"]
    assert es["gap"].to_numpy() == pytest.approx((es["best_test_acc"] - es["final_test_acc"]).to_numpy())
    # per-job benchmarks: Snakemake's file for every job of every rule (one per run of train; tiny.yaml has no
    # packs), and the last rule's tables/jobs.csv, which saw them all: every stage measured, with its wall time
    cfg = rc.load(snakemake_tiny / "config/tiny.yaml")
    expected = expected_jobs(cfg)
    assert {j.stage for j in expected} == {"prepare", "corrupt", "train", "aggregate", "figures", "kernels", "theorem"}
    for path in [j.file for j in expected] + [benchmarks_dir(cfg) / "jobs.tsv"]:
        header, *rows = (snakemake_tiny / path).read_text().splitlines()
        assert header.split("\t") == ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out",
                                      "mean_load", "cpu_time"] and len(rows) == 1, path
    jobs = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/jobs.csv").set_index("stage")
    assert list(jobs.index) == ["prepare", "corrupt", "train", "aggregate", "figures", "kernels", "theorem", "total"]
    assert (jobs["wall_s"] > 0).all() and (jobs["missing"] == 0).all() and (jobs["source"] == "benchmark").all()
    assert jobs.loc["train", "jobs"] == jobs.loc["train", "runs"] == len(runs)
    assert jobs.loc["total", "jobs"] == len(expected)
    assert jobs.loc["total", "wall_s"] == pytest.approx(jobs["wall_s"].drop("total").sum(), abs=0.05)
    assert jobs.loc["total", "max_rss_mb"] == jobs["max_rss_mb"].drop("total").max() > 0
    assert len(pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/jobs_detail.csv")) == len(expected)
    # the train command's own measurements (summary.json, for DVC), in runs.csv
    assert (runs["cpu_time"] > 0).all() and (runs["max_rss_mb"] > 0).all()
    assert (runs["process_wall_time"] >= runs["wall_time"]).all()
    # nothing left to do, and a params change reruns only what it touches
    again = sh("snakemake --cores 2 --configfile config/tiny.yaml -n", snakemake_tiny)
    assert "Nothing to be done" in again.stdout + again.stderr


def metric_numbers(shown: dict) -> dict:
    """`dvc metrics show --json` (or one experiment of `dvc exp show --json`) as {file: {dotted.name: value}}."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    return {f: dict(flat(d.get("data", {}))) for f, d in shown.items()}   # a file DVC could not read: {}


def test_dvc_repro_gives_the_same_outputs_as_snakemake(snakemake_tiny, project):
    """The README's `dvc repro` in a clone-like repository: the outputs Snakemake gives, a clean `dvc status`
    after it, headline metrics, and `dvc exp run -S` / `dvc exp show` as a DVC user compares experiments."""
    sh("python -m rethinking dvc --params config/tiny.yaml", project)
    sh("dvc repro", project)
    # all of Snakemake's outputs but the tables of its last rule, `jobs`, which DVC has no stage for (CHOICES.md)
    assert _outputs(project) == [f for f in _outputs(snakemake_tiny) if f not in SNAKEMAKE_ONLY]
    for table in ("table1.csv", "convergence.csv", "memorization.csv", "early_stopping.csv"):
        a = pd.read_csv(project / TINY_RESULTS / "tables" / table)
        b = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables" / table)
        pd.testing.assert_frame_equal(a, b)
    # the same corrupted artifacts, byte for byte
    for f in _outputs(project):
        if f.startswith("data/"):
            assert (project / TINY_RESULTS / f).read_bytes() == (snakemake_tiny / TINY_RESULTS / f).read_bytes(), f
    # a complete repro leaves nothing to do: no stage is "always changed"
    status = sh("dvc status", project).stdout
    assert "Data and pipelines are up to date" in status, status
    again = sh("dvc repro", project).stdout
    assert "Running stage" not in again, again
    # DVC shows the headline numbers (a few, readable) and the learning curves
    shown = metric_numbers(next(iter(json.loads(sh("dvc metrics show --json", project).stdout).values()))["data"])
    metrics = shown[f"{TINY_RESULTS}/tables/metrics.json"]
    runs = pd.read_csv(snakemake_tiny / TINY_RESULTS / "tables/runs.csv")
    true = runs[(runs["model"] == "mlp_1x512") & (runs["corruption"] == "true-labels")].iloc[0]
    assert metrics["mlp_1x512.true_test_acc"] == pytest.approx(true["test_acc"], abs=1e-3)
    assert metrics["runs.fitted"] + metrics["runs.max_epochs"] + metrics["runs.diverged"] == len(runs)
    assert {f"{TINY_RESULTS}/tables/{f}" for f in ("kernel_metrics.json", "theorem_metrics.json")} <= set(shown)
    numbers = [v for m in shown.values() for v in m.values()]
    assert 5 <= len(numbers) <= 40, shown
    sh("dvc plots show -o plots-html", project)
    html = (project / "plots-html" / "index.html").read_text()
    assert "train_loss" in html and "noisy_memorized" in html   # and each label-corrupted run's memorization
    # an experiment as DVC users run one; `dvc exp show` lists it with its metrics
    sh("dvc exp run -n two-epochs -S config/tiny.yaml:training.max_epochs=2", project)
    exps = json.loads(sh("dvc exp show --json", project).stdout)
    found = [e for base in exps for e in (base.get("experiments") or []) if e.get("name") == "two-epochs"]
    assert found, exps
    data = found[0]["revs"][0]["data"]
    assert data["params"]["config/tiny.yaml"]["data"]["training"]["max_epochs"] == 2
    exp_metrics = metric_numbers(data["metrics"])[f"{TINY_RESULTS}/tables/metrics.json"]
    assert set(exp_metrics) == set(metrics)
    table = sh("dvc exp show --no-pager --csv", project).stdout
    assert "two-epochs" in table and "mlp_1x512.true_test_acc" in table
    # DVC measures no jobs: `python -m rethinking jobs` reads the training jobs from the runs' summaries
    sh("python -m rethinking jobs --params config/tiny.yaml", project)
    jobs = pd.read_csv(project / TINY_RESULTS / "tables/jobs.csv").set_index("stage")
    assert jobs.loc["train", "source"] == "summary.json" and jobs.loc["train", "jobs"] == len(runs)
    assert jobs.loc["train", ["wall_s", "cpu_s", "max_rss_mb"]].gt(0).all() and jobs.loc["prepare", "jobs"] == 0


def test_stale_dvc_yaml_stops_dvc_repro(project):
    sh("python -m rethinking dvc --params config/tiny.yaml", project)
    cfg = yaml.safe_load((project / "config/tiny.yaml").read_text())
    cfg["seeds"] = [0, 1]
    (project / "config/tiny.yaml").write_text(yaml.safe_dump(cfg))
    proc = sh("dvc repro", project, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "dvc.yaml is stale" in out and "python -m rethinking dvc --params config/tiny.yaml" in out
    assert not (project / TINY_RESULTS / "runs").exists()


@pytest.mark.parametrize("text, needles", [
    ("grid:\n  - {name: a, models: [resnet], corruptions: [true_labels]}\n", ["grid[0].models[0]", "resnet"]),
    ("dataset: {source: imagefolder, root: /nonexistent/x.zip}\n"
     "grid:\n  - {name: a, models: [mlp_1x512], corruptions: [true_labels]}\n", ["dataset.root", "/nonexistent/x.zip"]),
])
def test_snakemake_refuses_bad_params_before_any_work(project, text, needles):
    (project / "bad.yaml").write_text(text)
    before = tree_files(project / "results")   # what a clone has there (results/README.md)
    proc = sh("snakemake --cores 1 --configfile bad.yaml", project, check=False)
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stdout + proc.stderr
    assert tree_files(project / "results") == before == ["README.md"]


def test_a_second_snakemake_on_the_same_results_is_refused(project):
    import time
    first = subprocess.Popen("snakemake --cores 1 --configfile config/tiny.yaml", cwd=project, shell=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        locks = project / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second could start"
        second = sh("snakemake --cores 1 --configfile config/tiny.yaml", project, check=False)
        assert second.returncode != 0
        # refused at the lock, or (when the first run is writing an output just then, as a faster start
        # makes likely) because Snakemake finds that output marked incomplete; both stop before any job
        said = second.stdout + second.stderr
        assert "Directory cannot be locked" in said or "Incomplete files" in said, said[-2000:]
        assert first.poll() is None, "the second run stopped the first"
    finally:
        import os
        import signal
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
