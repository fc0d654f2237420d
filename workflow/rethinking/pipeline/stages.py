"""Every stage of the pipeline, declared once: its command, its code, the params keys it reads, its inputs and
its outputs. The Snakemake rules (workflow/rules/*.smk) and the DVC generator (pipeline/dvcgen.py) both read
these declarations; what is left to each tool is its own business (Snakemake: wildcards, resources, threads,
priorities, the report; DVC: foreach, the `check` stage's stamp, caching).

A Stage's functions take a Plan (the params file expanded) and a job's values: () for a stage of one job, the
values of its wildcard otherwise (one corruption id; one run id, or the ids of a pack's runs). Called with
the wildcard itself ("{run}"), `outputs` gives Snakemake's patterns; with "${item.run}", DVC's foreach text.

The outputs of aggregate, records, figures, kernels and theorem are the registry's entries of that stage
(rethinking.analysis.outputs), with their captions for the Snakemake report and their DVC metrics flags.
No torch, pandas, seaborn or scipy here, nor in what this imports: every Snakemake start parses the rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..analysis import aggregate, figures, records  # noqa: F401  (their tables and figures: registry entries)
from ..analysis.aggregate import RUN_FILES
from ..analysis.jobs import Job
from ..analysis.outputs import check_inputs, entries, has_section5, inputs_of
from ..engine.examples import EXAMPLES
from ..files import write_text
from ..models import model_file
from ..plan import (
    CORRUPT_SOURCES,
    artifact_name,
    artifacts_of,
    base_artifact,
    corrupted_artifact,
    corruptions,
    dataset_id,
    dataset_ids,
    expand_runs,
    is_streamed,
    parse_artifact,
    runs_root,
)
from ..plan.packs import pack_name, plan_packs
from ..plan.settings import ENGINE_SOURCES, STREAM_ENGINE_SOURCES, launcher, run_settings, stream_settings
from ..section5 import stages as section5  # noqa: F401  (Section 5's tables and figures: registry entries)

PKG = "workflow/rethinking"  # the package's files, as the rules and dvc.yaml name them
SNAKEMAKE, DVC = "snakemake", "dvc"


@dataclass(frozen=True)
class Out:
    """An output file. `caption` (reStructuredText) and `category`: its place in the Snakemake report; `metrics`:
    a file DVC shows as metrics; `plot`: a file DVC draws ({"x": column, "y": column})."""

    path: str
    caption: str | None = None
    category: str | None = None
    metrics: bool = False
    plot: dict | None = field(default=None, compare=False)


@dataclass
class Plan:
    """A params file's grid, as the stages need it."""

    cfg: dict
    params: str  # the params file as the commands name it
    runs: list
    packs: list  # the training jobs' runs

    @cached_property
    def run_by_id(self) -> dict:
        return {r.id: r for r in self.runs}

    def path(self, *parts) -> str:
        return str(Path(self.cfg["results_dir"]).joinpath(*parts))


def plan(cfg: dict, params: str, runs=None, packs=None) -> Plan:
    """The plan of a config: its runs (default: the grid's) and the training jobs' runs (default: the packs of
    training.pack, one run each unless it packs; one run per job when streamed)."""
    check_inputs()  # an entry reading a table no entry writes: an error at every start, naming it
    runs = expand_runs(cfg) if runs is None else runs
    if packs is None:
        packs = [[r] for r in runs] if is_streamed(cfg) else plan_packs(cfg, runs)
    return Plan(cfg, str(params), runs, packs)


