"""Image preprocessing and augmentation as batched tensor ops on the device.

The paper's CIFAR-10 pipeline (TensorFlow): pixels / 255, a center crop to
28x28 (or, with the "random crop" regularizer, a random 28x28 window of the
32x32 image), then per-image standardization
    (x - mean(x)) / max(std(x), 1 / sqrt(N)),  N = number of values in x,
as tf.image.per_image_standardization computes it. All functions take a uint8
or float batch NCHW and work on whatever device it lives on.
"""
from __future__ import annotations

import torch


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None:
        return x
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_crop(x: torch.Tensor, size: int | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random size x size window of each image, chosen independently per image."""
    if size is None:
        return x
    n, c, h, w = x.shape
    if size == h and size == w:
        return x
    dev = x.device
    top = torch.randint(0, h - size + 1, (n,), device=dev, generator=generator)
    left = torch.randint(0, w - size + 1, (n,), device=dev, generator=generator)
    ar = torch.arange(size, device=dev)
    rows = (top[:, None] + ar)[:, None, :, None]           # n,1,s,1
    cols = (left[:, None] + ar)[:, None, None, :]          # n,1,1,s
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return x[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def per_image_standardization(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's per_image_standardization on a batch of float images in [0, 1]."""
    n_values = x[0].numel()
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    adjusted = torch.clamp(std, min=n_values ** -0.5)
    return (x - mean[:, None, None, None]) / adjusted[:, None, None, None]


def prepare_batch(x_uint8: torch.Tensor, crop: int | None, augment: frozenset = frozenset(),
                  generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """uint8 batch -> network input: crop (center, or random with 'crop'), optional flip, standardize."""
    x = random_crop(x_uint8, crop, generator) if "crop" in augment else center_crop(x_uint8, crop)
    if "flip" in augment:
        x = random_flip(x, generator)
    x = x.to(dtype).div_(255.0)
    return per_image_standardization(x)
