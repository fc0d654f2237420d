"""The kernel curve of Fig. 1c fits the networks' noisy labels, on the networks' inputs."""

import numpy as np
import pytest
import torch

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt, load_corrupted, training_labels
from rethinking.data.preprocess import prepare_all
from rethinking.data.sources import prepare
from rethinking.files import load_npz, read_meta
from rethinking.section5.kernels import _prepare, kernel_label_noise, make_features

from conftest import REPO


@pytest.mark.parametrize("level", [0.0, 0.2, 1.0])
def test_training_labels_equal_the_corrupted_artifacts(digits_cfg, level):
    c = rc.Corruption.make("labels", level)
    corrupt(digits_cfg, c)
    _, arrays = load_corrupted(digits_cfg, c)
    meta, base = load_npz(rc.base_artifact(digits_cfg))
    labels = training_labels(base["y_train"], level, len(meta["classes"]), digits_cfg["dataset"]["seed"])
    np.testing.assert_array_equal(labels, arrays["y_train"])


def test_kernel_curve_fits_the_artifacts_labels(digits_cfg):
    """Per level, the labels kernel_label_noise fits (on its n_train subset) are the artifact's."""
    cfg, levels, n_train = digits_cfg, [0.2, 0.6, 1.0], 500
    meta, base = read_meta(rc.base_artifact(digits_cfg)), load_npz(rc.base_artifact(digits_cfg))[1]
    seed = cfg["dataset"]["seed"]
    frame = kernel_label_noise(
        base,
        levels,
        gamma=None,
        n_train=n_train,
        seed=seed,
        inputs="network",
        crop=cfg["preprocess"]["crop"],
        num_classes=len(meta["classes"]),
    )
    *_, ytr, _, _, _, idx = _prepare(
        base, "pixels", 1.0, n_train, None, seed, 0, 2, None, "cpu", num_classes=len(meta["classes"])
    )
    for p, row in zip(levels, frame.itertuples()):
        c = rc.Corruption.make("labels", p)
        corrupt(cfg, c)
        y_art = load_corrupted(cfg, c)[1]["y_train"][idx]
        assert row.labels_changed == pytest.approx(np.mean(y_art != ytr))
        assert row.train_error == 0.0 and row.inputs == "network" and row.crop == cfg["preprocess"]["crop"]
    assert frame["test_error"].iloc[-1] > 60  # random labels: near chance


def test_network_inputs_are_the_networks_preprocessing(digits):
    ftr, fte = make_features(digits["x_train"][:40], digits["x_test"][:10], inputs="network", crop=7)
    assert ftr.shape == (40, 49) and fte.shape == (10, 49)
    expect = prepare_all(torch.from_numpy(digits["x_train"][:40]), 7).reshape(40, -1)
    assert torch.equal(ftr, expect)
    assert torch.allclose(ftr.mean(1), torch.zeros(40), atol=1e-5)  # per-image standardization
    with pytest.raises(ValueError):
        make_features(digits["x_train"][:4], digits["x_test"][:4], "random-conv", inputs="network", crop=7)


def test_stage_kernel_noise_uses_network_inputs_and_artifact_labels(tmp_path):
    import pandas as pd

    from rethinking.section5.stages import kernels_stage

    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    prepare(cfg)
    noise = pd.read_csv(kernels_stage(cfg) / "kernel_noise.csv")
    assert set(noise["inputs"]) == {"network"} and set(noise["crop"]) == {cfg["preprocess"]["crop"]}
    _, base = load_npz(rc.base_artifact(cfg))
    assert (noise["n_train"] == len(base["y_train"])).all()  # the whole split: compare with the artifact as is
    for p, changed in zip(noise["level"], noise["labels_changed"]):
        c = rc.Corruption.make("labels", p)
        corrupt(cfg, c)
        y_art = load_corrupted(cfg, c)[1]["y_train"]
        assert changed == pytest.approx(np.mean(y_art != base["y_train"]))
