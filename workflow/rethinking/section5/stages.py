"""Stages `kernels` and `theorem`: Section 5 and Theorem 1 of the paper on the grid's dataset.

kernels: base artifact -> tables/kernels.csv (min-norm Gaussian-kernel
interpolation per feature kind on raw pixels / 255, with and without the l2
term, the paper's number beside where it has one), tables/kernel_noise.csv
(the interpolant's test error against label corruption, fitted to the same
noisy training labels as the networks' corrupted artifacts and on the
networks' inputs: preprocess.crop center crop + per-image standardization;
columns inputs and crop say so), tables/implicit_bias.csv (SGD from zero
reaches the min-norm solution of an underdetermined least-squares problem;
from a random start it does not), tables/random_features.csv (double descent of
min-norm least squares on random features against N / n, ridge beside it), and
their figures.

theorem: base artifact -> tables/theorem.csv (the 2n + d weight network of
Theorem 1 on real images with random and true labels: exact fit, weight count,
condition number against n) and its figure.

The math lives in kernels.py, implicit.py, random_features.py and theorem.py; this module reads
params and writes outputs. On CUDA the kernels stage claims a GPU slot as a
training job does (kernel_device), and its Snakemake rule asks for one unit of
`gpu` (kernel_gpus).

Each table and figure is one entry of the registry (rethinking.analysis.outputs), declared here beside the
function that makes it; a stage's command writes the entries of its stage, its Snakemake rule and DVC stage take
their outputs from them. pandas, torch and scipy are imported on first use: the rules import this module.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.outputs import figure, has_section5, produce, table
from ..analysis.paper import is_cifar10, reference
from ..engine.run import claimed_device
from ..files import load_npz, read_meta
from ..lazy import lazy_module
from ..plan import base_artifact

pd = lazy_module("pandas")

PAPER_ROWS = {
    ("pixels", False): "gaussian_kernel_minnorm",
    ("random-conv", False): "random_conv_features_minnorm",
    ("random-conv", True): "random_conv_features_l2",
}


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
    return claimed_device(
        cfg["section5"]["kernels"]["device"],
        jobs_per_gpu=cfg["training"]["jobs_per_gpu"],
        key="section5.kernels.device",
        log=log,
        what="kernels",
    )


def paper_value(meta: dict, features: str, ridge: float) -> float:
    """The paper's test error for this setting on CIFAR-10, NaN elsewhere."""
    if not is_cifar10(meta):
        return float("nan")
    ref = reference()
    name = PAPER_ROWS.get((features, ridge > 0))
    row = ref[(ref["table"] == "section5") & (ref["dataset"] == "cifar10") & (ref["model"] == name)]
    return float(row["value"].iloc[0]) if len(row) else float("nan")


def kernels_stage(cfg: dict) -> Path:
    """Every entry of the kernels stage, on the device of section5.kernels.device."""
    data, meta = _data(cfg), read_meta(base_artifact(cfg))
    with kernel_device(cfg) as device:  # a GPU slot on CUDA, held until the stage ends (or dies)
        produce("kernels", cfg, data=data, meta=meta, device=device)
    return Path(cfg["results_dir"]) / "tables"


def _common(cfg: dict, device) -> dict:
    k = cfg["section5"]["kernels"]
    return dict(
        n_train=k["n_train"],
        n_test=k["n_test"],
        seed=cfg["dataset"]["seed"],
        n_filters=k["n_filters"],
        pool=k["pool"],
        device=device,
    )


@table("kernels.csv", stage="kernels", when=has_section5)
def kernels_table(cfg: dict, data, meta: dict, device) -> pd.DataFrame:
    """Min-norm kernel interpolation per feature kind on raw pixels / 255, without and with the l2 term, the
    paper's number beside where it has one."""
    from .kernels import run_kernel

    k = cfg["section5"]["kernels"]
    rows = []
    for features in k["features"]:
        for ridge in sorted({0.0, float(k["ridge"])}):
            r = run_kernel(data, features=features, gamma=k["gamma"].get(features), ridge=ridge, **_common(cfg, device))
            r.pop("timings", None)
            r["paper_test_error"] = paper_value(meta, features, ridge)
            r["diff"] = r["test_error"] - r["paper_test_error"]
            rows.append(r)
    return pd.DataFrame(rows)


