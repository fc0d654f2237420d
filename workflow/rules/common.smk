# Shared helpers of the Snakemake files; paths and settings come from the package.
import json

from rethinking.train import run_settings


RUN_BY_ID = {r.id: r for r in RUNS}
PKG = "workflow/rethinking"


def settings_json(*keys):
    """Params that change a stage's result, so Snakemake reruns it when they change."""
    return json.dumps({k: CFG[k] for k in keys}, sort_keys=True)


def gpus_per_run():
    return 0 if CFG["training"]["device"] == "cpu" else 1


def run_settings_json(wildcards):
    """A run's own settings: an edit reruns only the runs it changes."""
    return json.dumps(run_settings(CFG, RUN_BY_ID[wildcards.run]), sort_keys=True)
