"""dvc.yaml, generated from a params file so DVC runs exactly the grid Snakemake runs.

DVC cannot expand the grid itself, so `python -m rethinking dvc` writes the
stages out: check -> prepare -> corrupt@<corruption> -> train@<run> ->
aggregate -> figures, each calling the same command as the Snakemake rule of
the same name. The first stage, `check`, compares dvc.yaml with what the params file gives;
when an edit of the params makes dvc.yaml stale, it stops `dvc repro` with the command that
refreshes it, before any other stage runs. It depends on what decides dvc.yaml's content: the
params file, the package and the schema (DVC does not let a stage depend on dvc.yaml itself), so a
complete `dvc repro` leaves `dvc status` clean. Its output, the grid's run ids, changes only with
the grid, so a params edit that keeps the grid reruns the check and nothing else on its account.

`aggregate` depends on the folder of all runs (DVC links it to every train stage whose outputs lie
in it; .dvcignore keeps checkpoints and lock files out of its hash) and on the grid's run ids,
rather than on three files of every run: one column in `dvc exp show` instead of 3 per run.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..analysis.aggregate import SPLIT_COLUMNS, tables_dir, tables_for
from ..errors import ConfigError
from ..plan import (CORRUPT_SOURCES, base_artifact, corrupted_artifact, corruptions_of, expand_runs, is_streamed, load,
                    run_dir, runs_root)
from ..analysis.figures import CODE as FIGURES_CODE
from ..analysis.figures import INPUTS, figures_dir, figures_for
from ..files import write_text
from ..models import model_file
from ..plan.settings import ENGINE_SOURCES, STREAM_ENGINE_SOURCES, train_command
from ..plan.packs import check_models, plan_packs

PKG = "workflow/rethinking"


def stage_key(run_id: str) -> str:
    """A DVC foreach key for a run id (DVC stage names cannot hold '/')."""
    return run_id.replace("/", "__")


def grid_stamp(cfg: dict) -> Path:
    return Path(cfg["results_dir"]) / "dvc-grid.txt"


def _out(path) -> dict:
    return {str(path): {"cache": False}}


def _metrics(path) -> dict:
    """A metrics file, kept in DVC's cache: results/ is git-ignored, and `dvc exp show` reads an
    experiment's metrics from the cache its dvc.lock points to (uncached, every experiment shows '!')."""
    return {str(path): {"cache": True}}


def _section5_stages(cfg: dict, prm: str) -> dict:
    """kernels and theorem, when the params ask for Section 5."""
    if not cfg.get("section5"):
        return {}
    from ..section5.stages import KERNEL_FIGURES, KERNEL_METRICS, KERNEL_TABLES, THEOREM_FIGURES, THEOREM_METRICS, THEOREM_TABLES

    def stage(name, code, tables, figures, metrics, params=("section5", "dataset")):
        return {
            "cmd": f"python -m rethinking {name} --params {prm}",
            "deps": [str(base_artifact(cfg)), f"{PKG}/section5/stages.py", f"{PKG}/analysis/plotting.py"]
            + [f"{PKG}/{c}" for c in code],
            "params": [{prm: list(params)}],
            "outs": [_out(tables_dir(cfg) / t) for t in tables]
            + [_out(figures_dir(cfg) / f"{f}.{ext}") for f in figures for ext in ("png", "pdf")],
            "metrics": [_metrics(tables_dir(cfg) / metrics)],
        }
    # kernels: the corrupt stage's code draws kernel_noise.csv's noisy labels, preprocess.py (and preprocess.crop)
    # its inputs
    return {"kernels": stage("kernels", ["section5/kernels.py", "section5/implicit.py", *CORRUPT_SOURCES, "data/preprocess.py"], KERNEL_TABLES,
                             KERNEL_FIGURES, KERNEL_METRICS, params=("section5", "dataset", "preprocess")),
            "theorem": stage("theorem", ["section5/theorem.py"], THEOREM_TABLES, THEOREM_FIGURES, THEOREM_METRICS)}


def _train_stages(cfg: dict, runs, prm: str) -> dict:
    """train@<run> for the runs trained alone; train_pack_<n> for each pack of training.pack."""
    packs = plan_packs(cfg, runs)
    code = [f"{PKG}/{f}" for f in ENGINE_SOURCES]
    cmd = f"python -m rethinking train --params {prm} --run ${{item.run}}"
    if is_streamed(cfg):   # one run per stage, through torchrun when it takes several GPUs
        code = [f"{PKG}/{f}" for f in STREAM_ENGINE_SOURCES]
        cmd = train_command(cfg, prm, "${item.run}")
    plots = lambda d: [{f"{d}/steps.csv": {"x": "step", "y": "train_loss", "cache": False}},  # noqa: E731
                       {f"{d}/epochs.csv": {"x": "step", "y": "test_acc", "cache": False}}]
    base = cfg.get("_params_dir")
    alone = [r for [r] in (p for p in packs if len(p) == 1)]
    stages = {}
    # runs of a user's model file depend on that file too (train_user_model): editing it reruns exactly them
    for name, group, extra in (("train", [r for r in alone if model_file(r.model, base) is None], []),
                               ("train_user_model", [r for r in alone if model_file(r.model, base) is not None],
                                ["${item.model}"])):
        if not group:
            continue
        items = {}
        for r in group:
            items[stage_key(r.id)] = {"run": r.id, "data": str(corrupted_artifact(cfg, r.corruption)),
                                      "dir": str(run_dir(cfg, r))}
            if extra:
                items[stage_key(r.id)]["model"] = str(model_file(r.model, base))
        stages[name] = {
            "foreach": items,
            "do": {
                "cmd": cmd,
                "deps": ["${item.data}", *extra, *code],
                "params": [{prm: ["training", "preprocess"]}],
                "outs": [{"${item.dir}/summary.json": {"cache": False}}],
                "plots": plots("${item.dir}"),
            },
        }
    for number, pack in enumerate((p for p in packs if len(p) > 1), start=1):
        stages[f"train_pack_{number}"] = {
            "cmd": f"python -m rethinking train --params {prm} " + " ".join(f"--run {r.id}" for r in pack),
            "deps": sorted({str(corrupted_artifact(cfg, r.corruption)) for r in pack})
            + sorted({str(f) for r in pack if (f := model_file(r.model, base)) is not None}) + code,
            "params": [{prm: ["training", "preprocess"]}],
            "outs": [_out(run_dir(cfg, r) / "summary.json") for r in pack],
            "plots": [p for r in pack for p in plots(run_dir(cfg, r))],
        }
    return stages