@table("kernel_metrics.json", stage="kernels", inputs=("kernels.csv",), when=has_section5, metrics=True)
def kernel_metrics_file(kernels: pd.DataFrame) -> dict:
    return kernel_metrics(kernels.to_dict("records"))


@table("kernel_noise.csv", stage="kernels", when=has_section5)
def kernel_noise_table(cfg: dict, data, meta: dict, device) -> pd.DataFrame:
    """Fig. 1c's kernel curve: the networks' noisy labels (corrupt.training_labels, the corrupted artifacts' own
    draw) on the networks' inputs (center crop + per-image standardization); gamma.pixels is a value for raw
    pixels in [0, 1], so on these inputs gamma is the median heuristic."""
    from .kernels import kernel_label_noise

    return kernel_label_noise(
        data,
        cfg["section5"]["kernels"]["noise_levels"],
        features="pixels",
        gamma=None,
        inputs="network",
        crop=cfg["preprocess"]["crop"],
        num_classes=len(meta["classes"]),
        **_common(cfg, device),
    )


@table("implicit_bias.csv", stage="kernels", when=has_section5)
def implicit_bias_table(cfg: dict, data) -> pd.DataFrame:
    from .implicit import implicit_bias_experiment

    imp = cfg["section5"]["implicit"]
    return implicit_bias_experiment(
        data, n=imp["n"], features=imp["features"], steps=imp["steps"], seed=cfg["dataset"]["seed"]
    )


@figure(
    "kernel_noise",
    stage="kernels",
    inputs=("kernel_noise.csv",),
    when=has_section5,
    caption="""\
Section 5, beyond the paper: test and training error of the minimum-norm
Gaussian-kernel interpolant (K a = Y) against label corruption, and the RKHS
norm of the solution. The interpolant fits every corrupted labeling (training
error 0) while its test error rises to chance, as the networks' do (Fig. 1c).
The paper reports the clean case only: 1.2% on MNIST pixels, 46% on CIFAR-10
pixels, 17% on random convolutional features (15% with an l2 term).
""",
)
def kernel_noise_figure(noise: pd.DataFrame):
    from .kernels import plot_kernel_noise

    return plot_kernel_noise(noise)


@figure(
    "implicit_bias",
    stage="kernels",
    inputs=("implicit_bias.csv",),
    when=has_section5,
    caption="""\
Section 5: SGD on an underdetermined least-squares problem (more features than
samples) started from zero stays in the span of the data and converges to the
minimum-norm solution X^+ y (distance to it falls to numerical zero); started
from a random point it converges to another interpolating solution whose
distance to X^+ y is the start's null-space component (dotted line).
""",
)
def implicit_bias_figure(bias: pd.DataFrame):
    from .implicit import plot_implicit

    return plot_implicit(bias)


@table("random_features.csv", stage="kernels", when=has_section5)
def random_features_table(cfg: dict, data, meta: dict) -> pd.DataFrame:
    """Double descent (Belkin et al. 2019): min-norm and ridge least squares on N random features of the kernels
    stage's inputs and noisy labels, per label-noise level and N / n."""
    from .random_features import random_features_curve

    rf = cfg["section5"]["random_features"]
    return random_features_curve(
        data,
        rf["ratios"],
        rf["noise_levels"],
        n=rf["n"],
        features=rf["features"],
        ridge=rf["ridge"],
        seed=rf["seed"],
        data_seed=cfg["dataset"]["seed"],
        n_test=cfg["section5"]["kernels"]["n_test"],
        num_classes=len(meta["classes"]),
    )


