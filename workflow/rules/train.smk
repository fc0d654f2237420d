# One job per run, or, with training.pack > 1, one job per pack of runs that share a model and
# their training settings (rethinking.engine.pack); either way every run has its own folder and outputs.


rule train:
    input:
        unpack(wildcard_inputs("train")),
    output:
        stage_outputs("train"),
    log:
        job_file("train", "logs"),
    benchmark:
        job_file("train", "benchmarks")
    wildcard_constraints:
        run="|".join(re.escape(p[0].id) for p in PACKS if len(p) == 1) or "no-single-runs",
    priority: lambda wc: job_priority(CFG, [RUN_BY_ID[wc.run]])  # the longest runs first
    conda:
        "../envs/rethinking.yaml"
    threads: CFG["training"]["threads"]
    resources:
        gpu=gpus_per_run(),
    params:
        file=PARAMS,
        settings=run_settings_json,
    shell:
        stage_shell("train")


for number, pack in enumerate([p for p in PACKS if len(p) > 1], start=1):

    rule:
        name:
            f"train_pack_{number}"
        input:
            **stage_inputs("train", [r.id for r in pack]),
        output:
            stage_outputs("train", [r.id for r in pack]),
        log:
            job_file("train", "logs", [r.id for r in pack]),
        benchmark:
            job_file("train", "benchmarks", [r.id for r in pack])
        priority: job_priority(CFG, pack)
        conda:
            "../envs/rethinking.yaml"
        threads: CFG["training"]["threads"]
        resources:
            gpu=gpus_per_run(),
        params:
            file=PARAMS,
            settings=pack_settings_json(pack),
            runs=stage("train", CFG).job_args([r.id for r in pack]),
        shell:
            stage_shell("train", (), args="{params.runs}")
