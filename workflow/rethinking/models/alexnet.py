"""The "small AlexNet" of Zhang et al. 2017: the model of the TensorFlow CIFAR-10 tutorial (``cifar10.py``).

Two blocks of conv 5x5x64 (SAME) -> ReLU -> max-pool 3x3/2 (TF SAME) -> LRN (depth_radius 4,
alpha 0.001/9, beta 0.75, bias 1), then FC 384 -> FC 192 -> FC num_classes.

The layers compute what nn.Conv2d, an -inf padded max-pool and nn.LocalResponseNorm compute (to float
rounding; tests/test_models.py holds the plain reference), in fewer and cheaper ops (issue #18). The
costs below are the digits default: batch 32 at 1x7x7, one CPU thread, where a step took ~13-14 ms:

- LocalResponseNorm: torch's module sums the squares over the channel window with avg_pool3d and
  raises to -beta with pow (~2.6 ms a step: avg_pool3d and its backward 2.1, pow 0.5). Here the window
  sum is one matrix product with a fixed 0/1 band matrix (C x C), x^-0.75 is rsqrt(x) * sqrt(rsqrt(x))
  (a fifth of pow's time), and a custom autograd Function writes the backward as five ops.
- MaxPool2dSame: TF 'SAME' padding is what F.max_pool2d's own implicit padding (which never picks a
  padded position) gives, with ceil_mode for the one extra column of even sizes: no padded copy.
- Conv2d, on the CPU only: (a) its output is channels_last: torch's NCHW max-pool kernel is scalar
  (~1 ms for 32x64x7x7, against ~0.06 ms channels_last), and every later layer keeps the layout;
  (b) on small maps the weight gradient is computed as a forward convolution of the input by the
  output gradient (batch and channels swapped): oneDNN's backward-weights kernel for these shapes
  is its per-image GEMM one, 2.5-3x slower (conv 2 at 4x4: 2.6 ms against 0.9 ms).

With all of it the digits step takes ~0.52x the plain network's (6.5-7 ms; benchmarks/alexnet_step.py),
and 3x28x28 at batch 128 ~0.65x.

State dicts, parameter counts and module types (subclasses of nn.Conv2d and nn.LocalResponseNorm) are
those of the plain model; on CUDA, under autocast and under torch.func.vmap the same layers run (the
CPU-only parts are skipped or vmap-safe).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import hidden_fc

# conv weight gradients as forward convolutions where the output map is this small: N * H * W rows,
# or H * W <= 16 (measured on the project's CPU, one thread; beyond, e.g. 128 x 14 x 14, oneDNN's is faster)
_WGRAD_MAX_ROWS = 4096
_WGRAD_MAX_PIXELS = 16


def _is_channels_last(t: torch.Tensor) -> bool:
    """Laid out N x H x W x C (vmap-safe, unlike is_contiguous(memory_format=...))."""
    return t.permute(0, 2, 3, 1).is_contiguous()


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    """t laid out channels_last: a tensor of its own, not a view (an in-place ReLU on a view makes autograd
    copy the gradient back through CopySlices, into NCHW)."""
    if _is_channels_last(t):
        return t
    try:
        return t.contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # inside torch.func.vmap, which supports no memory_format but the default
        return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _same_pool_pads(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _torch_pool_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    """F.max_pool2d's output size (torch's pooling_output_shape, dilation 1)."""
    out = (size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@functools.cache
def _pool_args(h: int, w: int, kernel: int, stride: int):
    """(padding, ceil_mode) with which F.max_pool2d's windows are TF SAME's, else None.

    Both start at -before and step by stride, and F.max_pool2d ignores positions outside the input
    as -inf padding would; they agree when the number of windows does."""
    (top, _), (left, _) = _same_pool_pads(h, kernel, stride), _same_pool_pads(w, kernel, stride)
    if max(top, left) <= kernel // 2:
        for ceil_mode in (False, True):
            if _torch_pool_size(h, kernel, stride, top, ceil_mode) == math.ceil(h / stride) and _torch_pool_size(
                w, kernel, stride, left, ceil_mode
            ) == math.ceil(w / stride):
                return (top, left), ceil_mode
    return None


class MaxPool2dSame(nn.Module):
    """Max-pool with TensorFlow 'SAME' padding (pads with -inf, extra on bottom/right).

    Output spatial size is ``ceil(size / stride)``.
    """

    per_sample = True  # parameter-free, each sample on its own: a pack's batched forward may run it on K*B samples

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = _pool_args(x.shape[-2], x.shape[-1], self.kernel_size, self.stride)
        if args is not None:
            return F.max_pool2d(x, self.kernel_size, self.stride, padding=args[0], ceil_mode=args[1])
        top, bottom = _same_pool_pads(x.shape[-2], self.kernel_size, self.stride)
        left, right = _same_pool_pads(x.shape[-1], self.kernel_size, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def _band(channels: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """B[j, c] = 1 where channel j is in the LRN window of channel c: c - size // 2 <= j <=
    c + (size - 1) // 2 (torch's: the squares zero-padded by size // 2 before, (size - 1) // 2 after).
    Exact in any dtype (alpha / size is applied as a scalar, in the ops' float math, as torch's LRN does).
    Built once per (shape, device, dtype), except while torch.compile traces (its tensors are fakes)."""
    if torch.compiler.is_compiling():
        return _make_band(channels, size, device, dtype)
    return _cached_band(channels, size, device, dtype)


def _make_band(channels, size, device, dtype):
    ones = torch.ones(channels, channels, device=device, dtype=dtype)
    return ones.triu_(-((size - 1) // 2)).tril_(size // 2)


_cached_band = functools.lru_cache(maxsize=64)(_make_band)


def _window_sum(t: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """s[n, c, h, w] = sum_j band[j, c] t[n, j, h, w], in t's layout (channels_last: one matrix product)."""
    if _is_channels_last(t):
        return torch.matmul(t.permute(0, 2, 3, 1), band).permute(0, 3, 1, 2)
    n, c, h, w = t.shape
    return torch.matmul(band.t(), t.reshape(n, c, h * w)).view(n, c, h, w)


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0.75:  # d^-0.75 = rsqrt(d) * sqrt(rsqrt(d)): ~5x cheaper than pow on the CPU
        r = torch.rsqrt(d)
        return r.sqrt().mul_(r)
    return d.pow(-beta)


