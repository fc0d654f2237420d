rule prepare:
    output:
        rc.base_artifact(CFG),
    params:
        file=PARAMS,
        settings=settings_json("dataset", "preprocess"),
    input:
        code=[f"{PKG}/data/sources.py", f"{PKG}/data/stream.py"] if rc.is_streamed(CFG) else f"{PKG}/data/sources.py",
    benchmark:
        f"{RESULTS}/benchmarks/prepare.tsv"
    log:
        f"{RESULTS}/logs/prepare.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking prepare --params {params.file} > {log} 2>&1"


rule corrupt:
    input:
        base=rc.base_artifact(CFG),
        code=[f"{PKG}/{f}" for f in rc.CORRUPT_SOURCES],
    output:
        f"{RESULTS}/data/{rc.dataset_id(CFG)}/{{corruption}}.npz",
    params:
        file=PARAMS,
    priority: lambda wc: CORRUPT_PRIORITY.get(wc.corruption, 0)
    benchmark:
        f"{RESULTS}/benchmarks/corrupt/{{corruption}}.tsv"
    log:
        f"{RESULTS}/logs/corrupt/{{corruption}}.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking corrupt --params {params.file} --corruption {wildcards.corruption} > {log} 2>&1"
