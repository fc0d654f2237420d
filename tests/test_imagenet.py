"""ImageNet-style streamed trees: the index, label files, the loader, Inception V3, resuming, torchrun, the pipeline.

Everything runs on a tree of a few dozen small JPEGs of varying sizes that the tests write (four classes, a
grayscale and a CMYK file among them, as ImageNet has), with Inception V3 at its minimum input of 75x75.
"""

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from rethinking import plan as rc
from rethinking.data import stream
from rethinking.data.corrupt import corrupt
from rethinking.engine import streamed as ts
from rethinking.files import load_npz
from rethinking.plan.settings import train_command

from conftest import REPO, check_record, clone_project, reference_record

CLASSES = ("n01", "n02", "n03", "n04")


def make_jpeg_tree(root, n_train=6, n_val=2, seed=0):
    """train/<class>/*.JPEG and val/<class>/*.JPEG: blobs of a class colour on noise, sizes 64-120 px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(64, 121, size=2))
                colour = np.array([60 * k % 256, 255 - 50 * k, 40 + 60 * k]) % 256
                arr = np.clip(colour + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr)
                if split == "train" and i == 0 and k == 1:
                    im = im.convert("L")  # grayscale JPEG
                if split == "train" and i == 0 and k == 2:
                    im = im.convert("CMYK")  # CMYK JPEG
                im.save(d / f"{c}_{i:04d}.JPEG", format="JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_jpeg_tree(tmp_path_factory.mktemp("imagenet") / "tree")


def params(tmp_path, tree, results="results", **training):
    t = {
        "batch_size": 8,
        "max_epochs": 1,
        "log_every": 1,
        "eval_batch_size": 16,
        "device": "cpu",
        "image_size": 75,
        "workers": 0,
        **training,
    }
    cfg = {
        "results_dir": str(tmp_path / results),
        "dataset": {"source": "imagenet", "root": str(tree)},
        "training": t,
        "grid": [{"name": "t2", "models": ["inception_v3"], "corruptions": ["true_labels", "random_labels"]}],
    }
    path = tmp_path / f"{results}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def prepared(path, *corruptions):
    """The config of a params file, its index and label files written (as the stages prepare and corrupt do)."""
    cfg = rc.load(path)
    stream.prepare_index(cfg)
    for c in corruptions:
        corrupt(cfg, rc.Corruption.parse(c))
    return cfg


# ----------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "change, needles",
    [
        (
            {"grid": [{"name": "a", "models": ["inception_v3"], "corruptions": ["true_labels", "gaussian"]}]},
            ["grid[0].corruptions[1]", "'gaussian'", "label corruptions only"],
        ),
        (
            {
                "grid": [
                    {
                        "name": "a",
                        "models": ["inception_v3"],
                        "corruptions": ["true_labels"],
                        "regularizers": ["augment"],
                    }
                ]
            },
            ["grid[0].regularizers", "use 'crop'"],
        ),
        ({"training": {"batch_size": 10, "gpus_per_run": 4}}, ["training.batch_size", "multiple"]),
        ({"training": {"image_size": 64}}, ["training.image_size", "inception_v3", "75"]),
        ({"training": {"pack": 2}}, ["training.pack"]),
        ({"preprocess": {"crop": 28}}, ["preprocess.crop"]),
    ],
)
def test_streamed_configs_refuse_what_needs_images_in_memory(change, needles):
    raw = {
        "dataset": {"source": "imagenet", "root": "x"},
        "grid": [{"name": "a", "models": ["inception_v3"], "corruptions": ["true_labels"]}],
    }
    raw.update(change)
    with pytest.raises(rc.ConfigError) as exc:
        rc.validate(raw, "p.yaml")
    for needle in needles:
        assert needle in str(exc.value)


def test_inception_v3_only_on_streamed_sources():
    raw = {"grid": [{"name": "a", "models": ["mlp_1x512", "inception_v3"], "corruptions": ["true_labels"]}]}
    with pytest.raises(rc.ConfigError, match=r"grid\[0\]\.models\[1\]: inception_v3 is trained on streamed"):
        rc.validate(raw, "p.yaml")


def test_the_paper_imagenet_grid_is_table_2():
    cfg = rc.load(REPO / "config" / "paper-imagenet.yaml")
    runs = rc.expand_runs(cfg)
    assert sorted((r.corruption.id, r.regularizers) for r in runs) == sorted(
        [
            ("true-labels", "crop-wd-dropout"),
            ("true-labels", "crop"),
            ("true-labels", "wd"),
            ("true-labels", "none"),
            ("random-labels", "wd-dropout"),
            ("random-labels", "wd"),
            ("random-labels", "none"),
        ]
    )
    assert {r.model for r in runs} == {"inception_v3"}
    assert train_command(cfg, "p.yaml", runs[0].id).startswith("torchrun --standalone --nproc_per_node=8 -m ")


# ----------------------------------------------------------------------------
# model


def test_inception_v3_is_torchvisions_with_its_auxiliary_head():
    import torchvision

    from rethinking.models.inception_v3 import inception_v3, loss_of

    small = inception_v3(4, dropout=0.0)
    ref = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=4)
    assert [(k, v.shape) for k, v in small.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    # the auxiliary head also runs at the minimum input
    out = small.train()(torch.zeros(2, 3, 75, 75))
    assert out[0].shape == out[1].shape == (2, 4)
    loss, logits = loss_of(out, torch.tensor([0, 1]))
    assert logits is out[0] and loss.ndim == 0
    assert small.eval()(torch.zeros(1, 3, 75, 75)).shape == (1, 4)


# ----------------------------------------------------------------------------
# index, label files, loader


def test_index_and_label_files_hold_no_pixels(tmp_path, tree):
    cfg = prepared(params(tmp_path, tree), "random-labels")
    meta, index = load_npz(rc.base_artifact(cfg))
    assert meta["kind"] == "index" and meta["classes"] == list(CLASSES)
    assert set(index) == {"train_files", "y_train", "test_files", "y_test"}
    assert len(index["train_files"]) == 24 and len(index["test_files"]) == 8
    assert index["train_files"][0].decode() == "train/n01/n01_0000.JPEG"
    meta, labels = load_npz(rc.corrupted_artifact(cfg, rc.Corruption.parse("random-labels")))
    assert set(labels) == {"y_train", "y_test"} and meta["base"]["sha256"]
    d = stream.load_streamed(cfg, rc.Corruption.parse("random-labels"))
    assert (d["y_test"] == index["y_test"]).all() and not (d["y_train"] == index["y_train"]).all()


def test_a_zip_of_the_tree_gives_the_same_index(tmp_path, tree):
    shutil.make_archive(str(tmp_path / "tree"), "zip", tree.parent, tree.name)  # one folder around train/ val/
    a, b = stream.build_index(tree), stream.build_index(tmp_path / "tree.zip")
    assert a["classes"] == b["classes"] and (a["y_train"] == b["y_train"]).all()
    ds = stream.StreamImages(tmp_path / "tree.zip", b["train_files"], b["y_train"], 75, augment=False)
    ref = stream.StreamImages(tree, a["train_files"], a["y_train"], 75, augment=False)
    assert torch.equal(ds[5][0], ref[5][0])


def test_crops_depend_on_seed_epoch_and_index_not_on_workers(tree):
    d = stream.build_index(tree)
    ds = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=True, seed=3)
    keys = [[(i, 0) for i in range(0, 12)], [(i, 1) for i in range(0, 12)]]
    one = [x for x, _ in stream.make_loader(ds, keys, workers=0)]
    two = [x for x, _ in stream.make_loader(ds, keys, workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert one[0].shape == (12, 75, 75, 3) and one[0].dtype == torch.uint8
    assert not torch.equal(one[0], one[1])  # another epoch, other crops
    ev = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=False)
    assert torch.equal(ev[(4, 0)][0], ev[(4, 7)][0])  # evaluation crops are fixed


def test_decoding_on_the_device_matches_the_workers(tree):
    d = stream.build_index(tree)
    pil = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=True, seed=1)
    raw = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=True, seed=1, raw=True)
    keys = [[(i, 0) for i in range(len(pil))]]
    x_pil, y_pil = stream.to_input(next(iter(stream.make_loader(pil, keys, 0))), pil, torch.device("cpu"))
    x_dev, y_dev = stream.to_input(next(iter(stream.make_loader(raw, keys, 0))), raw, torch.device("cpu"))
    assert x_pil.shape == x_dev.shape == (24, 3, 75, 75) and torch.equal(y_pil, y_dev)
    assert float((x_pil - x_dev).abs().mean()) < 0.05  # the same crops; resampling differs a little


def test_a_streamed_run_logs_the_images_torchcodec_refused_once_per_epoch(tmp_path, tree, monkeypatch):
    """decode: device with a decoder that refuses the grayscale training file (alone and in every batch): the
    run trains, Pillow decodes that file, and each epoch logs how many images fell back, once."""
    import torchcodec.decoders

    gray = (tree / "train" / "n02" / "n02_0000.JPEG").read_bytes()
    real = torchcodec.decoders.decode_jpeg

    def decode_jpeg(source, **kw):
        datas = source if isinstance(source, list) else [source]
        if any(bytes(d.tolist()) == gray for d in datas):
            raise RuntimeError("Unknown chroma subsampling")
        return real(source, **kw)

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", decode_jpeg)
    p = params(tmp_path, tree, batch_size=4, max_epochs=2, image_size=32, decode="device")
    p.write_text(p.read_text().replace("inception_v3", "alexnet"))
    cfg = prepared(p, "random-labels")
    lines = []
    out = ts.train(cfg, rc.find_run(cfg, "imagenet/random-labels/alexnet/none/seed0"), log=lines.append)
    fell_back = [line for line in lines if "decode: device: TorchCodec refused" in line]
    # per epoch: 24 training images, 24 evaluated training images, 8 test images; the gray one twice
    assert [line.split(": ", 1)[1] for line in fell_back] == [
        f"epoch {e}: decode: device: TorchCodec refused 2 of 56 images, decoded by Pillow instead "
        "(first reason here: Unknown chroma subsampling)"
        for e in (1, 2)
    ]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------
# training: resume, and the pipeline with two processes (torchrun, gloo)


class Killed(Exception):
    pass


def stream_killed_and_resumed(cfg, run, step: int, monkeypatch, check=None):
    """Train a streamed run, kill it right after its checkpoint at `step` (`check(optimizer_state)` first), and
    rerun it: (the folder of the resumed run, the lines it logged)."""
    real = ts.save_checkpoint

    def kill_at(out, fingerprint, model, opt, progress, *args, **kw):
        real(out, fingerprint, model, opt, progress, *args, **kw)
        if progress.step == step:
            if check is not None:
                check(opt)
            raise Killed()

    monkeypatch.setattr(ts, "save_checkpoint", kill_at)
    with pytest.raises(Killed):
        ts.train(cfg, run, log=lambda *_: None)
    monkeypatch.setattr(ts, "save_checkpoint", real)
    lines = []
    return ts.train(cfg, run, log=lines.append), lines


def test_resume_inside_an_epoch_gives_the_same_run(tmp_path, tree, monkeypatch):
    def run_of(results):
        p = params(tmp_path, tree, results, batch_size=4, max_epochs=2, checkpoint_every=2, image_size=32)
        text = p.read_text().replace("inception_v3", "alexnet")
        p.write_text(text)
        cfg = prepared(p, "random-labels")
        return cfg, rc.find_run(cfg, "imagenet/random-labels/alexnet/none/seed0")

    cfg, run = run_of("full")
    full = ts.train(cfg, run, log=lambda *_: None)

    resumed, lines = stream_killed_and_resumed(*run_of("killed"), 8, monkeypatch)  # inside epoch 2 (6 steps each)
    assert any("resuming after epoch 1, batch 2 (step 8)" in line for line in lines)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, resumed))
    for key in ("steps", "epochs", "train_acc", "test_acc", "test_top5", "train_loss", "test_loss", "status"):
        assert a[key] == b[key], key
    cols = ["epoch", "step", "lr", "batch_train_acc", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(full / "epochs.csv")[cols], pd.read_csv(resumed / "epochs.csv")[cols])
    pd.testing.assert_frame_equal(pd.read_csv(full / "steps.csv"), pd.read_csv(resumed / "steps.csv"))
    # the per-example record: the same arrays, whole, consistent with the epochs
    (ma, xa), (mb, xb) = check_record(full), check_record(resumed)
    assert ma == mb and set(xa) == set(xb)
    for key in xa:
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)
    assert ma["origin"] == "path" and all((tree / o).is_file() for o in xa["origin"])


def test_the_streamed_record_is_the_numpy_computation_from_the_logged_logits(tmp_path, tree, monkeypatch):
    from rethinking.engine import examples as ex

    p = params(tmp_path, tree, batch_size=4, max_epochs=3, image_size=32, train_eval_size=10)
    p.write_text(p.read_text().replace("inception_v3", "alexnet"))
    cfg = prepared(p, "random-labels")
    seen = []
    real = ex.ExampleRecord.add

    def add(self, logits, y, right=None):
        seen.append((self.epoch, logits.detach().double().numpy(), y.numpy()))
        real(self, logits, y, right)

    monkeypatch.setattr(ex.ExampleRecord, "add", add)
    out = ts.train(cfg, rc.find_run(cfg, "imagenet/random-labels/alexnet/none/seed0"), log=lambda *_: None)
    meta, a = check_record(out)
    assert len(a["index"]) == 10 and meta["n_train"] == 24
    np.testing.assert_array_equal(a["index"], ts.train_eval_indices(24, 10, 0))
    logits = [np.concatenate([z for e, z, _ in seen if e == k]) for k in (1, 2, 3)]
    ref = reference_record(logits, a["label"])
    for key in ("learned_epoch", "forgetting", "final_correct"):
        np.testing.assert_array_equal(a[key], ref[key], err_msg=key)
    for key in ("confidence", "variability", "aum", "final_loss"):
        np.testing.assert_allclose(a[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_multi_process_run_needs_torchrun(tmp_path, tree):
    cfg = rc.load(params(tmp_path, tree, gpus_per_run=2))
    with pytest.raises(rc.ConfigError, match="start it with `torchrun --standalone --nproc_per_node=2 -m rethinking"):
        ts.train(cfg, rc.find_run(cfg, "imagenet/true-labels/inception_v3/none/seed0"))


@pytest.mark.slow
def test_snakemake_trains_inception_v3_on_the_tree_with_torchrun(tmp_path, tree):
    """prepare (index) -> corrupt (label files) -> train (Inception V3, 2 gloo processes) -> table2, fig2a."""
    clone_project(tmp_path)
    p = params(tmp_path, tree, "imagenet-test", gpus_per_run=2, workers=1)
    proc = subprocess.run(
        f"snakemake --cores 2 --configfile {p.name}",
        cwd=tmp_path,
        shell=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "imagenet-test"
    log = (out / "logs/train/imagenet/random-labels/inception_v3/none/seed0.log").read_text()
    assert "epoch 1 step 3" in log
    for corruption in ("true-labels", "random-labels"):
        s = json.loads((out / f"runs/imagenet/{corruption}/inception_v3/none/seed0/summary.json").read_text())
        assert s["processes"] == 2 and s["steps"] == 3 and s["n_train"] == 24 and s["n_test"] == 8
        assert s["image_size"] == 75 and s["aux_weight"] == 0.4 and 0 <= s["test_acc"] <= s["test_top5"] <= 100
    t2 = pd.read_csv(out / "tables/table2.csv")
    assert len(t2) == 7 and t2["paper_test_top1"].notna().all()
    ours = t2[t2["seeds"] > 0]
    assert sorted(ours["labels"]) == ["random", "true"] and (ours["augmentation"] == "no").all()
    assert (out / "figures/fig2a.png").stat().st_size > 0 and (out / "figures/fig2a.pdf").is_file()
    # the split by corrupted labels, summed over the two processes, and its table
    e = pd.read_csv(out / "runs/imagenet/random-labels/inception_v3/none/seed0/epochs.csv")
    assert e[["clean_acc", "noisy_memorized", "noisy_true"]].notna().all().all()
    # the per-example record: every process's share of the training set, gathered whole by process 0
    meta, a = check_record(out / "runs/imagenet/random-labels/inception_v3/none/seed0")
    np.testing.assert_array_equal(a["index"], np.arange(24))
    # a row no process filled would hold zeros: a probability of 0 with a loss of 0
    assert ((a["confidence"] > 0) | (a["final_loss"] > 0)).all() and meta["origin"] == "path"
    mem = pd.read_csv(out / "tables/memorization.csv")
    assert list(mem["corruption"]) == ["random-labels"] and mem["clean_acc"].iloc[0] == e["clean_acc"].iloc[0]
    assert (out / "figures/memorization.png").is_file() and (out / "figures/early_stopping.pdf").is_file()
    # the label files hold labels only; nothing is left to do
    meta, labels = load_npz(out / "data/imagenet/random-labels.npz")
    assert set(labels) == {"y_train", "y_test"}
    again = subprocess.run(
        f"snakemake --cores 2 --configfile {p.name} -n", cwd=tmp_path, shell=True, capture_output=True, text=True
    )
    assert "Nothing to be done" in again.stdout + again.stderr
