"""torchvision sources (mnist, fashion_mnist, kmnist, cifar100, svhn): tiny files in torchvision's own on-disk
formats are read into the base artifact; absent files give one clear line. Never downloads anything.

torchvision's CIFAR100 and SVHN verify each file's md5 against the official files' (hardcoded), which files written
here cannot match: the tests that read them replace the `check_integrity` those two modules imported by a check of
presence only (`md5_ignored`; in the `prepare` subprocess, RUNNER does the same). MNIST and its kin check presence
only, so their command runs as a user runs it.
"""

import os
import pickle
import struct
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from rethinking import plan as rc
from rethinking.data.sources import load_source
from rethinking.errors import DataError
from rethinking.files import load_npz

from conftest import run_cli, tree_files

N_TRAIN, N_TEST = 20, 10
MNIST_FAMILY = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
SOURCES = [*MNIST_FAMILY, "cifar100", "svhn"]
FINE = [f"fine{i:02d}" for i in range(100)]
GRID = "grid:\n  - {name: a, models: [mlp_1x512], corruptions: [true_labels]}\n"


def _labels(split, rng, n):
    """Every class 0..9 in both splits (so subsets of 10 exist); the test split in a shuffled order."""
    y = np.arange(n) % 10
    return rng.permutation(y) if split == "test" else y


def write_mnist(root: Path, folder: str) -> dict:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte: big-endian idx files (magic 0x803, 0x801)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(len(folder))
    out = {}
    for split, prefix, n in (("train", "train", N_TRAIN), ("test", "t10k", N_TEST)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = _labels(split, rng, n).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + y.tobytes())
        out[split] = (x[:, None], y)
    return out


def write_cifar100(root: Path) -> dict:
    """root/cifar-100-python/{train,test,meta}: pickled dicts as torchvision reads them (latin1 gives str keys)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(100)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine = _labels(split, rng, n) + np.where(np.arange(n) >= 10, 90, 0)  # train: 0..9 and 90..99
        entry = {
            "batch_label": f"{split} batch",
            "filenames": [f"{i}.png" for i in range(n)],
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": x.reshape(n, 3 * 32 * 32),
        }  # each row: the R, then G, then B plane, row-major
        with open(d / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[split] = (x, fine)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": FINE, "coarse_label_names": [f"coarse{i:02d}" for i in range(20)]}, f)
    return out


def write_svhn(root: Path) -> dict:
    """root/{train,test}_32x32.mat: X is 32 x 32 x 3 x N, y is N x 1 with 10 for the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = _labels(split, rng, n)
        on_disk = np.where(y == 0, 10, y).astype(np.uint8).reshape(n, 1)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": on_disk})
        out[split] = (x, y)
    return out


def write_source(source: str, root: Path) -> dict:
    if source in MNIST_FAMILY:
        return write_mnist(root, MNIST_FAMILY[source])
    return write_cifar100(root) if source == "cifar100" else write_svhn(root)


def _present(fpath, md5=None):
    return os.path.isfile(fpath)


@pytest.fixture
def md5_ignored(monkeypatch):
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn

    monkeypatch.setattr(cifar, "check_integrity", _present)
    monkeypatch.setattr(svhn, "check_integrity", _present)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every source's files once, under <tmp>/<source>, with the arrays written."""
    base = tmp_path_factory.mktemp("torchvision")
    return {s: (base / s, write_source(s, base / s)) for s in SOURCES}


def test_expected_files_are_the_ones_torchvision_checks():
    import torchvision.datasets as tvd

    for source, name in MNIST_FAMILY.items():
        folder, names = rc.TORCHVISION_FILES[source]
        assert folder == f"{name}/raw"
        assert list(names) == [os.path.splitext(f)[0] for f, _ in getattr(tvd, name).resources]
    c = tvd.CIFAR100
    assert rc.TORCHVISION_FILES["cifar100"] == (
        c.base_folder,
        tuple(f for f, _ in c.train_list + c.test_list) + (c.meta["filename"],),
    )
    assert rc.TORCHVISION_FILES["svhn"] == ("", tuple(tvd.SVHN.split_list[s][1] for s in ("train", "test")))


