# One job per run, or, with training.pack > 1, one job per pack of runs that share a model and
# their training settings (rethinking.engine.pack); either way every run has its own folder and outputs.


rule train:
    input:
        data=lambda wc: rc.corrupted_artifact(CFG, RUN_BY_ID[wc.run].corruption),
        code=ENGINE_CODE,
        model=lambda wc: model_code([RUN_BY_ID[wc.run]]),
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        epochs=f"{RESULTS}/runs/{{run}}/epochs.csv",
        steps=f"{RESULTS}/runs/{{run}}/steps.csv",
    wildcard_constraints:
        run="|".join(re.escape(p[0].id) for p in PACKS if len(p) == 1) or "no-single-runs",
    params:
        file=PARAMS,
        settings=run_settings_json,
    threads: CFG["training"]["threads"]
    priority: lambda wc: job_priority(CFG, [RUN_BY_ID[wc.run]])   # the longest runs first
    resources:
        gpu=gpus_per_run(),
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking train --params {params.file} --run {wildcards.run} > {log} 2>&1"


for number, pack in enumerate([p for p in PACKS if len(p) > 1], start=1):

    rule:
        name:
            f"train_pack_{number}"
        input:
            data=sorted({str(rc.corrupted_artifact(CFG, r.corruption)) for r in pack}),
            code=ENGINE_CODE,
            model=model_code(pack),
        output:
            [f"{RESULTS}/runs/{r.id}/{f}" for r in pack for f in RUN_FILES],
        params:
            file=PARAMS,
            settings=pack_settings_json(pack),
            runs=" ".join(f"--run {r.id}" for r in pack),
        threads: CFG["training"]["threads"]
        priority: job_priority(CFG, pack)
        resources:
            gpu=gpus_per_run(),
        benchmark:
            f"{RESULTS}/benchmarks/train_pack/{pack_name(pack)}.tsv"
        log:
            f"{RESULTS}/logs/train/{pack_name(pack)}.log",
        conda:
            "../envs/rethinking.yaml"
        shell:
            "python -m rethinking train --params {params.file} {params.runs} > {log} 2>&1"
