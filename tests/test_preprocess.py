"""Preprocessing against hand-computed values: TF's per-image standardization, crops, flips."""

import math

import numpy as np
import torch

from rethinking.data.preprocess import (
    center_crop,
    per_image_standardization,
    prepare_all,
    prepare_batch,
    random_crop,
    random_flip,
)


def test_per_image_standardization_matches_tf_formula():
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 5, 5)).astype(np.float32)
    out = per_image_standardization(torch.from_numpy(x)).numpy()
    for i in range(4):
        n = x[i].size
        expected = (x[i] - x[i].mean()) / max(x[i].std(), 1 / math.sqrt(n))
        np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)


def test_standardization_of_a_constant_image_uses_the_floor():
    x = torch.full((1, 3, 4, 4), 0.5)
    x[0, 0, 0, 0] = 0.5 + 1e-4  # std far below 1/sqrt(48)
    out = per_image_standardization(x)
    expected = (x - x.mean()) * math.sqrt(48)
    torch.testing.assert_close(out, expected)


def test_hand_computed_two_pixel_image():
    x = torch.tensor([[[[0.0, 1.0]]]])  # mean 0.5, std 0.5 > 1/sqrt(2)? no: 0.5 < 0.7071
    out = per_image_standardization(x)
    torch.testing.assert_close(out, torch.tensor([[[[-0.5 * math.sqrt(2), 0.5 * math.sqrt(2)]]]]))


def test_center_crop_takes_the_middle():
    x = torch.arange(32 * 32).reshape(1, 1, 32, 32)
    c = center_crop(x, 28)
    assert c.shape == (1, 1, 28, 28)
    assert c[0, 0, 0, 0] == 2 * 32 + 2 and c[0, 0, -1, -1] == 29 * 32 + 29


def test_random_crop_windows_are_subimages_and_vary():
    x = torch.arange(2 * 32 * 32).reshape(1, 2, 32, 32).repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    c = random_crop(x, 28, g)
    assert c.shape == (64, 2, 28, 28)
    tops, lefts = set(), set()
    for i in range(64):
        v = int(c[i, 0, 0, 0])
        top, left = divmod(v, 32)
        assert 0 <= top <= 4 and 0 <= left <= 4
        torch.testing.assert_close(c[i], x[i, :, top : top + 28, left : left + 28])  # channels share a window
        tops.add(top)
        lefts.add(left)
    assert len(tops) == 5 and len(lefts) == 5


def test_random_flip_flips_about_half():
    x = torch.arange(10).reshape(1, 1, 1, 10).repeat(1000, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 9
    assert 400 < int(flipped.sum()) < 600
    assert torch.equal(out[flipped], x[flipped].flip(-1))


def test_prepare_batch_from_uint8():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = prepare_batch(x, 28)
    assert out.shape == (8, 3, 28, 28) and out.dtype == torch.float32
    flat = out.reshape(8, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(8), atol=1e-4, rtol=0)


def test_prepare_all_equals_per_batch_preparation():
    """Inputs prepared once per run are the values a per-batch preparation gives, bit for bit, in any chunking."""
    x = torch.randint(0, 256, (300, 3, 12, 12), dtype=torch.uint8)
    whole = prepare_all(x, 10, chunk=64)
    assert whole.shape == (300, 3, 10, 10) and whole.dtype == torch.float32
    assert torch.equal(whole, prepare_batch(x, 10))
    assert torch.equal(whole, prepare_all(x, 10, chunk=4096))
    idx = torch.randperm(300)[:32]
    assert torch.equal(whole[idx], prepare_batch(x[idx], 10))
    assert torch.equal(prepare_all(x, None, chunk=7), prepare_batch(x, None))


def test_standardization_in_place_equals_out_of_place_and_never_touches_the_callers_tensor():
    x = torch.rand(6, 3, 5, 5)
    expected = per_image_standardization(x)
    copy = x.clone()
    assert torch.equal(per_image_standardization(copy, inplace=True), expected) and torch.equal(copy, expected)
    kept = x.clone()
    for crop in (None, 5, 4):  # a float batch: the crop is the caller's tensor or a view of it
        prepare_batch(x, crop)
        assert torch.equal(x, kept)
    u = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    kept = u.clone()
    prepare_batch(u, None, frozenset({"crop", "flip", "rotate"}), torch.Generator().manual_seed(0))
    assert torch.equal(u, kept)
