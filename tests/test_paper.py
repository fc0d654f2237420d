"""The paper's numbers beside ours (a tiny fake CIFAR-10 folder), variants, and Table 4's augmentation."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rethinking import plan as rc
from rethinking.analysis.aggregate import aggregate, ci95
from rethinking.analysis.figures import figures
from rethinking.analysis.paper import CIFAR10_CLASSES, compare, reference
from rethinking.data.corrupt import corrupt
from rethinking.data.preprocess import augmentations, prepare_batch, random_rotate
from rethinking.data.sources import prepare
from rethinking.engine.loop import train
from rethinking.plan.settings import run_settings

from conftest import make_image_folder


def test_reference_has_every_table1_cell():
    ref = reference()
    t1 = ref[(ref["table"] == "table1") & ref["metric"].isin(["train_acc", "test_acc"])]
    assert len(t1) == 38
    row = t1[
        (t1["model"] == "inception")
        & (t1["labels"] == "true")
        & (t1["random_crop"] == "no")
        & (t1["weight_decay"] == "no")
        & (t1["metric"] == "test_acc")
    ]
    assert float(row["value"].iloc[0]) == 85.75


def fake_cifar_cfg(tmp_path):
    root = make_image_folder(tmp_path / "cifar", size=(32, 32), classes=CIFAR10_CLASSES, n_train=2, n_test=1)
    raw = {
        "results_dir": str(tmp_path / "results"),
        "seeds": [0, 1],
        "dataset": {"source": "imagefolder", "root": str(root), "name": "fake-cifar"},
        "preprocess": {"crop": 28},
        "training": {"batch_size": 10, "max_epochs": 1, "log_every": 1, "device": "cpu"},
        "grid": [
            {"name": "t1", "models": ["mlp_1x512"], "corruptions": ["true_labels", "random_labels"]},
            {
                "name": "t4",
                "models": ["mlp_1x512"],
                "corruptions": ["random_labels"],
                "regularizers": ["wd"],
                "variant": "table4",
                "training": {"lr_decay": 0.999, "max_epochs": 2},
            },
        ],
    }
    return rc.validate(raw)


def test_paper_comparison_on_a_fake_cifar10_folder(tmp_path):
    cfg = fake_cifar_cfg(tmp_path)
    prepare(cfg)
    runs = rc.expand_runs(cfg)
    assert "fake-cifar/random-labels/mlp_1x512/wd_table4/seed1" in [r.id for r in runs]
    for c in rc.corruptions_of(runs):
        corrupt(cfg, c)
    for run in runs:
        train(cfg, run, log=lambda *_: None)
    out = aggregate(cfg)
    figures(cfg)
    comp = pd.read_csv(out / "paper_comparison.csv")
    mlp_true = comp[
        (comp["table"] == "table1")
        & (comp["model"] == "mlp_1x512")
        & (comp["labels"] == "true")
        & (comp["weight_decay"] == "no")
        & (comp["metric"] == "test_acc")
    ].iloc[0]
    # 20 training images are not the paper's 50,000: the cell says so instead of comparing
    assert mlp_true["paper"] == 50.51 and mlp_true["not_comparable"] == 2
    assert np.isnan(mlp_true["ours"]) and np.isnan(mlp_true["diff"])
    assert mlp_true["within_tolerance"] == "not comparable"
    assert mlp_true["reason"] == "n_train 20, the paper's 50,000; n_test 10, the paper's 10,000"
    t4 = comp[(comp["table"] == "table4") & (comp["model"] == "mlp_1x512") & (comp["weight_decay"] == "yes")].iloc[0]
    assert t4["paper"] == 99.21 and t4["not_comparable"] == 2 and t4["within_tolerance"] == "not comparable"
    # the variant's overrides reached its runs, and only them
    s = json.loads(
        (tmp_path / "results/runs/fake-cifar/random-labels/mlp_1x512/wd_table4/seed0/summary.json").read_text()
    )
    assert s["lr_decay"] == 0.999 and s["epochs"] == 2 and s["weight_decay"] == 5e-4
    assert comp[comp["model"] == "inception"]["within_tolerance"].eq("not run").all()
    assert "Tables 1 and 4" in (out / "paper_comparison.md").read_text()
    t1 = pd.read_csv(out / "table1.csv", keep_default_na=False)
    assert set(t1["variant"]) == {"", "table4"}
    assert (tmp_path / "results/figures/table4.png").stat().st_size > 1000


def test_compare_marks_out_of_tolerance():
    runs = pd.DataFrame(
        [
            {
                "corruption": "true-labels",
                "model": "alexnet",
                "regularizers": "none",
                "variant": "",
                "train_acc": 100.0,
                "test_acc": 70.0,
                "seed": 0,
                "status": "fitted",
                "n_train": 50000,
                "n_test": 10000,
                "input_shape": [3, 28, 28],
                "lr": 0.01,
                "momentum": 0.9,
                "lr_decay": 0.95,
                "lr_decay_images": None,
            }
        ]
    )
    comp = compare(runs, {"train_acc": 1.0, "test_acc": 3.0})
    test = comp[
        (comp["model"] == "alexnet")
        & (comp["labels"] == "true")
        & (comp["random_crop"] == "no")
        & (comp["weight_decay"] == "no")
        & (comp["metric"] == "test_acc")
    ].iloc[0]
    assert test["paper"] == 76.07 and test["diff"] == pytest.approx(70.0 - 76.07) and test["within_tolerance"] == "no"
    train_row = comp[
        (comp["model"] == "alexnet")
        & (comp["labels"] == "true")
        & (comp["random_crop"] == "no")
        & (comp["weight_decay"] == "no")
        & (comp["metric"] == "train_acc")
    ].iloc[0]
    assert train_row["within_tolerance"] == "yes"


def test_ci95_is_the_t_interval():
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert np.isnan(ci95([5.0]))


def test_variant_validation_and_identity():
    base = {
        "grid": [
            {
                "name": "a",
                "models": ["alexnet"],
                "corruptions": ["random_labels"],
                "regularizers": ["wd"],
                "variant": "slow",
                "training": {"lr_decay": 0.999},
            }
        ]
    }
    cfg = rc.validate(base)
    (run,) = rc.expand_runs(cfg)
    assert run.id == "digits/random-labels/alexnet/wd_slow/seed0" and rc.find_run(cfg, run.id) == run
    assert run_settings(cfg, run)["lr_decay"] == 0.999
    assert rc.training_for(cfg, rc.Run("digits", run.corruption, "alexnet", "wd", 0))["lr_decay"] == 0.95
    with pytest.raises(rc.ConfigError, match="go together"):
        rc.validate({"grid": [{"name": "a", "models": ["alexnet"], "corruptions": ["true_labels"], "variant": "x"}]})
    two = {"grid": [dict(base["grid"][0]), dict(base["grid"][0], name="b", training={"lr_decay": 0.99})]}
    with pytest.raises(rc.ConfigError, match="different"):
        rc.validate(two)
    with pytest.raises(rc.ConfigError, match="crop and augment are two random crops; keep one"):
        rc.validate(
            {
                "grid": [
                    {
                        "name": "a",
                        "models": ["alexnet"],
                        "corruptions": ["true_labels"],
                        "regularizers": ["crop+augment"],
                    }
                ]
            }
        )


def test_augment_is_crop_flip_and_rotation():
    assert augmentations({"crop", "wd"}) == {"crop"}
    assert augmentations({"augment"}) == {"crop", "flip", "rotate"}
    assert augmentations(set()) == frozenset()


def test_padcrop_is_a_window_of_the_padded_image_and_a_flip():
    """Nakkiran et al.'s (and the CIFAR ResNets') augmentation: a random 32x32 window of the image zero-padded by
    4 pixels, then a flip; each output is the image shifted by at most 4 pixels, mirrored or not."""
    assert augmentations({"padcrop", "wd"}) == {"padcrop", "flip"}
    x = (torch.rand(64, 3, 32, 32) * 254 + 1).to(torch.uint8)  # no zero pixel: the padding is recognizable
    g = torch.Generator().manual_seed(0)
    out = prepare_batch(x, None, frozenset({"padcrop"}), g)  # flip off: the window only
    assert out.shape == (64, 3, 32, 32)
    raw = torch.nn.functional.pad(x, (4, 4, 4, 4))
    shifts = set()
    for i in range(64):
        match = [
            (t, left)
            for t in range(9)
            for left in range(9)
            if torch.equal(prepare_batch(raw[i : i + 1, :, t : t + 32, left : left + 32], None), out[i : i + 1])
        ]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 20  # windows all over the padded image


def test_padcrop_cannot_join_another_random_crop():
    for regs in ("padcrop+crop", "augment-padcrop"):
        with pytest.raises(rc.ConfigError, match=r"are two random crops; keep one"):
            rc.validate(
                {"grid": [{"name": "a", "models": ["alexnet"], "corruptions": ["true_labels"], "regularizers": [regs]}]}
            )
    cfg = rc.validate(
        {"grid": [{"name": "a", "models": ["alexnet"], "corruptions": ["true_labels"], "regularizers": ["wd+padcrop"]}]}
    )
    assert [r.regularizers for r in rc.expand_runs(cfg)] == ["padcrop-wd"]


def test_rotation_invariants():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    same = random_rotate(x, 0.0, g)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    rot = random_rotate(x, 25.0, g)
    assert rot.shape == x.shape
    # the centre moves by at most a fraction of a pixel, the corners go dark for some angles
    torch.testing.assert_close(rot[:, :, 15:17, 15:17].mean(), x[:, :, 15:17, 15:17].mean(), atol=0.05, rtol=0)
    corner = torch.ones(1, 1, 32, 32)
    assert random_rotate(corner.repeat(64, 1, 1, 1), 25.0, g)[:, 0, 0, 0].min() < 0.5


def test_prepare_batch_with_augment_is_standardized_and_seeded():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = frozenset({"crop", "flip", "rotate"})
    a = prepare_batch(x, 28, aug, torch.Generator().manual_seed(1))
    b = prepare_batch(x, 28, aug, torch.Generator().manual_seed(1))
    assert a.shape == (8, 3, 28, 28)
    torch.testing.assert_close(a, b)
    flat = a.reshape(8, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(8), atol=1e-5, rtol=0)
