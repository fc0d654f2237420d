# The randomization tests of Zhang et al. (ICLR 2017) as a Snakemake workflow.
#
#   snakemake --cores all                                   # the default experiment (params.yaml)
#   snakemake --cores all --configfile config/paper-cifar10.yaml --resources gpu=4
#   snakemake --workflow-profile workflow/profiles/slurm ...
#
# Thin on purpose: load and validate the params file, then include one rule
# file per stage. Every rule reads its stage's declaration (rethinking.pipeline.stages):
# one command of the package (python -m rethinking <stage>), the same command the DVC
# stage of the same name calls, with the same code, params, inputs and outputs.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

# this clone's package, before any installed copy (an editable install may point at another checkout): the
# Snakefile and the jobs it starts (python -m rethinking ...) import the code of the clone they run in
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_DIR, os.environ.get("PYTHONPATH")])))

from rethinking import plan as rc
from rethinking.plan.packs import check_models

min_version("9.0")


report: "workflow/report/workflow.rst"


# One source of truth: the params file named by --configfile (the last one
# given), else params.yaml. The package validates it and expands the grid.
if workflow.config_settings.config:
    raise WorkflowError(
        "--config overrides are not used: put the values in a copy of params.yaml " "and pass it with --configfile"
    )
PARAMS = str(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params.yaml"
# relative to the working directory where it lies below it (Snakemake gives an absolute path): a rule's params
# hold it, so a project folder moved or copied elsewhere would otherwise rerun every job
if Path(PARAMS).resolve().is_relative_to(Path.cwd().resolve()):
    PARAMS = str(Path(PARAMS).resolve().relative_to(Path.cwd().resolve()))
try:
    CFG = rc.load(PARAMS)
except rc.ConfigError as exc:
    raise WorkflowError(f"error: {exc}") from None
RUNS = rc.expand_runs(CFG)
RESULTS = CFG["results_dir"]
try:  # torchvision and user models are built once now, so a bad one stops the workflow before any job
    check_models(CFG, RUNS, PARAMS)
except rc.ConfigError as exc:
    raise WorkflowError(f"error: {exc}") from None


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in rc.dataset_ids(CFG)),
    corruption="|".join(re.escape(rc.artifact_name(*a)) for a in rc.artifacts_of(RUNS)) or "no-corruptions",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
# a streamed dataset (ImageNet) trains through torchrun, one run per job; in-memory ones through the engine
include: "workflow/rules/train_stream.smk" if rc.is_streamed(CFG) else "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"


if CFG.get("section5"):  # Section 5 and Theorem 1 (kernels, theorem) only where the params ask for them

    include: "workflow/rules/section5.smk"


onstart:
    # data paths are checked when jobs are about to run, so a dry run can list a grid whose data is elsewhere
    try:
        rc.check_data(CFG, PARAMS)
    except rc.ConfigError as exc:
        raise WorkflowError(f"error: {exc}") from None


rule all:
    default_target: True
    input:
        tables=rules.aggregate.output,
        figures=rules.figures.output,
        section5=[rules.kernels.output, rules.theorem.output] if CFG.get("section5") else [],
        jobs=rules.jobs.output,  # last: time and memory of every job (Snakemake-only; docs/CHOICES.md)
