from rethinking.section5.stages import kernel_gpus
from rethinking.plan.packs import SECTION5_PRIORITY

# The kernels stage on a GPU (section5.kernels.device auto or cuda; whether one exists is not known here) asks
# for one unit of `gpu`, as a training job does, and claims a GPU slot when it runs (section5.kernel_device):
# `--resources gpu=N` counts it among the N jobs on the GPUs.
# kernels needs only the base artifact and asks for 2 cores; it starts before every training job
# (plan.SECTION5_PRIORITY): with 2 cores it otherwise waited for both to be free, which happened only after the
# last training job, on the critical path. theorem (one core, seconds) keeps the default priority and fills a gap.
# Both exist only with section5 in the params (rule all asks for them then).


rule kernels:
    input:
        **stage_inputs("kernels"),
    output:
        stage_outputs("kernels"),
    log:
        job_file("kernels", "logs"),
    benchmark:
        job_file("kernels", "benchmarks")
    priority: SECTION5_PRIORITY
    conda:
        "../envs/rethinking.yaml"
    threads: 2
    resources:
        gpu=kernel_gpus(CFG),
    params:
        file=PARAMS,
        settings=settings_json("kernels"),
    shell:
        stage_shell("kernels")


rule theorem:
    input:
        **stage_inputs("theorem"),
    output:
        stage_outputs("theorem"),
    log:
        job_file("theorem", "logs"),
    benchmark:
        job_file("theorem", "benchmarks")
    conda:
        "../envs/rethinking.yaml"
    params:
        file=PARAMS,
        settings=settings_json("theorem"),
    shell:
        stage_shell("theorem")