@table(
    "random_features_metrics.json",
    stage="kernels",
    inputs=("random_features.csv",),
    when=has_section5,
    metrics=True,
)
def random_features_metrics_file(frame: pd.DataFrame) -> dict:
    return random_features_metrics(frame)


@figure(
    "random_features",
    stage="kernels",
    inputs=("random_features.csv",),
    when=has_section5,
    caption="""\
Section 5, beyond the paper (Belkin et al., PNAS 2019): least squares on N
random features of n training images, against N / n (log axis), one colour per
label-noise level (the networks' noisy labels). Solid: the minimum-norm
solution (least squares below N = n, the minimum-norm interpolant above); its
test error peaks at the interpolation threshold N = n (dotted line), where the
norm of the solution (right) blows up, and falls again as N grows: double
descent. Dashed: ridge, whose curve has no peak.
""",
)
def random_features_figure(frame: pd.DataFrame):
    from .random_features import plot_random_features

    return plot_random_features(frame)


def theorem_stage(cfg: dict) -> Path:
    """Every entry of the theorem stage."""
    produce("theorem", cfg, data=_data(cfg))
    return Path(cfg["results_dir"]) / "tables"


@table("theorem.csv", stage="theorem", when=has_section5)
def theorem_table(cfg: dict, data) -> pd.DataFrame:
    """Theorem 1's network on real images, per kind of labels and n."""
    from .theorem import theorem_sweep

    th = cfg["section5"]["theorem"]
    return pd.concat(
        [theorem_sweep(data, th["ns"], labels=lab, seed=cfg["dataset"]["seed"]) for lab in th["labels"]],
        ignore_index=True,
    )


@table("theorem_metrics.json", stage="theorem", inputs=("theorem.csv",), when=has_section5, metrics=True)
def theorem_metrics_file(frame: pd.DataFrame) -> dict:
    return theorem_metrics(frame)


@figure(
    "theorem",
    stage="theorem",
    inputs=("theorem.csv",),
    when=has_section5,
    caption="""\
Theorem 1: a two-layer ReLU network with 2n + d weights,
c(x) = sum_j w_j max(<a, x> - b_j, 0), fits any labeling of n points. Built on
the training images with random and true labels: the maximum fitting error over
the n points (float64) and the condition number of the triangular system
against n; the conditioning grows fast with n, as the paper's construction
implies.
""",
)
def theorem_figure(frame: pd.DataFrame):
    from .theorem import plot_theorem

    return plot_theorem(frame)


def kernel_metrics(rows: list[dict]) -> dict:
    """The interpolants' test error (percent) per feature kind, min-norm and with the l2 term: the headline
    numbers of Section 5 for `dvc metrics show` (kernels.csv has the rest)."""
    return {
        "kernel": {
            f"{r['features'].replace('-', '_')}{'_l2' if r['ridge'] > 0 else ''}_test_error": round(
                float(r["test_error"]), 4
            )
            for r in rows
        }
    }


def theorem_metrics(frame: pd.DataFrame) -> dict:
    """Theorem 1's worst fitting error over every n, per kind of labels (0 up to rounding: the net fits)."""
    return {
        "theorem": {
            f"{labels}_labels_max_abs_error": float(g["max_abs_error"].max())
            for labels, g in frame.groupby("labels", sort=True)
        }
    }


def random_features_metrics(frame: pd.DataFrame) -> dict:
    """Per label-noise level and solver, the test error (percent) at N = n/4, n and 10n (the nearest ratios run):
    the double-descent peak for `dvc metrics show` (random_features.csv has the whole curve)."""
    from .random_features import peak_ratios

    out = {}
    for level in sorted(frame["level"].unique()):
        for solver in sorted(frame["solver"].unique()):
            p = peak_ratios(frame, level, solver)
            key = f"noise_{level:g}_{solver.replace('-', '_')}"
            out[key] = {"test_error_n_over_4": p["below"], "test_error_n": p["at_n"], "test_error_10n": p["above"]}
    return {"random_features": {k: {m: round(float(v), 4) for m, v in d.items()} for k, d in out.items()}}
