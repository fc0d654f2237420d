"""The standalone Section 5 / Theorem 1 commands and the stages on the tiny grid."""

import pandas as pd

from rethinking import plan as rc
from rethinking.data.sources import prepare
from rethinking.section5.stages import kernels_stage, paper_value, theorem_stage

from conftest import REPO, run_cli


def test_theorem_command_prints_weights_and_exact_fit(tmp_path):
    out = run_cli("theorem", "--dataset", "digits", "--n", "50", "--labels", "random", cwd=tmp_path, check=True).stdout
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert int(lines["weights"]) == 2 * 50 + 64
    assert float(lines["max_abs_error"]) < 1e-6


def test_kernels_command_prints_test_error_and_norm(tmp_path):
    out = run_cli(
        "kernels", "--dataset", "digits", "--n-train", "300", "--gamma", "0.02", cwd=tmp_path, check=True
    ).stdout
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert float(lines["train_error"]) == 0.0 and float(lines["test_error"]) < 10
    assert float(lines["norm"]) > 0 and int(lines["n_train"]) == 300


def test_stages_write_tables_and_figures(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    prepare(cfg)
    tables = kernels_stage(cfg)
    theorem_stage(cfg)
    k = pd.read_csv(tables / "kernels.csv")
    assert list(k["ridge"]) == [0.0, 0.01] and (k.loc[k["ridge"] == 0, "train_error"] == 0).all()
    noise = pd.read_csv(tables / "kernel_noise.csv")
    assert list(noise["level"]) == [0.0, 1.0] and noise["test_error"].iloc[1] > 60
    th = pd.read_csv(tables / "theorem.csv")
    assert (th["weights"] == 2 * th["n"] + th["d"]).all() and (th["max_abs_error"] < 1e-6).all()
    bias = pd.read_csv(tables / "implicit_bias.csv")
    assert set(bias["start"]) == {"zero", "random"}
    for f in ("kernel_noise", "implicit_bias", "random_features", "theorem"):
        assert (tmp_path / "results" / "figures" / f"{f}.png").stat().st_size > 1000


def test_paper_value_only_for_cifar10():
    cifar = {
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "shape": [3, 32, 32],
    }
    assert paper_value(cifar, "pixels", 0.0) == 46
    assert paper_value(cifar, "random-conv", 0.0) == 17 and paper_value(cifar, "random-conv", 0.1) == 15
    assert pd.isna(paper_value({"classes": ["0"], "shape": [1, 8, 8]}, "pixels", 0.0))
