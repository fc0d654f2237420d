rule prepare:
    input:
        unpack(wildcard_inputs("prepare")),
    output:
        stage_outputs("prepare"),
    log:
        job_file("prepare", "logs"),
    benchmark:
        job_file("prepare", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
        settings=settings_json("prepare"),
    shell:
        stage_shell("prepare")


rule corrupt:
    input:
        unpack(wildcard_inputs("corrupt")),
    output:
        stage_outputs("corrupt"),
    log:
        job_file("corrupt", "logs"),
    benchmark:
        job_file("corrupt", "benchmarks")
    priority: lambda wc: CORRUPT_PRIORITY.get(wc.corruption, 0)
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
        settings=corruption_settings_json,
    shell:
        stage_shell("corrupt")