class _LRN(torch.autograd.Function):
    """b = a * d^-beta, d = k + alpha / size * (window sum of a^2); returns (b, d^-beta, d), the last two
    non-differentiable (saved for the backward: with setup_context, a Function saves outputs, not locals).

    da = g d^-beta - 2 beta a * W^T(g b / d) * alpha / size, W^T the window sum transposed."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, size, alpha, beta, k):
        d = _window_sum(x * x, _band(x.shape[1], size, x.device, x.dtype)).mul_(alpha / size).add_(k)
        r = _neg_pow(d, beta)
        return x * r, r, d

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.size, ctx.alpha, ctx.beta, _ = inputs
        _, r, d = output
        ctx.mark_non_differentiable(r, d)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, r, d)

    @staticmethod
    def backward(ctx, g, _gr, _gd):
        if g is None:
            return None, None, None, None, None
        x, r, d = ctx.saved_tensors
        if _is_channels_last(x) and not _is_channels_last(g):  # e.g. from a Flatten: one copy, not slow mixed ops
            g = _to_channels_last(g)
        gr = g * r
        u = (gr * x).div_(d)
        v = _window_sum(u, _band(x.shape[1], ctx.size, u.device, u.dtype).t())
        return torch.addcmul(gr, x, v, value=-2 * ctx.beta * ctx.alpha / ctx.size).to(x.dtype), None, None, None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """nn.LocalResponseNorm (same arguments and result) as one autograd Function over N x C x H x W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return _LRN.apply(x, self.size, self.alpha, self.beta, self.k)[0]


class _Conv2dSmallMaps(torch.autograd.Function):
    """F.conv2d (stride 1, dilation 1, groups 1) whose weight gradient is a forward convolution:
    dW[o, c] = sum_n x[n, c] (*) g[n, o] is conv2d(x^T, g^T) with batch and channels swapped."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.padding = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                g, x, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            gw = F.conv2d(x.transpose(0, 1), g.transpose(0, 1), None, 1, ctx.padding).transpose(0, 1)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same result) that, on the CPU, returns channels_last and, for small
    output maps, computes its weight gradient by _Conv2dSmallMaps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        if (
            torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.dtype == self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        ):
            h, w = (x.shape[i + 2] + 2 * self.padding[i] - self.kernel_size[i] + 1 for i in range(2))
            if x.shape[0] * h * w <= _WGRAD_MAX_ROWS or h * w <= _WGRAD_MAX_PIXELS:
                return _to_channels_last(_Conv2dSmallMaps.apply(x, self.weight, self.bias, self.padding))
        return _to_channels_last(super().forward(x))


def alexnet(in_shape, num_classes: int, dropout: float) -> nn.Sequential:
    c, h, w = in_shape
    layers: list[nn.Module] = []
    channels = c
    for _ in range(2):
        layers += [
            Conv2d(channels, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(inplace=True),
            MaxPool2dSame(3, 2),
            LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0),
        ]
        channels = 64
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    layers.append(nn.Flatten())
    layers += hidden_fc(channels * h * w, 384, dropout)
    layers += hidden_fc(384, 192, dropout)
    layers.append(nn.Linear(192, num_classes))
    return nn.Sequential(*layers)
