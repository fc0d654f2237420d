"""dvc.yaml, generated from a params file so DVC runs exactly the grid Snakemake runs.

DVC cannot expand the grid itself, so `python -m rethinking dvc` writes the
stages out: check -> prepare -> corrupt@<corruption> -> train@<run> ->
aggregate -> figures, each calling the same command as the Snakemake rule of
the same name. The first stage, `check`, compares dvc.yaml with what the params file gives;
when an edit of the params makes dvc.yaml stale, it stops `dvc repro` with the command that
refreshes it, before any other stage runs. It depends on what decides dvc.yaml's content: the
params file, the package and the schema (DVC does not let a stage depend on dvc.yaml itself), so a
complete `dvc repro` leaves `dvc status` clean. Its output, the grid's run ids, changes only with
the grid, so a params edit that keeps the grid reruns the check and nothing else on its account.

Every stage comes from its declaration (rethinking.pipeline.stages), as Snakemake's rules do: the same command,
code, params keys, inputs and outputs. What is DVC's own is here: foreach over a stage's jobs (a user's model
file gives its runs a stage of their own, `train_user_model`, since a foreach's dependencies are one list),
`check` and its stamp, metrics kept in DVC's cache, plots.

`aggregate` depends on the folder of all runs (DVC links it to every train stage whose outputs lie
in it; .dvcignore keeps checkpoints and lock files out of its hash) and on the grid's run ids,
rather than on three files of every run: one column in `dvc exp show` instead of 3 per run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..engine.metrics import metric_columns
from ..errors import ConfigError
from ..files import write_text
from ..plan import expand_runs, load, run_dir, runs_root
from ..plan.corruptions import corrupts_labels
from ..plan.packs import check_models
from .stages import DVC, Plan, Stage, grid_stamp, plan, stages_for

__all__ = ["generate", "write", "check", "stage_key", "grid_stamp"]

# a per-job input only some jobs have -> a foreach stage of their own: a user's model file (train_user_model),
# a label file (corrupt_label_file), the params' base artifact a training-set size is cut from (prepare_subset)
GROUPS = {"model": "user_model", "labels": "label_file", "full": "subset"}


def stage_key(run_id: str) -> str:
    """A DVC foreach key for a run id (DVC stage names cannot hold '/')."""
    return run_id.replace("/", "__")


def _outputs(outs) -> dict:
    """A stage's outputs as DVC lists them: outs (not cached: results/ is git-ignored and reproducible), metrics
    (cached: `dvc exp show` reads an experiment's metrics from the cache its dvc.lock points to; uncached,
    every experiment shows '!'), plots."""
    out = {"outs": [{o.path: {"cache": False}} for o in outs if not o.metrics and o.plot is None]}
    if any(o.metrics for o in outs):
        out["metrics"] = [{o.path: {"cache": True}} for o in outs if o.metrics]
    if any(o.plot for o in outs):
        out["plots"] = [{o.path: {**o.plot, "cache": False}} for o in outs if o.plot]
    return out


def _deps(p: Plan, s: Stage, inputs: dict) -> list[str]:
    """Inputs, then code. `runs` (every run's files) is the folder of all runs and the grid's ids (check's
    stamp); a stage with no input from another stage depends on the stamp, so `check` runs first."""
    stamp = str(grid_stamp(p.cfg))
    deps = [] if inputs or s.name == "check" else [stamp]
    for name, paths in inputs.items():
        deps += [stamp, str(runs_root(p.cfg))] if name == "runs" else list(paths)
    return deps + s.code_paths(p.cfg)


def _params_keys(p: Plan, s: Stage) -> list[str]:
    """The params keys a stage reads that the params file sets (DVC refuses a key the file lacks; one left to
    its default can only change by being written into the file, which makes dvc.yaml stale: `check`)."""
    written = yaml.safe_load(Path(p.params).read_text()) or {}
    return [k for k in s.params if k in written]


def _single(p: Plan, s: Stage, values: tuple = ()) -> dict:
    """A stage of one job (or one pack of runs)."""
    out = {"cmd": s.cmd(p.cfg, p.params, values), "deps": _deps(p, s, s.inputs(p, values))}
    if keys := _params_keys(p, s):
        out["params"] = [{p.params: keys}]
    return {**out, **_outputs(s.outputs(p, values))}


def _foreach(p: Plan, s: Stage, jobs: list) -> dict:
    """Stages of one job per value of the wildcard: foreach over the values, the inputs that differ between them
    as item fields; values with an input the others lack (a user's model file) in a stage of their own."""
    inputs = {v: s.inputs(p, (v,)) for (v,) in jobs}
    varying = {k for v in inputs for k, paths in inputs[v].items() if paths != inputs[jobs[0][0]].get(k)}
    groups: dict = {}
    for (v,) in jobs:
        extra = tuple(k for k in GROUPS if inputs[v].get(k))
        item = {s.wildcard: v, **{k: paths[0] for k, paths in inputs[v].items() if k in varying and paths}}
        groups.setdefault(extra, {})[stage_key(v)] = item
    stages = {}
    for extra, items in groups.items():
        first = inputs[next(iter(items.values()))[s.wildcard]]
        shown = {k: ([f"${{item.{k}}}"] if k in varying else paths) for k, paths in first.items() if paths}
        do = {"cmd": s.cmd(p.cfg, p.params, (f"${{item.{s.wildcard}}}",)), "deps": _deps(p, s, shown)}
        if keys := _params_keys(p, s):
            do["params"] = [{p.params: keys}]
        do.update(_outputs(s.outputs(p, (f"${{item.{s.wildcard}}}",))))
        stages["_".join([s.name, *(GROUPS[k] for k in extra)])] = {"foreach": items, "do": do}
    return stages


def _stages(p: Plan) -> dict:
    stages = {}
    for s in stages_for(p.cfg, DVC):
        if not s.wildcard:
            stages[s.name] = _single(p, s)
            continue
        jobs = s.jobs(p)
        single = [v for v in jobs if len(v) == 1]
        if single:
            stages.update(_foreach(p, s, single))
        for number, values in enumerate((v for v in jobs if len(v) > 1), start=1):
            stages[f"{s.name}_pack_{number}"] = _single(p, s, values)
    return stages


def generate(params_path: str) -> str:
    cfg = load(params_path)
    runs = expand_runs(cfg)
    check_models(cfg, runs, str(params_path))  # torchvision and user models, before dvc.yaml is written
    prm = str(params_path)
    header = (
        f"# Generated from {prm} by `python -m rethinking dvc --params {prm}`. Do not edit:\n"
        f"# edit {prm} and rerun that command (the stage `check` stops `dvc repro` when this is stale).\n"
    )
    plots = _memorization_plots(cfg, runs)
    return header + yaml.safe_dump(
        {"stages": _stages(plan(cfg, prm, runs)), **({"plots": plots} if plots else {})}, sort_keys=False, width=120
    )


def _memorization_plots(cfg: dict, runs) -> list:
    """Top-level `dvc plots`: per label-corrupted run (labels or pairflip at p > 0, random labels, a label file),
    its memorization curves,
    epochs.csv's columns of every registered per-epoch metric (rethinking.engine.metrics.metric_columns,
    percent) against steps."""
    return [
        {
            f"memorization_{stage_key(r.id)}": {
                "x": "step",
                "y": {str(run_dir(cfg, r) / "epochs.csv"): list(metric_columns())},
                "title": f"memorization: {r.id}",
                "x_label": "step",
                "y_label": "% of training examples",
            }
        }
        for r in runs
        if corrupts_labels(r.corruption.kind, r.corruption.level)
    ]


def write(params_path: str, output: str = "dvc.yaml") -> str:
    write_text(output, generate(params_path))
    return output


def check(params_path: str, output: str = "dvc.yaml") -> None:
    expected = generate(params_path)
    current = Path(output).read_text() if Path(output).is_file() else ""
    if current != expected:
        raise ConfigError(
            f"{output} is stale: it no longer matches {params_path}. Refresh it with\n"
            f"    python -m rethinking dvc --params {params_path} --output {output}\n"
            f"then run `dvc repro` again."
        )
    cfg = load(params_path)
    write_text(grid_stamp(cfg), "".join(f"{r.id}\n" for r in expand_runs(cfg)))
