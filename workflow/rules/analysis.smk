from rethinking.aggregate import TABLES
from rethinking.figures import FIGURES


rule aggregate:
    input:
        summaries=[f"{RESULTS}/runs/{r.id}/summary.json" for r in RUNS],
        steps=[f"{RESULTS}/runs/{r.id}/steps.csv" for r in RUNS],
        code=f"{PKG}/aggregate.py",
    output:
        [f"{RESULTS}/tables/{t}" for t in TABLES],
    log:
        f"{RESULTS}/logs/aggregate.log",
    shell:
        "python -m rethinking aggregate --params {PARAMS} > {log} 2>&1"


rule figures:
    input:
        convergence=f"{RESULTS}/tables/convergence.csv",
        curves=f"{RESULTS}/tables/loss_curves.csv",
        code=f"{PKG}/figures.py",
    output:
        [f"{RESULTS}/figures/{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")],
    log:
        f"{RESULTS}/logs/figures.log",
    shell:
        "python -m rethinking figures --params {PARAMS} > {log} 2>&1"
