from rethinking.aggregate import tables_for
from rethinking.figures import CODE as FIGURES_CODE
from rethinking.figures import INPUTS, figures_for


rule aggregate:
    input:
        runs=[f"{RESULTS}/runs/{r.id}/{f}" for r in RUNS for f in RUN_FILES],
        base=rc.base_artifact(CFG),
        code=[f"{PKG}/aggregate.py", f"{PKG}/paper.py"],
    output:
        [
            report(f"{RESULTS}/tables/{t}", caption=f"../report/{t.split('.')[0]}.rst", category="Tables")
            if t in ("table1.csv", "table2.csv", "paper_comparison.csv")
            else f"{RESULTS}/tables/{t}"
            for t in tables_for(CFG)
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
        code=[f"{PKG}/{c}" for c in FIGURES_CODE],
    output:
        [
            report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Figures")
            for f in figures_for(CFG)
        ],
        [f"{RESULTS}/figures/{f}.pdf" for f in figures_for(CFG)],
    params:
        file=PARAMS,
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking figures --params {params.file} > {log} 2>&1"
