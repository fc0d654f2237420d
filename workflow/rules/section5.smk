from rethinking.section5.stages import (KERNEL_FIGURES, KERNEL_METRICS, KERNEL_TABLES, THEOREM_FIGURES, THEOREM_METRICS,
                                 THEOREM_TABLES, kernel_gpus)
from rethinking.plan.packs import SECTION5_PRIORITY


# The kernels stage on a GPU (section5.kernels.device auto or cuda; whether one exists is not known here) asks
# for one unit of `gpu`, as a training job does, and claims a GPU slot when it runs (section5.kernel_device):
# `--resources gpu=N` counts it among the N jobs on the GPUs.
# kernels needs only the base artifact and asks for 2 cores; it starts before every training job
# (plan.SECTION5_PRIORITY): with 2 cores it otherwise waited for both to be free, which happened only after the
# last training job, on the critical path. theorem (one core, seconds) keeps the default priority and fills a gap.


rule kernels:
    input:
        base=rc.base_artifact(CFG),
        # the corrupt stage's code (CORRUPT_SOURCES) draws the noisy labels of kernel_noise.csv (the corrupted
        # artifacts' own draw), preprocess.py its inputs (the networks' crop + standardization)
        code=[f"{PKG}/section5/stages.py", f"{PKG}/analysis/plotting.py", f"{PKG}/section5/kernels.py",
              f"{PKG}/section5/implicit.py", *(f"{PKG}/{f}" for f in rc.CORRUPT_SOURCES), f"{PKG}/data/preprocess.py"],
    output:
        [f"{RESULTS}/tables/{t}" for t in KERNEL_TABLES + (KERNEL_METRICS,)],
        [
            report(f"{RESULTS}/figures/{f}.png", caption=f"../report/{f}.rst", category="Section 5")
            for f in KERNEL_FIGURES
        ],
        [f"{RESULTS}/figures/{f}.pdf" for f in KERNEL_FIGURES],
    params:
        file=PARAMS,
        settings=settings_json("section5", "dataset", "preprocess"),
    threads: 2
    priority: SECTION5_PRIORITY
    resources:
        gpu=kernel_gpus(CFG),
    benchmark:
        f"{RESULTS}/benchmarks/kernels.tsv"
    log:
        f"{RESULTS}/logs/kernels.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking kernels --params {params.file} > {log} 2>&1"


rule theorem:
    input:
        base=rc.base_artifact(CFG),
        code=[f"{PKG}/section5/stages.py", f"{PKG}/analysis/plotting.py", f"{PKG}/section5/theorem.py"],
    output:
        [f"{RESULTS}/tables/{t}" for t in THEOREM_TABLES + (THEOREM_METRICS,)],
        report(f"{RESULTS}/figures/theorem.png", caption="../report/theorem.rst", category="Section 5"),
        f"{RESULTS}/figures/theorem.pdf",
    params:
        file=PARAMS,
        settings=settings_json("section5", "dataset"),
    benchmark:
        f"{RESULTS}/benchmarks/theorem.tsv"
    log:
        f"{RESULTS}/logs/theorem.log",
    conda:
        "../envs/rethinking.yaml"
    shell:
        "python -m rethinking theorem --params {params.file} > {log} 2>&1"
