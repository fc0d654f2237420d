rule train:
    input:
        data=lambda wc: rc.corrupted_artifact(CFG, RUN_BY_ID[wc.run].corruption),
        code=[f"{PKG}/train.py", f"{PKG}/models.py", f"{PKG}/preprocess.py"],
    output:
        summary=f"{RESULTS}/runs/{{run}}/summary.json",
        epochs=f"{RESULTS}/runs/{{run}}/epochs.csv",
        steps=f"{RESULTS}/runs/{{run}}/steps.csv",
    params:
        settings=lambda wc: json.dumps(rc_train.run_settings(CFG, RUN_BY_ID[wc.run]), sort_keys=True),
    threads: CFG["training"]["threads"]
    resources:
        gpu=gpus_per_run(),
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    shell:
        "python -m rethinking train --params {PARAMS} --run {wildcards.run} > {log} 2>&1"
