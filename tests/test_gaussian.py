"""Gaussian corruption: the stored (rounded, clipped, uint8) noise has the data's mean and sd per channel."""

import numpy as np
import pytest

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.files import load_npz
from rethinking.plan.draws import gaussian_like, gaussian_params, stored_moments

from conftest import REPO


def _close(got, want):
    return abs(got - want) <= max(1.0, 0.01 * abs(want))  # 1 intensity level or 1% relative


def test_digits_gaussian_artifact_matches_stored_moments(tmp_path):
    cfg = rc.load(REPO / "params.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    prepare(cfg)
    c = rc.Corruption.make("gaussian")
    path = corrupt(cfg, c)
    _, g = load_npz(path)
    _, base = load_npz(rc.base_artifact(cfg))
    ref = base["x_train"].astype(float)
    for split in ("x_train", "x_test"):
        x = g[split].astype(float)
        assert g[split].dtype == np.uint8 and g[split].shape == base[split].shape
        assert _close(x.mean(), ref.mean()) and _close(x.std(), ref.std()), (split, x.mean(), x.std())
    first = path.read_bytes()
    assert corrupt(cfg, c).read_bytes() == first  # same seed, same bytes


def test_generated_images_match_per_channel():
    rng = np.random.default_rng(0)
    # three channels: mostly dark with a heavy clip at 0, mid-grey, bright near the top clip
    dark = np.where(rng.random((800, 16, 16)) < 0.5, 0, rng.integers(100, 256, (800, 16, 16)))
    mid = rng.normal(128, 40, (800, 16, 16))
    bright = np.where(rng.random((800, 16, 16)) < 0.4, 255, rng.normal(200, 50, (800, 16, 16)))
    ref = np.stack([dark, mid, bright], axis=1).clip(0, 255).astype(np.uint8)
    g = gaussian_like(ref, (1000, 3, 16, 16), np.random.default_rng(1))
    assert g.dtype == np.uint8
    for ch in range(3):
        want, got = ref[:, ch].astype(float), g[:, ch].astype(float)
        assert _close(got.mean(), want.mean()) and _close(got.std(), want.std()), (ch, got.mean(), got.std())
    np.testing.assert_array_equal(g, gaussian_like(ref, (1000, 3, 16, 16), np.random.default_rng(1)))


@pytest.mark.parametrize("mean, std", [(77.9, 95.9), (125.3, 62.5), (10.0, 30.0), (240.0, 20.0), (128.0, 1.0)])
def test_solved_parameters_give_the_moments_exactly(mean, std):
    loc, scale = gaussian_params(mean, std)
    m, s = stored_moments(loc, scale)
    assert m == pytest.approx(mean, abs=1e-6) and s == pytest.approx(std, abs=1e-6)


def test_constant_channel():
    ref = np.full((10, 1, 4, 4), 37, dtype=np.uint8)
    np.testing.assert_array_equal(gaussian_like(ref, (5, 1, 4, 4), np.random.default_rng(0)), 37)
