"""Snakemake and DVC: the same stages, the same runs, the same outputs; a stale dvc.yaml stops dvc repro."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from rethinking import plan as rc
from rethinking.analysis.aggregate import EARLY_STOPPING_COLUMNS, RUN_FILES, memorization_columns
from rethinking.analysis.jobs import benchmarks_dir
from rethinking.engine.metrics import metric_columns
from rethinking.pipeline.dvcgen import generate, stage_key
from rethinking.pipeline.stages import expected_jobs
from rethinking.plan.packs import SECTION5_PRIORITY, job_priority, pack_name, plan_packs

from conftest import JOB_STAGES, REPO, clone_project, copy_of, run_cli, tree_files

TINY_RESULTS = "results/tiny"
SNAKEMAKE_ONLY = ("tables/jobs.csv", "tables/jobs_detail.csv")  # rule jobs: no DVC stage
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
    assert (REPO / "dvc.yaml").read_text() == generate("params.yaml"), (
        "dvc.yaml is stale: run `python -m rethinking dvc --params params.yaml`"
    )


RULE_FILES = [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
HEAVY = ("torch", "pandas", "seaborn", "scipy")


def test_the_rules_import_neither_torch_nor_pandas():
    """Every Snakemake start (a dry run, each cluster job) parses the rules: the modules they import and dvcgen
    (which writes dvc.yaml), and what the rules call of them for a whole grid, must not load torch, pandas,
    seaborn or scipy (seconds of every start on the project's CPU). torch only where planning builds a model:
    packs (plan.packs.module_traits) and torchvision or users' models (check_models), as the params ask."""
    modules = {"rethinking.pipeline.dvcgen"}
    for src in RULE_FILES:
        modules |= set(re.findall(r"^\s*from (rethinking[\w.]*) import", src.read_text(), flags=re.MULTILINE))
        modules |= set(re.findall(r"^\s*import (rethinking[\w.]*)", src.read_text(), flags=re.MULTILINE))
    assert {"rethinking.pipeline.stages", "rethinking.plan.packs", "rethinking.section5.stages"} <= modules, modules
    code = (
        f"import json, sys; import {', '.join(sorted(modules))}\n"
        "from rethinking.pipeline import dvcgen, stages\n"
        "from rethinking import plan as rc\n"
        "loaded = lambda names: sorted(m for m in names if m in sys.modules)\n"
        "for path in sys.argv[1:]:\n"
        "    cfg = rc.load(path); runs = rc.expand_runs(cfg)\n"
        "    p = stages.plan(cfg, path, runs, packs=[[r] for r in runs] + [runs[:2]])\n"
        "    for s in stages.stages_for(cfg):\n"
        "        for v in s.jobs(p):\n"
        "            s.inputs(p, v), s.outputs(p, v), s.cmd(cfg, path, v), s.code_paths(cfg)\n"
        "            s.job_file(p, v, 'logs', '.log')\n"
        "            s.settings and [s.settings(cfg, p.run_by_id[r] if s.wildcard == 'run' else r) for r in v]\n"
        "torch = loaded(['torch'])\n"
        "for path in sys.argv[1:]:\n"
        "    dvcgen.generate(path); stages.expected_jobs(rc.load(path))\n"
        f"print(json.dumps(torch + loaded({HEAVY[1:]!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, CONFIGS)], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert json.loads(out) == [], f"the rules' imports load {out.strip()}"


def dry_run_jobs(dry_run: str) -> list[dict]:
    """The jobs of `snakemake -n -p`: rule, outputs, wildcards, benchmark, priority and shell command of each."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule )", dry_run):
        if not (m := re.match(r"(?:local)?rule (\w+):", block)):
            continue

        def field(key, block=block):
            found = re.search(rf"^\s*{key}: (.*)$", block, flags=re.M)
            return found.group(1) if found else None

        shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
        jobs.append(
            {
                "rule": m.group(1),
                "output": set((field("output") or "").split(", ")) - {""},
                "wildcards": dict(w.split("=", 1) for w in (field("wildcards") or "").split(", ") if w),
                "benchmark": field("benchmark"),
                "priority": float(field("priority") or 0),
                "shell": shell.group(1).split(" > ")[0] if shell else None,
            }
        )
    return jobs


def dvc_stages(doc: dict) -> dict:
    """dvc.yaml's stages with foreach expanded (`<name>@<key>`, ${key} and ${item.*} filled in), as DVC
    lists them: {name: {"cmd", "deps", "outputs" (outs, metrics and plots)}}."""

    def fill(x, key, item):
        if isinstance(x, str):
            return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), x.replace("${key}", key))
        if isinstance(x, list):
            return [fill(i, key, item) for i in x]
        return {fill(k, key, item): fill(v, key, item) for k, v in x.items()} if isinstance(x, dict) else x

    expanded = {}
    for name, st in doc["stages"].items():
        if "foreach" in st:
            expanded.update({f"{name}@{k}": fill(st["do"], k, item) for k, item in st["foreach"].items()})
        else:
            expanded[name] = st
    return {
        n: {
            "cmd": st["cmd"],
            "deps": set(st.get("deps", [])),
            "outputs": {p for kind in ("outs", "metrics", "plots") for o in st.get(kind, []) for p in o},
        }
        for n, st in expanded.items()
    }


def dvc_name(job: dict, stages: dict) -> str | None:
    """The DVC stage of a Snakemake job: train <-> train@<run> or train_user_model@<run>, corrupt <->
    corrupt@<dataset>__<corruption> or corrupt_label_file@..., prepare <-> prepare@<dataset> or
    prepare_subset@<dataset>, train_pack_N and the others by name; None for Snakemake's own (all, jobs)."""
    if job["rule"] in ("all", "jobs"):
        return None
    if job["rule"] == "train":
        key = stage_key(job["wildcards"]["run"])
        return next((n for n in (f"train@{key}", f"train_user_model@{key}") if n in stages), f"train@{key}")
    if job["rule"] == "corrupt":
        key = stage_key(job["wildcards"]["corruption"])
        return next((n for n in (f"corrupt@{key}", f"corrupt_label_file@{key}") if n in stages), f"corrupt@{key}")
    if job["rule"] == "prepare":
        key = job["wildcards"]["dataset"]
        return next((n for n in (f"prepare@{key}", f"prepare_subset@{key}") if n in stages), f"prepare@{key}")
    return job["rule"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_snakemake_and_dvc_run_the_same_stages(path):
    """One `snakemake -n` and one dvc.yaml per config: every run trained exactly once by each, the same stages
    with the same commands, code and outputs (jobs is Snakemake's only, check DVC's), every job with the
    benchmark file `jobs` reads for it, the longest jobs first, and a dvc.yaml DVC's schema takes."""
    from dvc.schema import COMPILED_MULTI_STAGE_SCHEMA

    rel = path.relative_to(REPO)
    cfg = rc.load(path)
    runs = [r.id for r in rc.expand_runs(cfg)]
    jobs = dry_run_jobs(sh(f"snakemake -n -p -F --nolock --configfile {rel}", REPO).stdout)
    doc = yaml.safe_load(generate(str(rel)))
    COMPILED_MULTI_STAGE_SCHEMA(doc)
    stages = dvc_stages(doc)
    # every run trained once, by Snakemake (a run or a pack) and by DVC (train@, train_user_model@, packs)
    trained = [
        r
        for j in jobs
        if re.match(r"train(_pack_\d+)?$", j["rule"])
        for o in j["output"]
        if (r := re.match(rf"{re.escape(cfg['results_dir'])}/runs/(.+)/summary\.json$", o))
    ]
    assert sorted(m.group(1) for m in trained) == sorted(runs)
    dvc_trained = [
        o.split("/runs/")[1].rsplit("/", 1)[0]
        for n, st in stages.items()
        if n.startswith("train")
        for o in st["outputs"]
        if o.endswith("/summary.json")
    ]
    assert sorted(dvc_trained) == sorted(runs)
    # the same stages, commands, code and outputs
    mapped = {dvc_name(j, stages): j for j in jobs}
    mapped.pop(None)
    assert set(mapped) == set(stages) - {"check"}, set(mapped) ^ set(stages)
    absolute = str(REPO / rel)
    for name, job in mapped.items():
        st = stages[name]
        assert job["output"] == st["outputs"], name
        assert job["shell"].replace(absolute, str(rel)) == st["cmd"], name
    assert {j["rule"] for j in jobs} >= {"prepare", "aggregate", "figures", "jobs"} and "check" in stages
    _check_benchmarks_and_priorities(cfg, jobs)


def _check_benchmarks_and_priorities(cfg, jobs):
    # every job has the benchmark file `jobs` reads for it (and the jobs rule its own, which its table leaves out)
    expected = [str(j.file) for j in expected_jobs(cfg)] + [str(benchmarks_dir(cfg) / "jobs.tsv")]
    assert sorted(j["benchmark"] for j in jobs if j["benchmark"]) == sorted(expected)
    # the longest jobs first (plan.job_priority); each corrupt job as the highest of the runs it feeds
    by_id = {r.id: r for r in rc.expand_runs(cfg)}
    corrupt_priority = {}
    for job in jobs:
        if re.match(r"train(_pack_\d+)?$", job["rule"]):
            runs = [by_id[r] for o in job["output"] for r in re.findall(r"/runs/(.+)/summary\.json$", o)]
            assert job["priority"] == job_priority(cfg, runs), job
            for r in runs:
                name = rc.artifact_name(r.dataset, r.corruption)
                corrupt_priority[name] = max(corrupt_priority.get(name, job["priority"]), job["priority"])
        elif job["rule"] == "kernels":
            assert job["priority"] == SECTION5_PRIORITY
    for job in (j for j in jobs if j["rule"] == "corrupt"):
        assert job["priority"] == corrupt_priority[job["wildcards"]["corruption"]], job


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


def test_dvc_lists_the_generated_stages_in_a_clone(tmp_path):
    """In a clone-like repository (its .gitignore, .dvc/ and .dvcignore): `dvc stage list` lists the stages
    dvc.yaml is read as here (test_snakemake_and_dvc_run_the_same_stages), and `dvc status` reads it (a
    git-ignored dvc.lock once made every DVC command fail there)."""
    root = clone_project(tmp_path / "project")
    sh("python -m rethinking dvc --params params.yaml", root)
    names = [line.split()[0] for line in sh("dvc stage list", root).stdout.splitlines() if line.strip()]
    assert sorted(names) == sorted(dvc_stages(yaml.safe_load((root / "dvc.yaml").read_text())))
    assert "changed" in sh("dvc status", root).stdout  # nothing has run yet: every stage is to run


def _outputs(root):
    files = tree_files(root / TINY_RESULTS)
    return [f for f in files if f.startswith(("tables/", "figures/", "runs/", "data/"))]


USER_MODEL = "models/small_cnn.py:small_cnn"  # config/tiny.yaml's model of a user's own (config/models/)


@pytest.mark.slow
def test_snakemake_runs_the_tiny_grid_end_to_end(tiny_snakemake):
    """config/tiny.yaml through Snakemake (conftest's session run): every table and figure, the packs' runs
    each in their folder, a user's model file trained like a built-in model, every job measured."""
    files = _outputs(tiny_snakemake)
    for name in [
        "tables/table1.csv",
        "tables/table1.md",
        "tables/convergence.csv",
        "tables/runs.csv",
        "figures/fig1a.png",
        "figures/fig1a.pdf",
        "figures/fig1b.png",
        "figures/fig1c.pdf",
        "tables/memorization.csv",
        "tables/early_stopping.csv",
        "figures/memorization.png",
        "figures/memorization.pdf",
        "figures/early_stopping.png",
        "figures/early_stopping.pdf",
    ]:
        assert name in files
    ids = expected_runs("config/tiny.yaml")
    runs = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/runs.csv")
    assert sorted(runs["run"]) == sorted(ids)
    for run in ids:  # packed or not, every run has its own folder and files
        assert all((tiny_snakemake / TINY_RESULTS / "runs" / run / f).is_file() for f in RUN_FILES), run
    # the user's model: its file found relative to the params file, its own learning rate, its run id
    mine = runs.set_index("model").loc[USER_MODEL]
    assert mine["lr"] == 0.02 and mine["run"].split("/")[2].startswith("small_cnn-")
    t1 = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/table1.csv")
    assert {"model", "labels", "train_acc", "test_acc"} <= set(t1.columns)
    assert set(t1["labels"]) == {"true", "random"}
    # memorization under label noise: every epoch of the label-corrupted runs, split by corrupted labels
    mem = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/memorization.csv")
    assert list(mem.columns) == memorization_columns()
    assert set(mem["corruption"]) == {"labels-0.5", "random-labels"} and mem[list(metric_columns())].notna().all().all()
    es = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/early_stopping.csv")
    assert list(es.columns) == EARLY_STOPPING_COLUMNS
    assert sorted(es["corruption"]) == ["labels-0.5", "random-labels", "random-labels", "true-labels"]
    assert es["gap"].to_numpy() == pytest.approx((es["best_test_acc"] - es["final_test_acc"]).to_numpy())
    _check_jobs(tiny_snakemake, runs)


def _check_jobs(root, runs):
    """Per-job benchmarks: Snakemake's file for every job of every rule (one per run trained alone, one per
    pack), and the last rule's tables/jobs.csv, which saw them all: every stage measured, with its wall time."""
    cfg = rc.load(root / "config/tiny.yaml")
    expected = expected_jobs(cfg)
    packs = plan_packs(cfg, rc.expand_runs(cfg))
    assert sorted(map(len, packs)) == [1, 1, 3, 3]  # the six MLP 1x512 runs in two packs
    assert {j.stage for j in expected} == set(JOB_STAGES)
    for path in [j.file for j in expected] + [benchmarks_dir(cfg) / "jobs.tsv"]:
        header, *rows = (root / path).read_text().splitlines()
        assert (
            header.split("\t")
            == ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time"]
            and len(rows) == 1
        ), path
    for pack in packs:
        if len(pack) > 1:  # a pack's job has one log, named after it
            assert (root / TINY_RESULTS / "logs" / "train" / f"{pack_name(pack)}.log").is_file()
    jobs = pd.read_csv(root / TINY_RESULTS / "tables/jobs.csv").set_index("stage")
    assert list(jobs.index) == [*JOB_STAGES, "total"]
    assert (jobs["wall_s"] > 0).all() and (jobs["missing"] == 0).all() and (jobs["source"] == "benchmark").all()
    assert jobs.loc["train", "jobs"] == len(packs) and jobs.loc["train", "runs"] == len(runs)
    assert jobs.loc["total", "jobs"] == len(expected)
    assert jobs.loc["total", "wall_s"] == pytest.approx(jobs["wall_s"].drop("total").sum(), abs=0.05)
    assert jobs.loc["total", "max_rss_mb"] == jobs["max_rss_mb"].drop("total").max() > 0
    assert len(pd.read_csv(root / TINY_RESULTS / "tables/jobs_detail.csv")) == len(expected)
    # the train command's own measurements (summary.json, for DVC), in runs.csv
    assert (runs["cpu_time"] > 0).all() and (runs["max_rss_mb"] > 0).all()
    assert (runs["process_wall_time"] >= runs["wall_time"]).all()


@pytest.mark.slow
def test_snakemake_reruns_only_what_an_edit_touches(tiny_snakemake, tmp_path):
    """Nothing is left to do after the run, also in a copy of the finished project in another folder (the
    params file's path in the rules is relative: an absolute one reran every job of a moved project); an edit
    of the user's model file reruns exactly its run (and the tables and figures after it)."""
    root = copy_of(tiny_snakemake, tmp_path / "copy")
    again = sh("snakemake --cores 2 --configfile config/tiny.yaml -n", root)
    assert "Nothing to be done" in again.stdout + again.stderr
    mine = [r for r in expected_runs("config/tiny.yaml") if "/small_cnn-" in r]
    model = root / "config/models/small_cnn.py"
    model.write_text(model.read_text() + "# edited\n")
    dry = sh("snakemake -n --configfile config/tiny.yaml", root).stdout
    assert trained_runs(dry) == mine and len(mine) == 1


@pytest.mark.slow
def test_snakemake_writes_its_report(tiny_snakemake, tmp_path):
    """`snakemake --report` on the finished run: every registered table and figure with its caption."""
    root = copy_of(tiny_snakemake, tmp_path / "copy")
    sh("snakemake --configfile config/tiny.yaml --report report.zip", root)
    import zipfile

    names = zipfile.ZipFile(root / "report.zip").namelist()
    for f in ("fig1a.png", "fig1c.png", "table1.csv", "kernel_noise.png", "theorem.png"):
        assert any(n.endswith(f) for n in names), (f, names)


def metric_numbers(shown: dict) -> dict:
    """`dvc metrics show --json` (or one experiment of `dvc exp show --json`) as {file: {dotted.name: value}}."""

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    return {f: dict(flat(d.get("data", {}))) for f, d in shown.items()}  # a file DVC could not read: {}


@pytest.mark.slow
def test_dvc_repro_gives_the_same_outputs_as_snakemake(tiny_snakemake, tiny_dvc):
    """The README's `dvc repro` in a clone (conftest's session run): the outputs Snakemake gives, byte for byte
    where they are data, a clean `dvc status` after it, nothing to rerun, headline metrics and plots."""
    # all of Snakemake's outputs but the tables of its last rule, `jobs`, which DVC has no stage for (CHOICES.md)
    assert _outputs(tiny_dvc) == [f for f in _outputs(tiny_snakemake) if f not in SNAKEMAKE_ONLY]
    for table in ("table1.csv", "convergence.csv", "memorization.csv", "early_stopping.csv"):
        a = pd.read_csv(tiny_dvc / TINY_RESULTS / "tables" / table)
        b = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables" / table)
        pd.testing.assert_frame_equal(a, b)
    for f in _outputs(tiny_dvc):  # the same artifacts, and the same epochs of every run
        if f.startswith("data/") or f.endswith(("epochs.csv", "steps.csv")):
            if f.startswith("data/"):
                assert (tiny_dvc / TINY_RESULTS / f).read_bytes() == (tiny_snakemake / TINY_RESULTS / f).read_bytes(), f
            else:
                x, y = (
                    pd.read_csv(r / TINY_RESULTS / f).drop(columns="wall_time", errors="ignore")
                    for r in (tiny_dvc, tiny_snakemake)
                )
                pd.testing.assert_frame_equal(x, y, obj=f)
    # the packs are stages of their own, one command training their runs together
    stages = yaml.safe_load((tiny_dvc / "dvc.yaml").read_text())["stages"]
    packed = [s for name, s in stages.items() if name.startswith("train_pack_")]
    assert sorted(s["cmd"].count("--run ") for s in packed) == [3, 3]
    # a complete repro leaves nothing to do: no stage is "always changed"
    status = sh("dvc status", tiny_dvc).stdout
    assert "Data and pipelines are up to date" in status, status
    # DVC shows the headline numbers (a few, readable) and the learning curves
    shown = metric_numbers(next(iter(json.loads(sh("dvc metrics show --json", tiny_dvc).stdout).values()))["data"])
    metrics = shown[f"{TINY_RESULTS}/tables/metrics.json"]
    runs = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/runs.csv")
    true = runs[(runs["model"] == "mlp_1x512") & (runs["corruption"] == "true-labels")].iloc[0]
    assert metrics["mlp_1x512.true_test_acc"] == pytest.approx(true["test_acc"], abs=1e-3)
    assert metrics["runs.fitted"] + metrics["runs.max_epochs"] + metrics["runs.diverged"] == len(runs)
    assert {f"{TINY_RESULTS}/tables/{f}" for f in ("kernel_metrics.json", "theorem_metrics.json")} <= set(shown)
    numbers = [v for m in shown.values() for v in m.values()]
    assert 5 <= len(numbers) <= 40, shown


@pytest.mark.slow
def test_dvc_plots_experiments_and_jobs(tiny_snakemake, tiny_dvc, tmp_path):
    """As a DVC user works with the finished pipeline, in a copy of it: `dvc repro` has nothing to do, the
    plots (and each label-corrupted run's memorization), an experiment with `dvc exp run -S` listed by `dvc exp
    show` with its metrics, the jobs table from the runs' summaries, and the user's model as a dependency of
    its runs' stages alone."""
    root = copy_of(tiny_dvc, tmp_path / "copy")
    again = sh("dvc repro", root).stdout
    assert "Running stage" not in again, again
    sh("dvc plots show -o plots-html", root)
    html = (root / "plots-html" / "index.html").read_text()
    assert "train_loss" in html and "noisy_memorized" in html
    # an experiment as DVC users run one (Section 5's theorem at other sizes: two short stages rerun)
    sh("dvc exp run -n theorem-sizes -S config/tiny.yaml:section5.theorem.ns=[10,40]", root)
    exps = json.loads(sh("dvc exp show --json", root).stdout)
    found = [e for base in exps for e in (base.get("experiments") or []) if e.get("name") == "theorem-sizes"]
    assert found, exps
    data = found[0]["revs"][0]["data"]
    assert data["params"]["config/tiny.yaml"]["data"]["section5"]["theorem"]["ns"] == [10, 40]
    assert f"{TINY_RESULTS}/tables/metrics.json" in metric_numbers(data["metrics"])
    table = sh("dvc exp show --no-pager --csv", root).stdout
    assert "theorem-sizes" in table and "mlp_1x512.true_test_acc" in table
    # DVC measures no jobs: `python -m rethinking jobs` reads the training jobs from the runs' summaries
    sh("python -m rethinking jobs --params config/tiny.yaml", root)
    jobs = pd.read_csv(root / TINY_RESULTS / "tables/jobs.csv").set_index("stage")
    runs = pd.read_csv(tiny_snakemake / TINY_RESULTS / "tables/runs.csv")
    assert jobs.loc["train", "source"] == "summary.json" and jobs.loc["train", "runs"] == len(runs)
    assert jobs.loc["train", ["wall_s", "cpu_s", "max_rss_mb"]].gt(0).all() and jobs.loc["prepare", "jobs"] == 0


@pytest.mark.slow
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


@pytest.mark.parametrize(
    "text, needles",
    [
        ("grid:\n  - {name: a, models: [resnet], corruptions: [true_labels]}\n", ["grid[0].models[0]", "resnet"]),
        (
            "dataset: {source: imagefolder, root: /nonexistent/x.zip}\n"
            "grid:\n  - {name: a, models: [mlp_1x512], corruptions: [true_labels]}\n",
            ["dataset.root", "/nonexistent/x.zip"],
        ),
    ],
)
def test_snakemake_refuses_bad_params_before_any_work(project, text, needles):
    (project / "bad.yaml").write_text(text)
    before = tree_files(project / "results")  # what a clone has there (results/README.md)
    proc = sh("snakemake --cores 1 --configfile bad.yaml", project, check=False)
    assert proc.returncode != 0
    for needle in needles:
        assert needle in proc.stdout + proc.stderr
    assert tree_files(project / "results") == before == ["README.md"]


@pytest.mark.slow
def test_a_second_snakemake_on_the_same_results_is_refused(project):
    import time

    first = subprocess.Popen(
        "snakemake --cores 1 --configfile config/tiny.yaml",
        cwd=project,
        shell=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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


@pytest.mark.slow
def test_a_clone_runs_its_own_package(project):
    """Snakemake in a clone imports that clone's package, and so do the jobs it starts, whatever checkout an
    installed (editable) copy points at: a clone whose dataset ids are changed plans and prepares under them."""
    datasets = project / "workflow" / "rethinking" / "plan" / "datasets.py"
    text = datasets.read_text()
    changed = text.replace(
        '    return name if train_size is None else f"{name}{SIZED}{train_size}"',
        '    name = "clone-marker"\n    return name if train_size is None else f"{name}{SIZED}{train_size}"',
    )
    assert changed != text
    datasets.write_text(changed)
    proc = sh("snakemake --cores 1 results/data/clone-marker/base.npz", project)
    assert (project / "results/data/clone-marker/base.npz").is_file(), proc.stdout[-2000:]
