# Streamed datasets (dataset.source: imagenet), in place of train.smk: one job per run, trained from images
# read while it trains (rethinking.engine.streamed). A run of training.gpus_per_run > 1 is that many processes,
# one per GPU, started by torchrun inside the job, which asks Snakemake for as many units of `gpu`.
from rethinking.plan.settings import STREAM_ENGINE_SOURCES, gpus_requested, launcher, stream_settings


def stream_settings_json(wildcards):
    """A run's own settings: an edit reruns only the runs it changes."""
    return json.dumps(stream_settings(CFG, RUN_BY_ID[wildcards.run]), sort_keys=True)


rule train:
    input:
        data=lambda wc: rc.corrupted_artifact(CFG, RUN_BY_ID[wc.run].corruption),
        code=[f"{PKG}/{f}" for f in STREAM_ENGINE_SOURCES],
        model=lambda wc: model_code([RUN_BY_ID[wc.run]]),
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        epochs=f"{RESULTS}/runs/{{run}}/epochs.csv",
        steps=f"{RESULTS}/runs/{{run}}/steps.csv",
    wildcard_constraints:
        run="|".join(re.escape(r.id) for r in RUNS),
    params:
        file=PARAMS,
        settings=stream_settings_json,
        launch=launcher(CFG),
    threads: CFG["training"]["gpus_per_run"] * (CFG["training"]["threads"] + CFG["training"]["workers"])
    priority: lambda wc: job_priority(CFG, [RUN_BY_ID[wc.run]])   # random labels before true labels
    resources:
        gpu=gpus_requested(CFG),
    benchmark:   # Snakemake measures the job's process tree: torchrun, every process and its loader workers
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        # --run-id: torchrun would read --run as its own --run-path
        "{params.launch} -m rethinking train --params {params.file} --run-id {wildcards.run} > {log} 2>&1"