@pytest.mark.parametrize("source", SOURCES)
def test_source_round_trips_pixels_and_labels(written, md5_ignored, source):
    root, arrays = written[source]
    d = load_source(source, root)
    channels = 1 if source in MNIST_FAMILY else 3
    side = 28 if source in MNIST_FAMILY else 32
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = d[f"x_{split}"], d[f"y_{split}"]
        assert x.shape == (n, channels, side, side) and x.dtype == np.uint8 and x.flags.c_contiguous
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(x, arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1])
    assert d["provenance"] == {"source": source, "origin": f"torchvision.datasets.{_class(source)}", "root": str(root)}
    if source == "cifar100":  # the fine labels (90..99 are there) and the fine names, all 100
        assert d["classes"] == FINE and d["y_train"].max() == 99
    elif source == "svhn":  # 10 on disk is the digit 0, label 0
        assert d["classes"] == [str(i) for i in range(10)] and set(d["y_train"]) == set(range(10))
        assert (d["y_train"] == 0).sum() == 2 and 10 not in d["y_test"]
    elif source == "mnist":  # as digits and svhn (torchvision says "0 - zero", ...)
        assert d["classes"] == [str(i) for i in range(10)]
    else:  # torchvision's names
        import torchvision.datasets as tvd

        assert d["classes"] == getattr(tvd, _class(source)).classes and len(d["classes"]) == 10


def _class(source):
    return MNIST_FAMILY.get(source) or {"cifar100": "CIFAR100", "svhn": "SVHN"}[source]


@pytest.mark.parametrize("source", SOURCES)
def test_subsets_apply(written, md5_ignored, source):
    root, arrays = written[source]
    d = load_source(source, root, train_size=10, test_size=10, seed=3)
    assert d["x_train"].shape[0] == 10 and d["x_test"].shape[0] == 10
    assert sorted(d["y_train"]) == list(range(10)) and sorted(d["y_test"]) == list(range(10))
    # each kept image is one of the written ones with its own label
    x, y = arrays["train"]
    for xi, yi in zip(d["x_train"], d["y_train"]):
        i = next(j for j in range(len(x)) if np.array_equal(x[j], xi))
        assert y[i] == yi


RUNNER = """
import os, runpy, sys
import torchvision.datasets.cifar as cifar, torchvision.datasets.svhn as svhn
def present(fpath, md5=None):   # the test files are not the official ones: check presence, not md5
    return os.path.isfile(fpath)
cifar.check_integrity = svhn.check_integrity = present
codes = []
for params in sys.argv[1:]:   # `python -m rethinking prepare --params <params>`, in one process for speed
    sys.argv = ["rethinking", "prepare", "--params", params]
    try:
        runpy.run_module("rethinking", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        codes.append(e.code)
print("exit codes", codes)
"""


def _params(tmp_path, source, root, extra=""):
    p = tmp_path / f"{source}.yaml"
    p.write_text(
        f"results_dir: {tmp_path / 'results'}\n"
        f"dataset: {{source: {source}, root: {root}, train_size: 10, test_size: 10{extra}}}\n" + GRID
    )
    return p


