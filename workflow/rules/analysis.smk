from rethinking.aggregate import TABLES
from rethinking.figures import FIGURES


rule aggregate:
    input:
        summaries=[f"{RESULTS}/runs/{r.id}/summary.json" for r in RUNS],
        steps=[f"{RESULTS}/runs/{r.id}/steps.csv" for r in RUNS],
        code=f"{PKG}/aggregate.py",
    output:
        [f"{RESULTS}/tables/{t}" for t in TABLES],
    params:
        file=PARAMS,
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking aggregate --params {params.file} > {log} 2>&1"


rule figures:
    input:
        convergence=f"{RESULTS}/tables/convergence.csv",
        curves=f"{RESULTS}/tables/loss_curves.csv",
        code=f"{PKG}/figures.py",
    output:
        [
            report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Figure 1")
            for f in FIGURES
        ],
        [f"{RESULTS}/figures/{f}.pdf" for f in FIGURES],
    params:
        file=PARAMS,
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking figures --params {params.file} > {log} 2>&1"