@dataclass(frozen=True)
class Stage:
    name: str
    code: Callable[[dict], tuple]  # files of the package (relative to it)
    outputs: Callable[[Plan, tuple], list]  # [Out]
    inputs: Callable[[Plan, tuple], dict] = lambda p, v: {}  # name -> [path]: what other stages made
    params: tuple[str, ...] = ()  # the params keys whose values it reads
    args: str = ""  # after `--params P`; per value with a wildcard
    wildcard: str | None = None  # one job per value ("corruption", "run")
    jobs: Callable[[Plan], list] = lambda p: [()]  # every job's values
    when: Callable[[dict], bool] | None = None  # the stage exists only where it holds
    tools: tuple[str, ...] = (SNAKEMAKE, DVC)
    command: str = ""  # the CLI command (default: the stage's name)
    launch: Callable[[dict], str] = lambda cfg: "python"
    settings: Callable | None = None  # (cfg, job's value) -> dict: a run's (a corruption's) own settings (Snakemake)

    def exists_for(self, cfg: dict, tool: str | None = None) -> bool:
        return (self.when is None or bool(self.when(cfg))) and (tool is None or tool in self.tools)

    def code_paths(self, cfg: dict) -> list[str]:
        return [f"{PKG}/{f}" for f in self.code(cfg)]

    def job_args(self, values: tuple = ()) -> str:
        """The command's arguments after `--params P`: `args` once per value of the wildcard (ids, or a
        placeholder: "{wildcards.run}", "${item.run}")."""
        return " ".join(self.args.format(**{self.wildcard: v}) for v in values) if self.wildcard else self.args

    def cmd(
        self, cfg: dict, params: str, values: tuple = (), *, args: str | None = None, launch: str | None = None
    ) -> str:
        """A job's shell command; `args` and `launch` put placeholders (a Snakemake rule's "{params.runs}",
        "{params.launch}") in place of the job's arguments and of the launcher."""
        return " ".join(
            filter(
                None,
                [
                    self.launch(cfg) if launch is None else launch,
                    "-m rethinking",
                    self.command or self.name,
                    f"--params {params}",
                    self.job_args(values) if args is None else args,
                ],
            )
        )

    def job_file(self, plan: Plan, values: tuple, folder: str, suffix: str) -> str:
        """A job's benchmark (folder "benchmarks") or log ("logs") file: <stage>, <stage>/<value>; a pack's
        benchmark <stage>_pack/<pack name>, its log <stage>/<pack name>."""
        if not self.wildcard:
            return plan.path(folder, self.name + suffix)
        if len(values) == 1:
            return plan.path(folder, self.name, values[0] + suffix)
        sub = f"{self.name}_pack" if folder == "benchmarks" else self.name
        return plan.path(folder, sub, pack_name([plan.run_by_id[v] for v in values]) + suffix)


# ----------------------------------------------------------------------------------------- the stages' pieces


def _registry_outputs(stage: str) -> Callable[[Plan, tuple], list]:
    """The registry's entries of `stage` (rethinking.analysis.outputs) as outputs: a table's files, a figure's
    PNG (in the report, when captioned) and PDF."""

    def outputs(plan: Plan, values: tuple = ()) -> list:
        out = []
        for e in entries(stage, plan.cfg):
            for i, path in enumerate(e.paths(plan.cfg)):
                shown = i == 0 and e.caption is not None
                out.append(
                    Out(str(path), e.caption if shown else None, e.category if shown else None, metrics=e.metrics)
                )
        return out

    return outputs


def _model_files(plan: Plan, runs) -> list[str]:
    """A user's model file is an input of exactly the runs of that model."""
    base = plan.cfg.get("_params_dir")
    return sorted({str(f) for r in runs if (f := model_file(r.model, base)) is not None})


def _concrete(values: tuple) -> bool:
    """A job's values, not a wildcard's placeholder ("{corruption}", "${item.corruption}")."""
    return bool(values) and "{" not in values[0] and "$" not in values[0]


def _prepare_inputs(plan: Plan, values: tuple) -> dict:
    """A training-set size's base artifact is cut from the params' dataset's (data/subsets.py)."""
    if _concrete(values) and values[0] != dataset_id(plan.cfg):
        return {"full": [str(base_artifact(plan.cfg))]}
    return {}


def _corrupt_inputs(plan: Plan, values: tuple) -> dict:
    """The base artifact, and the files the kind's draw reads (label_file's labels: its job only)."""
    if not _concrete(values):
        return {"base": [str(base_artifact(plan.cfg))]}
    dataset, c = parse_artifact(plan.cfg, values[0])
    inputs = {"base": [str(base_artifact(plan.cfg, dataset))]}
    if files := corruptions.input_files(plan.cfg, c.kind):
        inputs["labels"] = files
    return inputs


def _corrupt_settings(cfg: dict, name: str) -> dict:
    """A corrupt job's own options (Snakemake reruns the jobs whose kind's options changed)."""
    return corruptions.options_for(cfg, parse_artifact(cfg, name)[1].kind)


def _train_inputs(plan: Plan, values: tuple) -> dict:
    runs = [plan.run_by_id[v] for v in values]
    return {
        "data": sorted({str(corrupted_artifact(plan.cfg, r.corruption, r.dataset)) for r in runs}),
        "model": _model_files(plan, runs),
    }


PLOTS = {"epochs.csv": {"x": "step", "y": "test_acc"}, "steps.csv": {"x": "step", "y": "train_loss"}}


