"""Stages `kernels` and `theorem`: Section 5 and Theorem 1 of the paper on the grid's dataset.

kernels: base artifact -> tables/kernels.csv (min-norm Gaussian-kernel
interpolation per feature kind on raw pixels / 255, with and without the l2
term, the paper's number beside where it has one), tables/kernel_noise.csv
(the interpolant's test error against label corruption, fitted to the same
noisy training labels as the networks' corrupted artifacts and on the
networks' inputs: preprocess.crop center crop + per-image standardization;
columns inputs and crop say so), tables/implicit_bias.csv (SGD from zero
reaches the min-norm solution of an underdetermined least-squares problem;
from a random start it does not), and their figures.

theorem: base artifact -> tables/theorem.csv (the 2n + d weight network of
Theorem 1 on real images with random and true labels: exact fit, weight count,
condition number against n) and its figure.

The math lives in kernels.py, implicit.py and theorem.py; this module reads
params and writes outputs. On CUDA the kernels stage claims a GPU slot as a
training job does (kernel_device), and its Snakemake rule asks for one unit of
`gpu` (kernel_gpus).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..plan import base_artifact
from ..files import load_npz, read_meta, write_csv, write_json
from ..analysis.paper import is_cifar10, reference
from ..engine.run import claimed_device
from ..analysis.plotting import save_figure as _save

KERNEL_TABLES = ("kernels.csv", "kernel_noise.csv", "implicit_bias.csv")
KERNEL_FIGURES = ("kernel_noise", "implicit_bias")
THEOREM_TABLES = ("theorem.csv",)
THEOREM_FIGURES = ("theorem",)
KERNEL_METRICS, THEOREM_METRICS = "kernel_metrics.json", "theorem_metrics.json"   # dvc metrics, beside metrics.json
PAPER_ROWS = {("pixels", False): "gaussian_kernel_minnorm", ("random-conv", False): "random_conv_features_minnorm",
              ("random-conv", True): "random_conv_features_l2"}


def _dirs(cfg):
    root = Path(cfg["results_dir"])
    return root / "tables", root / "figures"


def _data(cfg):
    _, arrays = load_npz(base_artifact(cfg), rebuild_hint="`python -m rethinking prepare`")
    return arrays


def kernel_gpus(cfg: dict) -> int:
    """Units of Snakemake's `gpu` resource the kernels job asks for: 1 when section5.kernels.device is auto or
    cuda (whether a GPU exists is not known when the DAG is built), 0 for cpu or without section5, as
    train.smk's gpus_per_run() does for training.device. No torch here: the rules import this module."""
    kernels = (cfg.get("section5") or {}).get("kernels") or {}
    return 0 if not cfg.get("section5") or kernels.get("device", "auto") == "cpu" else 1


def kernel_device(cfg: dict, log=print):
    """The kernels stage's torch.device, from section5.kernels.device, inside a `with` block.

    auto is cuda when CUDA is available, else cpu; cuda without CUDA is an error. On CUDA the stage claims a
    GPU slot exactly as a training job does (rethinking.engine.run.claimed_device: slots.claim over
    torch.cuda.device_count() GPUs with training.jobs_per_gpu slots each, waiting while all are taken) and
    uses cuda:<slot.device>: beside `snakemake --resources gpu=N` training jobs it never shares a GPU slot
    with one. The slot is released when the block ends; the kernel drops it anyway when the process ends.
    """
    return claimed_device(cfg["section5"]["kernels"]["device"], jobs_per_gpu=cfg["training"]["jobs_per_gpu"],
                          key="section5.kernels.device", log=log, what="kernels")


