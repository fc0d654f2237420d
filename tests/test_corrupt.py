"""Corruptions as Section 2 of the paper defines them, seeded and byte-identical."""

import numpy as np
import pytest

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt, load_corrupted
from rethinking.data.sources import prepare
from rethinking.files import load_npz, sha256
from rethinking.plan.draws import corrupt_labels, random_pixels, shuffle_pixels


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8, 1.0])
def test_label_fraction_changed_is_about_0_9p(p):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=50_000)
    noisy = corrupt_labels(y, p, 10, np.random.default_rng(1))
    changed = np.mean(noisy != y)
    assert abs(changed - 0.9 * p) < 0.01
    assert noisy.min() >= 0 and noisy.max() <= 9
    # the replacement class is uniform over all 10 classes
    counts = np.bincount(noisy[noisy != y], minlength=10)
    assert counts.min() > 0.8 * counts.mean()


def test_labels_artifact_keeps_test_labels_and_no_images(digits_cfg):
    c = rc.Corruption.make("labels", 0.6)
    path = corrupt(digits_cfg, c)
    meta, arrays = load_npz(path)
    _, base = load_npz(rc.base_artifact(digits_cfg))
    assert "x_train" not in arrays and "x_test" not in arrays  # never a copy of the images
    assert meta["base"]["sha256"] == sha256(rc.base_artifact(digits_cfg))
    np.testing.assert_array_equal(arrays["y_test"], base["y_test"])
    assert abs(np.mean(arrays["y_train"] != base["y_train"]) - 0.9 * 0.6) < 0.06
    _, loaded = load_corrupted(digits_cfg, c)
    np.testing.assert_array_equal(loaded["x_train"], base["x_train"])


def test_shuffled_pixels_one_permutation_for_train_and_test(digits_cfg):
    c = rc.Corruption.make("shuffled_pixels")
    _, arrays = load_npz(corrupt(digits_cfg, c))
    _, base = load_npz(rc.base_artifact(digits_cfg))
    perm = arrays["permutation"]
    assert sorted(perm) == list(range(64)) and not np.array_equal(perm, np.arange(64))
    np.testing.assert_array_equal(arrays["x_train"], shuffle_pixels(base["x_train"], perm))
    np.testing.assert_array_equal(arrays["x_test"], shuffle_pixels(base["x_test"], perm))
    np.testing.assert_array_equal(arrays["y_train"], base["y_train"])


def test_random_pixels_a_permutation_per_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 6, 6), dtype=np.uint8)
    out = random_pixels(x, np.random.default_rng(1))
    flat_in, flat_out = x.reshape(50, 3, 36), out.reshape(50, 3, 36)
    perms = []
    for i in range(50):
        # each image keeps its own pixels (channels move together) in a new order
        order = [tuple(flat_out[i, :, j]) for j in range(36)]
        assert sorted(order) == sorted(tuple(flat_in[i, :, j]) for j in range(36))
        perms.append(tuple(int(np.flatnonzero((flat_in[i].T == flat_out[i, :, j]).all(1))[0]) for j in range(36)))
    assert len(set(perms)) == 50  # a different permutation for every image


def test_gaussian_matches_per_channel_moments(digits_cfg):
    c = rc.Corruption.make("gaussian")
    _, arrays = load_npz(corrupt(digits_cfg, c))
    _, base = load_npz(rc.base_artifact(digits_cfg))
    assert arrays["x_train"].shape == base["x_train"].shape and arrays["x_train"].dtype == np.uint8
    ref = base["x_train"].astype(float)
    g = arrays["x_train"].astype(float)
    # digits are mostly 0, so clipping at 0 shifts the moments a little: compare loosely
    assert abs(g.mean() - ref.mean()) < 0.25 * ref.std()
    assert abs(g.std() - ref.std()) < 0.25 * ref.std()
    assert not np.array_equal(arrays["x_test"][:10], base["x_test"][:10])


def test_gaussian_moments_without_clipping():
    from rethinking.plan.draws import gaussian_like

    rng = np.random.default_rng(0)
    ref = np.stack([rng.normal(m, 20, size=(500, 8, 8)) for m in (60, 128, 190)], axis=1).clip(0, 255).astype(np.uint8)
    g = gaussian_like(ref, (2000, 3, 8, 8), np.random.default_rng(1)).astype(float)
    for ch in range(3):
        assert abs(g[:, ch].mean() - ref[:, ch].mean()) < 1.0
        assert abs(g[:, ch].std() - ref[:, ch].std()) < 1.0


@pytest.mark.parametrize(
    "kind, level", [("labels", 0.4), ("random_pixels", None), ("gaussian", None), ("shuffled_pixels", None)]
)
def test_same_params_give_byte_identical_artifacts(digits_cfg, kind, level):
    c = rc.Corruption.make(kind, level)
    first = sha256(corrupt(digits_cfg, c))
    base_first = sha256(rc.base_artifact(digits_cfg))
    prepare(digits_cfg)
    assert sha256(rc.base_artifact(digits_cfg)) == base_first
    assert sha256(corrupt(digits_cfg, c)) == first


def test_corruption_ids():
    assert rc.Corruption.make("labels", 0.0).id == "true-labels"
    assert rc.Corruption.make("labels", 1.0) == rc.Corruption.make("random_labels")
    assert rc.Corruption.make("labels", 0.4).id == "labels-0.4"
    assert rc.Corruption.parse("labels-0.4") == rc.Corruption.make("labels", 0.4)
    with pytest.raises(rc.ConfigError, match="outside"):
        rc.Corruption.make("labels", 1.2)