def _train_outputs(plan: Plan, values: tuple) -> list:
    """Every file of each run the job trains (aggregate reads them; the per-example record, examples.npz, too, but
    it is no declared input of aggregate, so that run folders made before it still aggregate); DVC draws the
    curves."""
    return [Out(f"{runs_root(plan.cfg)}/{v}/{f}", plot=PLOTS.get(f)) for v in values for f in (*RUN_FILES, EXAMPLES)]


def _final_outputs(plan: Plan, values: tuple = ()) -> dict:
    """The outputs of every stage before `jobs` but the data and training stages: jobs runs after them all."""
    done = [
        o.path
        for s in STAGES
        if s.name in ("aggregate", "records", "figures", "kernels", "theorem") and s.exists_for(plan.cfg, SNAKEMAKE)
        for o in s.outputs(plan, ())
    ]
    return {"done": done}


def _runs_and_base(plan: Plan, values: tuple = ()) -> dict:
    """What aggregate and records read: every run's files (RUN_FILES) and the base artifacts."""
    return {
        "runs": [f"{runs_root(plan.cfg)}/{r.id}/{f}" for r in plan.runs for f in RUN_FILES],
        "base": [str(base_artifact(plan.cfg, d)) for d in dataset_ids(plan.cfg)],
    }


def _grid_stamp(plan: Plan, values: tuple = ()) -> list:
    return [Out(str(grid_stamp(plan.cfg)))]


def grid_stamp(cfg: dict) -> Path:
    """The output of DVC's `check`: the grid's run ids."""
    return Path(cfg["results_dir"]) / "dvc-grid.txt"


def _not_streamed(cfg: dict) -> bool:
    return not is_streamed(cfg)


def _train_stage(**engine) -> Stage:
    """The train stage of one engine (`engine`: its args, when, code, settings and launcher)."""
    return Stage(
        "train",
        wildcard="run",
        params=("training", "preprocess"),
        inputs=_train_inputs,
        outputs=_train_outputs,
        jobs=lambda p: [tuple(r.id for r in pack) for pack in p.packs],
        **engine,
    )


OUTPUTS_CODE = ("analysis/outputs.py",)  # the registry and the runner of every table and figure