def generate(params_path: str) -> str:
    cfg = load(params_path)
    runs = expand_runs(cfg)
    check_models(cfg, runs, str(params_path))   # torchvision and user models, before dvc.yaml is written
    prm = str(params_path)
    stamp = grid_stamp(cfg)
    stages = {
        "check": {
            "cmd": f"python -m rethinking dvc --params {prm} --check",
            "deps": [prm, PKG, "workflow/schemas"],
            "outs": [_out(stamp)],
        },
        "prepare": {
            "cmd": f"python -m rethinking prepare --params {prm}",
            "deps": [str(stamp), f"{PKG}/data/sources.py"] + ([f"{PKG}/data/stream.py"] if is_streamed(cfg) else []),
            "params": [{prm: ["dataset", "preprocess"]}],
            "outs": [_out(base_artifact(cfg))],
        },
        "corrupt": {
            "foreach": {c.id: {"out": str(corrupted_artifact(cfg, c))} for c in corruptions_of(runs)},
            "do": {
                "cmd": f"python -m rethinking corrupt --params {prm} --corruption ${{key}}",
                "deps": [str(base_artifact(cfg))] + [f"{PKG}/{f}" for f in CORRUPT_SOURCES],
                "outs": [{"${item.out}": {"cache": False}}],
            },
        },
        **_train_stages(cfg, runs, prm),
        "aggregate": {
            "cmd": f"python -m rethinking aggregate --params {prm}",
            "deps": [str(stamp), str(runs_root(cfg)), str(base_artifact(cfg)), f"{PKG}/analysis/aggregate.py",
                     f"{PKG}/analysis/paper.py"],
            "outs": [_out(tables_dir(cfg) / t) for t in tables_for(cfg) if t != "metrics.json"],
            "metrics": [_metrics(tables_dir(cfg) / "metrics.json")],
        },
        **_section5_stages(cfg, prm),
        "figures": {
            "cmd": f"python -m rethinking figures --params {prm}",
            "deps": [str(tables_dir(cfg) / t) for t in INPUTS] + [f"{PKG}/{c}" for c in FIGURES_CODE]
            + ([str(tables_dir(cfg) / "kernel_noise.csv")] if cfg.get("section5") else []),
            "outs": [_out(figures_dir(cfg) / f"{f}.{ext}") for f in figures_for(cfg) for ext in ("png", "pdf")],
        },
    }
    header = (f"# Generated from {prm} by `python -m rethinking dvc --params {prm}`. Do not edit:\n"
              f"# edit {prm} and rerun that command (the stage `check` stops `dvc repro` when this is stale).\n")
    plots = _memorization_plots(cfg, runs)
    return header + yaml.safe_dump({"stages": stages, **({"plots": plots} if plots else {})}, sort_keys=False,
                                   width=120)


def _memorization_plots(cfg: dict, runs) -> list:
    """Top-level `dvc plots`: per label-corrupted run (labels at p > 0, random labels), its memorization curves,
    epochs.csv's split of the training set (aggregate.SPLIT_COLUMNS, percent) against steps."""
    return [{f"memorization_{stage_key(r.id)}": {
        "x": "step", "y": {str(run_dir(cfg, r) / "epochs.csv"): list(SPLIT_COLUMNS)},
        "title": f"memorization: {r.id}", "x_label": "step", "y_label": "% of training examples"}}
        for r in runs if (r.corruption.label_level or 0) > 0]


def write(params_path: str, output: str = "dvc.yaml") -> str:
    write_text(output, generate(params_path))
    return output


def check(params_path: str, output: str = "dvc.yaml") -> None:
    expected = generate(params_path)
    current = Path(output).read_text() if Path(output).is_file() else ""
    if current != expected:
        raise ConfigError(
            f"{output} is stale: it no longer matches {params_path}. Refresh it with\n"
            f"    python -m rethinking dvc --params {params_path} --output {output}\n"
            f"then run `dvc repro` again.")
    cfg = load(params_path)
    write_text(grid_stamp(cfg), "".join(f"{r.id}\n" for r in expand_runs(cfg)))
