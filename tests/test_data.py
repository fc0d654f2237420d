"""Datasets: digits split, image folders (folder or zip, RGB or grayscale), subsets, clear data errors."""

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rethinking import plan as rc
from rethinking.data.sources import balanced_subset, load_cifar10, load_digits, load_imagefolder, prepare
from rethinking.errors import ArtifactError, DataError
from rethinking.files import load_npz

from conftest import REPO, make_image_folder

SHARED_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"


def test_digits_stratified_seeded_split():
    xtr, ytr, xte, yte, classes, _, origin = load_digits(0.2, seed=0)
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == np.uint8 and xtr.max() == 255
    assert len(ytr) + len(yte) == 1797 and len(yte) == 360
    assert classes == [str(i) for i in range(10)]
    assert np.bincount(yte).min() >= 35  # stratified
    # each training image's origin: its index in load_digits, in the split's (sorted) order
    assert len(origin) == len(ytr) and (np.diff(origin) > 0).all() and origin.max() < 1797
    again = load_digits(0.2, seed=0)
    np.testing.assert_array_equal(again[1], ytr)
    assert not np.array_equal(load_digits(0.2, seed=1)[1], ytr)


def _zip_dir(src: Path, dst: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                z.write(p, top + p.relative_to(src).as_posix())
    return dst


@pytest.mark.parametrize("as_zip", [False, True])
def test_imagefolder_rgb(tmp_path, as_zip):
    root = make_image_folder(tmp_path / "tree", size=(10, 6))
    if as_zip:
        root = _zip_dir(root, tmp_path / "tree.zip", top="cifar/")
    xtr, ytr, xte, yte, classes, _, origin = load_imagefolder(root)
    assert classes == ["cat", "dog", "frog"]
    assert xtr.shape == (18, 3, 6, 10) and xte.shape == (9, 3, 6, 10)
    assert list(np.bincount(ytr)) == [6, 6, 6]
    # each training image's origin: its path under the root (inside the zip: under its top folder)
    assert list(origin) == [f"train/{c}/{i:04d}.png" for c in classes for i in range(6)]


def test_imagefolder_grayscale_stays_one_channel(tmp_path):
    root = make_image_folder(tmp_path / "mnist", size=(7, 7), mode="L", classes=("0", "1"))
    xtr, *_ = load_imagefolder(root)
    assert xtr.shape == (12, 1, 7, 7)


def test_imagefolder_pixels_survive(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path / "t", size=(4, 4), classes=("a",), n_train=1, n_test=1)
    arr = np.asarray(Image.open(root / "train" / "a" / "0000.png"))
    xtr, *_ = load_imagefolder(root)
    np.testing.assert_array_equal(xtr[0], arr.transpose(2, 0, 1))


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("missing_split", "no test/<class>/ folders"),
        ("empty_class", "test/dog/ is empty"),
        ("not_image", "notes.txt: not an image file"),
        ("broken_image", "0001.png: not a readable image"),
        ("mixed_sizes", "different sizes"),
    ],
)
def test_imagefolder_damage_gives_clear_errors(tmp_path, damage, needle):
    root = make_image_folder(tmp_path / "t")
    if damage == "missing_split":
        shutil.rmtree(root / "test")
    elif damage == "empty_class":
        for p in (root / "test" / "dog").iterdir():
            p.unlink()
    elif damage == "not_image":
        (root / "train" / "cat" / "notes.txt").write_text("hello")
    elif damage == "broken_image":
        (root / "train" / "cat" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif damage == "mixed_sizes":
        make_image_folder(tmp_path / "big", size=(9, 9), classes=("cat",), n_train=1, n_test=1)
        shutil.copy(tmp_path / "big" / "train" / "cat" / "0000.png", root / "train" / "cat" / "big.png")
    with pytest.raises(DataError, match=needle):
        load_imagefolder(root)


def test_balanced_subset():
    y = np.repeat(np.arange(10), 100)
    idx = balanced_subset(y, 95, 10, np.random.default_rng(0), "train")
    counts = np.bincount(y[idx], minlength=10)
    assert len(idx) == 95 and counts.max() - counts.min() <= 1
    with pytest.raises(DataError, match="train_size: 2000 is larger"):
        balanced_subset(y, 2000, 10, np.random.default_rng(0), "train")


def test_cifar10_absent_offline_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path / "c10", download=False)


def test_prepare_subset_and_truncated_artifact_error(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    meta, arrays = load_npz(prepare(cfg))
    assert arrays["x_train"].shape == (100, 1, 8, 8) and len(arrays["y_test"]) == 50
    assert meta["classes"][0] == "0" and meta["provenance"]["train_size"] == 100
    path = rc.base_artifact(cfg)
    path.write_bytes(path.read_bytes()[:5000])  # as a killed copy would leave it
    with pytest.raises(ArtifactError, match="truncated or corrupted.*rebuild"):
        load_npz(path)


@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason="the shared JPEG CIFAR-10 is not on this machine")
def test_shared_jpeg_cifar10_zip_layout():
    from rethinking.data.sources import _decode, _Tree

    tree = _Tree(SHARED_ZIP)
    assert sorted(tree.files["train"]) == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert sum(len(v) for v in tree.files["train"].values()) == 50_000
    assert sum(len(v) for v in tree.files["test"].values()) == 10_000
    assert _decode(tree, tree.files["test"]["cat"][0]).shape == (3, 32, 32)
