# Shared helpers of the rule files: paths and settings come from the package.
import json
import re


wildcard_constraints:
    run="|".join(re.escape(r.id) for r in RUNS) or "no-runs",
    corruption="|".join(re.escape(c.id) for c in rc.corruptions_of(RUNS)) or "no-corruptions",


RUN_BY_ID = {r.id: r for r in RUNS}
PKG = "workflow/rethinking"


def settings_json(*keys):
    """Params that change a stage's result, so Snakemake reruns it when they change."""
    return json.dumps({k: CFG[k] for k in keys}, sort_keys=True)


def gpus_per_run():
    return 0 if CFG["training"]["device"] == "cpu" else 1
