# Streamed datasets (dataset.source: imagenet), in place of train.smk: one job per run, trained from images
# read while it trains (rethinking.engine.streamed). A run of training.gpus_per_run > 1 is that many processes,
# one per GPU, started by torchrun inside the job, which asks Snakemake for as many units of `gpu`.
from rethinking.plan.settings import gpus_requested


rule train:
    input:
        unpack(wildcard_inputs("train")),
    output:
        stage_outputs("train"),
    log:
        job_file("train", "logs"),
    benchmark:  # Snakemake measures the job's process tree: torchrun, every process and its loader workers
        job_file("train", "benchmarks")
    wildcard_constraints:
        run="|".join(re.escape(r.id) for r in RUNS),
    priority: lambda wc: job_priority(CFG, [RUN_BY_ID[wc.run]])  # random labels before true labels
    conda:
        "../envs/rethinking.yaml"
    threads: CFG["training"]["gpus_per_run"] * (CFG["training"]["threads"] + CFG["training"]["workers"])
    resources:
        gpu=gpus_requested(CFG),
    params:
        file=PARAMS,
        settings=run_settings_json,
        launch=stage("train", CFG).launch(CFG),
    shell:
        stage_shell("train", launch="{params.launch}")
