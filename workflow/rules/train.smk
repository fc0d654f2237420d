# One job per run, or, with training.pack > 1, one job per pack of runs that share a model and
# their training settings (rethinking.engine.pack); either way every run has its own folder and outputs.


rule train:
    input:
        unpack(wildcard_inputs("train")),
    output:
        stage_outputs("train"),
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
        job_file("train", "benchmarks")
    log:
        job_file("train", "logs"),
    conda:
        "../envs/rethinking.yaml"
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
        params:
            file=PARAMS,
            settings=pack_settings_json(pack),
            runs=stage("train", CFG).job_args([r.id for r in pack]),
        threads: CFG["training"]["threads"]
        priority: job_priority(CFG, pack)
        resources:
            gpu=gpus_per_run(),
        benchmark:
            job_file("train", "benchmarks", [r.id for r in pack])
        log:
            job_file("train", "logs", [r.id for r in pack]),
        conda:
            "../envs/rethinking.yaml"
        shell:
            stage_shell("train", (), args="{params.runs}")
