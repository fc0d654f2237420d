# aggregate, records and figures: their outputs are the registry's tables and figures (rethinking.analysis.outputs),
# with the captions the report shows; figures reads the tables its entries name. records (the per-example tables and
# figures) runs beside aggregate once the runs are done.


rule aggregate:
    input:
        **stage_inputs("aggregate"),
    output:
        stage_outputs("aggregate"),
    log:
        job_file("aggregate", "logs"),
    benchmark:
        job_file("aggregate", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
        settings=settings_json("aggregate"),
    shell:
        stage_shell("aggregate")


rule records:
    input:
        **stage_inputs("records"),
    output:
        stage_outputs("records"),
    log:
        job_file("records", "logs"),
    benchmark:
        job_file("records", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
        settings=settings_json("records"),
    shell:
        stage_shell("records")


rule figures:
    input:
        **stage_inputs("figures"),
    output:
        stage_outputs("figures"),
    log:
        job_file("figures", "logs"),
    benchmark:
        job_file("figures", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
    shell:
        stage_shell("figures")


# The last job: time and memory per stage from every job's benchmark file (rethinking.analysis.jobs). Its inputs are the
# final products (the outputs of aggregate, figures, kernels and theorem), so it runs after every other job and
# whenever one of them ran. The benchmark files are not inputs: one missing (results made before the rules had
# benchmarks, or a deleted file) would make Snakemake rerun the job that writes it, retraining a run; the command
# reads the files there are. A local job: under a cluster profile it reads a few files where snakemake runs.
localrules:
    jobs,


rule jobs:
    input:
        **stage_inputs("jobs"),
    output:
        stage_outputs("jobs"),
    log:
        job_file("jobs", "logs"),
    benchmark:  # its own, written after its table (which does not hold it)
        job_file("jobs", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
    shell:
        stage_shell("jobs")