def test_prepare_command_writes_the_base_artifact(written, tmp_path):
    import subprocess

    params = [_params(tmp_path, s, written[s][0]) for s in SOURCES]
    (tmp_path / "runner.py").write_text(RUNNER)
    proc = subprocess.run(
        [sys.executable, "runner.py", *map(str, params)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and f"exit codes {[0] * len(SOURCES)}" in proc.stdout, proc.stdout + proc.stderr
    for source, p in zip(SOURCES, params):
        cfg = rc.load(p)
        path = rc.base_artifact(cfg)
        assert str(path) in proc.stdout and path.parent.name == f"{source}-train10-test10"
        meta, a = load_npz(path)
        channels, side = (1, 28) if source in MNIST_FAMILY else (3, 32)
        assert meta["kind"] == "base" and meta["shape"] == [channels, side, side]
        assert a["x_train"].shape == (10, channels, side, side) and a["x_train"].dtype == np.uint8
        assert a["y_test"].dtype == np.int64 and len(a["y_test"]) == 10
        assert len(meta["classes"]) == (100 if source == "cifar100" else 10)
        assert meta["provenance"]["source"] == source and meta["provenance"]["root"] == str(written[source][0])
        assert meta["provenance"]["train_size"] == 10


@pytest.mark.parametrize("source", SOURCES)
def test_prepare_absent_files_offline_one_line_and_nothing_written(tmp_path, source):
    root = tmp_path / "nowhere"
    proc = run_cli("prepare", "--params", _params(tmp_path, source, root), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    folder, names = rc.TORCHVISION_FILES[source]
    assert "dataset.root" in lines[0] and str(Path(root, folder)) in lines[0] and "dataset.download: true" in lines[0]
    assert all(n in lines[0] for n in names), lines[0]
    assert tree_files(tmp_path / "results") == []


@pytest.mark.parametrize("source", SOURCES)
def test_check_data(tmp_path, monkeypatch, written, source):
    monkeypatch.chdir(tmp_path)  # no data/<source> here

    def cfg(root, download=False):
        return rc.validate(
            {
                "dataset": {"source": source, "root": str(root), "download": download},
                "grid": [{"name": "a", "models": ["mlp_1x512"], "corruptions": ["true_labels"]}],
            }
        )

    rc.check_data(cfg(written[source][0]))  # all files there
    rc.check_data(cfg(tmp_path / "nowhere", download=True))  # fetched by prepare
    with pytest.raises(rc.ConfigError, match=f"dataset.root: .*nowhere.* holds no {source} files"):
        rc.check_data(cfg(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    write_source(source, partial)
    folder, names = rc.TORCHVISION_FILES[source]
    (partial / folder / names[-1]).unlink()
    with pytest.raises(rc.ConfigError, match=f"lacks {names[-1]} in .*partial"):
        rc.check_data(cfg(partial))
    default = rc.validate({"dataset": {"source": source}, "grid": cfg("x")["grid"]})
    assert rc.TORCHVISION_ROOTS[source] == f"data/{source}"
    with pytest.raises(rc.ConfigError, match=f"data/{source}"):
        rc.check_data(default)
    if source == "mnist":  # torchvision's legacy processed/{training,test}.pt are read too
        legacy = tmp_path / "legacy" / "MNIST" / "processed"
        legacy.mkdir(parents=True)
        (legacy / "training.pt").write_bytes(b"")
        (legacy / "test.pt").write_bytes(b"")
        rc.check_data(cfg(tmp_path / "legacy"))


@pytest.mark.parametrize("source", SOURCES)
def test_load_absent_offline_says_which_files_and_where(tmp_path, source):
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_source(source, root)
    msg = str(err.value)
    folder, names = rc.TORCHVISION_FILES[source]
    assert "\n" not in msg and msg.startswith("dataset.root: ")
    assert rc.torchvision_expected(source, root) in msg and "dataset.download: true" in msg
    assert all(n in msg for n in names)


@pytest.mark.parametrize("source", SOURCES)
def test_failed_download_is_one_line(tmp_path, monkeypatch, source):
    """download: true without network (simulated: nothing is fetched) is a DataError naming the files."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.mnist as mnist
    import torchvision.datasets.svhn as svhn

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(svhn, "download_url", offline)
    root = tmp_path / "dl"
    with pytest.raises(DataError) as err:
        load_source(source, root, download=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dataset.download: could not download")
    assert str(root) in msg and rc.torchvision_expected(source, root) in msg


@pytest.mark.parametrize("source", ["cifar100", "svhn"])
def test_md5_is_checked_on_real_use(written, source):
    """Without the tests' patch, files that are not the official ones are refused as corrupted."""
    with pytest.raises(DataError, match="not found or corrupted"):
        load_source(source, written[source][0])


def test_damaged_idx_file_is_a_data_error(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x07\x03garbage")
    with pytest.raises(DataError, match="MNIST") as err:
        load_source("mnist", tmp_path)
    assert "\n" not in str(err.value)
