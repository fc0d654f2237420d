from rethinking.analysis.aggregate import tables_for
from rethinking.analysis.figures import CODE as FIGURES_CODE
from rethinking.analysis.figures import INPUTS, figures_for


rule aggregate:
    input:
        runs=[f"{RESULTS}/runs/{r.id}/{f}" for r in RUNS for f in RUN_FILES],
        base=rc.base_artifact(CFG),
        code=[f"{PKG}/analysis/aggregate.py", f"{PKG}/analysis/paper.py"],
    output:
        [
            report(f"{RESULTS}/tables/{t}", caption=f"../report/{t.split('.')[0]}.rst", category="Tables")
            if t in ("table1.csv", "table2.csv", "paper_comparison.csv")
            else f"{RESULTS}/tables/{t}"
            for t in tables_for(CFG)
        ],
    params:
        file=PARAMS,
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking aggregate --params {params.file} > {log} 2>&1"


rule figures:
    input:
        tables=[f"{RESULTS}/tables/{t}" for t in INPUTS],
        kernel_curve=[f"{RESULTS}/tables/kernel_noise.csv"] if CFG.get("section5") else [],
        code=[f"{PKG}/{c}" for c in FIGURES_CODE],
    output:
        [
            report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures")
            for f in figures_for(CFG)
        ],
        [f"{RESULTS}/figures/{f}.pdf" for f in figures_for(CFG)],
    params:
        file=PARAMS,
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking figures --params {params.file} > {log} 2>&1"


# The last job: time and memory per stage from every job's benchmark file (rethinking.analysis.jobs). Its inputs are the
# final products (the outputs of aggregate, figures, kernels and theorem), so it runs after every other job and
# whenever one of them ran. The benchmark files are not inputs: one missing (results made before the rules had
# benchmarks, or a deleted file) would make Snakemake rerun the job that writes it, retraining a run; the command
# reads the files there are. A local job: under a cluster profile it reads a few files where snakemake runs.
localrules:
    jobs,


def final_outputs(wildcards):
    """Asked when the DAG is built: section5.smk, included after this file, defines kernels and theorem."""
    done = [*rules.aggregate.output, *rules.figures.output]
    if CFG.get("section5"):
        done += [*rules.kernels.output, *rules.theorem.output]
    return done


rule jobs:
    input:
        done=final_outputs,
        code=f"{PKG}/analysis/jobs.py",
    output:
        f"{RESULTS}/tables/jobs.csv",
        f"{RESULTS}/tables/jobs_detail.csv",
    params:
        file=PARAMS,
    benchmark:   # its own, written after its table (which does not hold it)
        f"{RESULTS}/benchmarks/jobs.tsv"
    log:
        f"{RESULTS}/logs/jobs.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking jobs --params {params.file} > {log} 2>&1"
