"""float32 that is float32 on CUDA: one switch for the engines' evaluation and the kernel solver."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def _legacy(read):
    """A legacy TF32 getter's value, or None where torch refuses to read it (a mix of its old and new APIs)."""
    try:
        return read()
    except RuntimeError:
        return None


@contextmanager
def exact_float32():
    """Inside: float32 convolutions and matmuls in IEEE float32, not TF32; after: the previous settings, exactly.

    cuDNN convolutions use TF32 on Ampere and later GPUs by default (torch.backends.cudnn.allow_tf32 is
    True): 10 mantissa bits, ~1e-3 relative error, so the random-conv features would differ from the CPU's
    before a near-singular kernel solve. cuBLAS float32 matmuls (the kernel matrix's row blocks, the blocked
    Cholesky's trailing updates, the triangular solves' panels, CG's K p) use TF32 when
    torch.backends.cuda.matmul.allow_tf32 or torch.set_float32_matmul_precision('high' or 'medium') says so:
    off by default and nowhere in this package, but a caller may set it. Both are turned off here:
    cudnn.allow_tf32 = False and set_float32_matmul_precision('highest') (which also keeps oneDNN's float32
    matmuls in float32 on the CPU), and the per-op settings of torch's newer API (cudnn.conv / cudnn.rnn /
    cuda.matmul fp32_precision) are set to 'ieee' explicitly, so a TF32 default inherited from
    torch.backends.fp32_precision cannot creep back in. On exit every one of them is put back as it was:
    the legacy flags through their setters, then the per-op values over them. Nests; a no-op for float64.
    """
    cudnn, cuda_mm, mkldnn_mm = torch.backends.cudnn, torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    cudnn_tf32, matmul_precision = _legacy(lambda: cudnn.allow_tf32), _legacy(torch.get_float32_matmul_precision)
    per_op = [(knob, knob.fp32_precision) for knob in (cudnn.conv, cudnn.rnn, cuda_mm, mkldnn_mm)]
    try:
        cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")  # cuda.matmul.allow_tf32 = False, and oneDNN's
        for knob in (cudnn.conv, cudnn.rnn, cuda_mm):
            knob.fp32_precision = "ieee"
        yield
    finally:
        if cudnn_tf32 is not None:
            cudnn.allow_tf32 = cudnn_tf32
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        for knob, value in per_op:
            knob.fp32_precision = value