STAGES: tuple[Stage, ...] = (
    # DVC only: dvc.yaml against the params file, before any other stage (pipeline/dvcgen.py)
    Stage(
        "check",
        code=lambda cfg: (),
        command="dvc",
        args="--check",
        tools=(DVC,),
        outputs=_grid_stamp,
        inputs=lambda p, v: {"params": [p.params], "package": [PKG], "schema": ["workflow/schemas"]},
    ),
    # one job per dataset: the params' one, and each training-set size of the grid (train_sizes), cut from it
    Stage(
        "prepare",
        wildcard="dataset",
        args="--dataset {dataset}",
        params=("dataset", "preprocess"),
        code=lambda cfg: ("data/sources.py", "data/subsets.py") + (("data/stream.py",) if is_streamed(cfg) else ()),
        inputs=_prepare_inputs,
        outputs=lambda p, v: [Out(str(base_artifact(p.cfg, v[0])))],
        jobs=lambda p: [(d,) for d in dataset_ids(p.cfg)],
    ),
    # one job per corrupted artifact, named <dataset>/<corruption id> (its path under results/data)
    Stage(
        "corrupt",
        wildcard="corruption",
        args="--corruption {corruption}",
        code=lambda cfg: CORRUPT_SOURCES,
        params=("corruption_options",),
        inputs=_corrupt_inputs,
        outputs=lambda p, v: [Out(p.path("data", f"{v[0]}.npz"))],
        jobs=lambda p: [(artifact_name(*a),) for a in artifacts_of(p.runs)],
        settings=_corrupt_settings,
    ),
    # in-memory datasets: one job per run, or per pack of training.pack (rethinking.engine.pack)
    _train_stage(args="--run {run}", when=_not_streamed, code=lambda cfg: ENGINE_SOURCES, settings=run_settings),
    # streamed datasets (ImageNet): one job per run, through torchrun when a run takes several GPUs
    # (--run-id: torchrun would read --run as its own --run-path)
    _train_stage(
        args="--run-id {run}",
        when=is_streamed,
        code=lambda cfg: STREAM_ENGINE_SOURCES,
        settings=stream_settings,
        launch=launcher,
    ),
    Stage(
        "aggregate",
        params=("paper_tolerance",),
        code=lambda cfg: (
            *OUTPUTS_CODE,
            "analysis/aggregate.py",
            "analysis/paper.py",
            "analysis/stats.py",
            "analysis/capacity.py",
        ),
        inputs=_runs_and_base,
        outputs=_registry_outputs("aggregate"),
    ),
    # the per-example records (examples.npz) are not listed as inputs: run folders made before them have none,
    # and a finished run writes its record before summary.json, which is an input. Beside aggregate, not in it:
    # Snakemake runs the two side by side once the runs are done
    Stage(
        "records",
        params=("examples",),
        code=lambda cfg: (
            *OUTPUTS_CODE,
            "analysis/records.py",
            "analysis/aggregate.py",
            "analysis/stats.py",
            "analysis/scores.py",
            "analysis/examples.py",
            "analysis/example_figures.py",
            "analysis/plotting.py",
            "engine/examples.py",
        ),
        inputs=_runs_and_base,
        outputs=_registry_outputs("records"),
    ),
    Stage(
        "figures",
        code=lambda cfg: (*OUTPUTS_CODE, "analysis/figures.py", "analysis/plotting.py", "analysis/capacity.py"),
        inputs=lambda p, v: {"tables": [p.path("tables", f) for f in inputs_of("figures", p.cfg)]},
        outputs=_registry_outputs("figures"),
    ),
    # the corruption code draws kernel_noise.csv's noisy labels (the corrupted artifacts' own draw), preprocess.py
    # its inputs
    Stage(
        "kernels",
        params=("section5", "dataset", "preprocess"),
        when=has_section5,
        code=lambda cfg: (
            *OUTPUTS_CODE,
            "section5/stages.py",
            "analysis/plotting.py",
            "section5/kernels.py",
            "section5/implicit.py",
            "section5/random_features.py",
            *CORRUPT_SOURCES,
            "data/preprocess.py",
        ),
        inputs=lambda p, v: {"base": [str(base_artifact(p.cfg))]},
        outputs=_registry_outputs("kernels"),
    ),
    Stage(
        "theorem",
        params=("section5", "dataset"),
        when=has_section5,
        code=lambda cfg: (*OUTPUTS_CODE, "section5/stages.py", "analysis/plotting.py", "section5/theorem.py"),
        inputs=lambda p, v: {"base": [str(base_artifact(p.cfg))]},
        outputs=_registry_outputs("theorem"),
    ),
    # Snakemake only: time and memory of every job, from the benchmark files (docs/CHOICES.md)
    Stage(
        "jobs",
        code=lambda cfg: ("analysis/jobs.py",),
        tools=(SNAKEMAKE,),
        inputs=_final_outputs,
        outputs=lambda p, v: [Out(p.path("tables", "jobs.csv")), Out(p.path("tables", "jobs_detail.csv"))],
    ),
)


def stages_for(cfg: dict, tool: str | None = None) -> list[Stage]:
    """The stages that exist for a config (and a tool), in pipeline order."""
    return [s for s in STAGES if s.exists_for(cfg, tool)]


def stage(name: str, cfg: dict) -> Stage:
    """The declaration of stage `name` for a config (train: the in-memory or the streamed one)."""
    found = [s for s in STAGES if s.name == name and (s.when is None or s.when(cfg))]
    if not found:
        raise KeyError(f"stage {name!r}: none for this config (stages: {', '.join(s.name for s in stages_for(cfg))})")
    return found[0]


def expected_jobs(cfg: dict, packs=None) -> list[Job]:
    """Every job Snakemake runs for the grid, with the benchmark file its rule writes (rethinking.analysis.jobs
    reads them), `jobs` itself left out. `packs`: the training jobs' runs (default: Plan.packs)."""
    p = plan(cfg, "", packs=packs)
    out = []
    for s in stages_for(cfg, SNAKEMAKE):
        if s.name == "jobs":
            continue
        for values in s.jobs(p):
            name = (
                s.name if not values else values[0] if len(values) == 1 else pack_name([p.run_by_id[v] for v in values])
            )
            runs = tuple(runs_root(cfg) / v for v in values) if s.wildcard == "run" else ()
            out.append(Job(s.name, name, Path(s.job_file(p, values, "benchmarks", ".tsv")), runs))
    return out


def caption_file(out: Out, directory) -> str:
    """An output's caption as a .rst file in `directory` (Snakemake's report() takes a file), written where its
    text changed; its absolute path."""
    path = (Path(directory) / f"{Path(out.path).name}.rst").resolve()
    if not path.is_file() or path.read_text() != out.caption:
        write_text(path, out.caption)
    return str(path)
