rule prepare:
    output:
        stage_outputs("prepare"),
    params:
        file=PARAMS,
        settings=settings_json("prepare"),
    input:
        **stage_inputs("prepare"),
    benchmark:
        job_file("prepare", "benchmarks")
    log:
        job_file("prepare", "logs"),
    conda:
        "../envs/rethinking.yaml"
    shell:
        stage_shell("prepare")


rule corrupt:
    input:
        unpack(wildcard_inputs("corrupt")),
    output:
        stage_outputs("corrupt"),
    params:
        file=PARAMS,
    priority: lambda wc: CORRUPT_PRIORITY.get(wc.corruption, 0)
    benchmark:
        job_file("corrupt", "benchmarks")
    log:
        job_file("corrupt", "logs"),
    conda:
        "../envs/rethinking.yaml"
    shell:
        stage_shell("corrupt")