def paper_value(meta: dict, features: str, ridge: float) -> float:
    """The paper's test error for this setting on CIFAR-10, NaN elsewhere."""
    if not is_cifar10(meta):
        return float("nan")
    ref = reference()
    name = PAPER_ROWS.get((features, ridge > 0))
    row = ref[(ref["table"] == "section5") & (ref["dataset"] == "cifar10") & (ref["model"] == name)]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def kernels_stage(cfg: dict) -> Path:
    k, imp = cfg["section5"]["kernels"], cfg["section5"]["implicit"]
    tables, figures = _dirs(cfg)
    data, meta = _data(cfg), read_meta(base_artifact(cfg))
    with kernel_device(cfg) as device:   # a GPU slot on CUDA, held until the stage ends (or dies)
        return _kernels(cfg, k, imp, tables, figures, data, meta, device)


def _kernels(cfg, k, imp, tables, figures, data, meta, device) -> Path:
    from .implicit import implicit_bias_experiment, plot_implicit
    from .kernels import kernel_label_noise, plot_kernel_noise, run_kernel

    common = dict(n_train=k["n_train"], n_test=k["n_test"], seed=cfg["dataset"]["seed"], n_filters=k["n_filters"],
                  pool=k["pool"], device=device)
    rows = []
    for features in k["features"]:
        for ridge in sorted({0.0, float(k["ridge"])}):
            r = run_kernel(data, features=features, gamma=k["gamma"].get(features), ridge=ridge, **common)
            r.pop("timings", None)
            r["paper_test_error"] = paper_value(meta, features, ridge)
            r["diff"] = r["test_error"] - r["paper_test_error"]
            rows.append(r)
    write_csv(tables / "kernels.csv", pd.DataFrame(rows))
    write_json(tables / KERNEL_METRICS, kernel_metrics(rows))

    # Fig. 1c's kernel curve: the networks' noisy labels (corrupt.training_labels, the corrupted artifacts' own
    # draw) on the networks' inputs (center crop + per-image standardization); gamma.pixels is a value for raw
    # pixels in [0, 1], so on these inputs gamma is the median heuristic.
    noise = kernel_label_noise(data, k["noise_levels"], features="pixels", gamma=None, inputs="network",
                               crop=cfg["preprocess"]["crop"], num_classes=len(meta["classes"]), **common)
    write_csv(tables / "kernel_noise.csv", noise)
    _save(plot_kernel_noise(noise), figures / "kernel_noise")

    bias = implicit_bias_experiment(data, n=imp["n"], features=imp["features"], steps=imp["steps"],
                                    seed=cfg["dataset"]["seed"])
    write_csv(tables / "implicit_bias.csv", bias)
    _save(plot_implicit(bias), figures / "implicit_bias")
    return tables


def theorem_stage(cfg: dict) -> Path:
    from .theorem import plot_theorem, theorem_sweep

    th = cfg["section5"]["theorem"]
    tables, figures = _dirs(cfg)
    data = _data(cfg)
    frame = pd.concat([theorem_sweep(data, th["ns"], labels=lab, seed=cfg["dataset"]["seed"]) for lab in th["labels"]],
                      ignore_index=True)
    write_csv(tables / "theorem.csv", frame)
    write_json(tables / THEOREM_METRICS, theorem_metrics(frame))
    _save(plot_theorem(frame), figures / "theorem")
    return tables


def kernel_metrics(rows: list[dict]) -> dict:
    """The interpolants' test error (percent) per feature kind, min-norm and with the l2 term: the headline
    numbers of Section 5 for `dvc metrics show` (kernels.csv has the rest)."""
    return {"kernel": {f"{r['features'].replace('-', '_')}{'_l2' if r['ridge'] > 0 else ''}_test_error":
                       round(float(r["test_error"]), 4) for r in rows}}


def theorem_metrics(frame: pd.DataFrame) -> dict:
    """Theorem 1's worst fitting error over every n, per kind of labels (0 up to rounding: the net fits)."""
    return {"theorem": {f"{labels}_labels_max_abs_error": float(g["max_abs_error"].max())
                        for labels, g in frame.groupby("labels", sort=True)}}
