from rethinking.aggregate import TABLES
from rethinking.figures import FIGURES, INPUTS


rule aggregate:
    input:
        runs=[f"{RESULTS}/runs/{r.id}/{f}" for r in RUNS for f in RUN_FILES],
        base=rc.base_artifact(CFG),
        code=[f"{PKG}/aggregate.py", f"{PKG}/paper.py"],
    output:
        [
            report(f"{RESULTS}/tables/{t}", caption=f"../report/{t.split('.')[0]}.rst", category="Tables")
            if t in ("table1.csv", "paper_comparison.csv")
            else f"{RESULTS}/tables/{t}"
            for t in TABLES
        ],
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
        tables=[f"{RESULTS}/tables/{t}" for t in INPUTS],
        kernel_curve=[f"{RESULTS}/tables/kernel_noise.csv"] if CFG.get("section5") else [],
        code=f"{PKG}/figures.py",
    output:
        [
            report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures")
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
