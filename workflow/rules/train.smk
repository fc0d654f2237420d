rule train:
    input:
        data=lambda wc: rc.corrupted_artifact(CFG, RUN_BY_ID[wc.run].corruption),
        code=[f"{PKG}/train.py", f"{PKG}/models.py", f"{PKG}/preprocess.py"],
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        epochs=f"{RESULTS}/runs/{{run}}/epochs.csv",
        steps=f"{RESULTS}/runs/{{run}}/steps.csv",
    params:
        file=PARAMS,
        settings=run_settings_json,
    threads: CFG["training"]["threads"]
    resources:
        gpu=gpus_per_run(),
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking train --params {params.file} --run {wildcards.run} > {log} 2>&1"
