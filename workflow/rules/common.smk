# Shared helpers of the Snakemake files. Every rule reads its stage's declaration (rethinking.pipeline.stages,
# which dvc.yaml is generated from too): its command, code, params keys, inputs, outputs (with their report
# captions), benchmark and log files. What the rules add is Snakemake's own: wildcards, threads, resources,
# priorities.
import json

from rethinking.pipeline.stages import caption_file, plan, stage
from rethinking.plan.packs import corruption_priorities, job_priority

PLAN = plan(CFG, PARAMS, RUNS)  # with training.pack 1 (the default), one run per pack
RUN_BY_ID = PLAN.run_by_id
PACKS = PLAN.packs
CORRUPT_PRIORITY = corruption_priorities(CFG, PACKS)  # the longest runs' data first
CAPTIONS = ".snakemake/report-captions"  # the registry's captions as files, which report() takes


def _values(name, values, wildcard_as="{%s}"):
    """A job's values; for a rule of one job per wildcard value (values None), the wildcard itself."""
    s = stage(name, CFG)
    if values is None:
        return (wildcard_as % s.wildcard,) if s.wildcard else ()
    return tuple(values)


def stage_inputs(name, values=()):
    """A job's inputs by name, and the stage's code."""
    s = stage(name, CFG)
    return {**s.inputs(PLAN, tuple(values)), "code": s.code_paths(CFG)}


def wildcard_inputs(name):
    """Inputs read from a job's wildcards (`unpack` them), where a stage has one job per wildcard value."""
    wildcard = stage(name, CFG).wildcard
    return lambda wildcards: stage_inputs(name, (getattr(wildcards, wildcard),))


def stage_outputs(name, values=None):
    """A job's outputs (patterns of the wildcard when values is None); those with a caption in the report."""
    return [_in_report(o) for o in stage(name, CFG).outputs(PLAN, _values(name, values))]


def _in_report(out):
    """An output's path, marked for `snakemake --report` with its registry caption where it has one."""
    if not out.caption:
        return out.path
    return report(out.path, caption=caption_file(out, CAPTIONS), category=out.category)


def stage_shell(name, values=None, **placeholders):
    """A job's command, its output to its log."""
    return (
        stage(name, CFG).cmd(CFG, "{params.file}", _values(name, values, "{wildcards.%s}"), **placeholders)
        + " > {log} 2>&1"
    )


def job_file(name, folder, values=None):
    """A job's benchmark file (folder "benchmarks") or log ("logs")."""
    return stage(name, CFG).job_file(PLAN, _values(name, values), folder, ".tsv" if folder == "benchmarks" else ".log")


def settings_json(name):
    """The values of the params keys the stage reads, so Snakemake reruns it when they change."""
    return json.dumps({k: CFG[k] for k in stage(name, CFG).params}, sort_keys=True)


def run_settings_json(wildcards):
    """A run's own settings: an edit reruns only the runs it changes."""
    return json.dumps(stage("train", CFG).settings(CFG, RUN_BY_ID[wildcards.run]), sort_keys=True)


def corruption_settings_json(wildcards):
    """A corrupt job's kind's options (corruption_options): an edit reruns only that kind's artifacts."""
    return json.dumps(stage("corrupt", CFG).settings(CFG, wildcards.corruption), sort_keys=True)


def pack_settings_json(pack):
    """The settings of a pack's runs: an edit reruns the packs it changes."""
    return json.dumps([stage("train", CFG).settings(CFG, r) for r in pack], sort_keys=True)


def gpus_per_run():
    return 0 if CFG["training"]["device"] == "cpu" else 1
