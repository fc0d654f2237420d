# Shared helpers of the Snakemake files; paths and settings come from the package.
import json

from rethinking.analysis.aggregate import RUN_FILES
from rethinking.models import model_file
from rethinking.plan.packs import corruption_priorities, job_priority, pack_name, plan_packs
from rethinking.plan.settings import ENGINE_SOURCES, run_settings


RUN_BY_ID = {r.id: r for r in RUNS}
PACKS = plan_packs(CFG, RUNS)  # with training.pack 1 (the default), one run per pack
CORRUPT_PRIORITY = corruption_priorities(CFG, PACKS)  # the longest runs' data first
PKG = "workflow/rethinking"
ENGINE_CODE = [f"{PKG}/{f}" for f in ENGINE_SOURCES]


def model_code(runs):
    """A user's model file is an input of exactly the runs of that model (none for other models)."""
    return sorted({str(f) for r in runs if (f := model_file(r.model, CFG["_params_dir"])) is not None})


def settings_json(*keys):
    """Params that change a stage's result, so Snakemake reruns it when they change."""
    return json.dumps({k: CFG[k] for k in keys}, sort_keys=True)


def gpus_per_run():
    return 0 if CFG["training"]["device"] == "cpu" else 1


def run_settings_json(wildcards):
    """A run's own settings: an edit reruns only the runs it changes."""
    return json.dumps(run_settings(CFG, RUN_BY_ID[wildcards.run]), sort_keys=True)


def pack_settings_json(pack):
    """The settings of a pack's runs: an edit reruns the packs it changes."""
    return json.dumps([run_settings(CFG, r) for r in pack], sort_keys=True)
