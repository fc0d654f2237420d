rule prepare:
    output:
        rc.base_artifact(CFG),
    params:
        settings=settings_json("dataset", "preprocess"),
    input:
        code=f"{PKG}/data.py",
    log:
        f"{RESULTS}/logs/prepare.log",
    shell:
        "python -m rethinking prepare --params {PARAMS} > {log} 2>&1"


rule corrupt:
    input:
        base=rc.base_artifact(CFG),
        code=f"{PKG}/corrupt.py",
    output:
        f"{RESULTS}/data/{rc.dataset_id(CFG)}/{{corruption}}.npz",
    log:
        f"{RESULTS}/logs/corrupt/{{corruption}}.log",
    shell:
        "python -m rethinking corrupt --params {PARAMS} --corruption {wildcards.corruption} > {log} 2>&1"
