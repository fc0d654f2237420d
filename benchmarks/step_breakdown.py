"""Where one training step's time goes: gather, preprocessing, forward+backward, optimizer step.

    python benchmarks/step_breakdown.py [--model mlp_1x512] [--threads 2] [--batch 128] [--weight-decay 0]

Random uint8 images of CIFAR-10's shape (3x32x32, 28x28 center crop); prints
milliseconds per step for each part (50 timed repetitions after 3 warm-ups), the
once-per-run preparation of all 50,000 images, and the GFLOP/s of matrix products
alone (the layer-1 shape, and 2048x2048).
"""

import argparse
import time

import torch
import torch.nn.functional as F

from rethinking.data.preprocess import prepare_all, prepare_batch
from rethinking.engine.optim import SGD as sgd
from rethinking.models import build_model


def timed(fn, n=50):
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp_1x512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (50_000,))
    model = build_model(args.model, (3, 28, 28))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=args.weight_decay)
    fused = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=args.weight_decay)
    idx = torch.randperm(50_000)[: args.batch]
    xb, yb = x[idx], y[idx]
    xp = prepare_batch(xb, 28)

    def fwd_bwd():
        F.cross_entropy(model(xp), yb).backward()

    parts = {
        "gather": timed(lambda: x[idx]),
        "crop+standardize": timed(lambda: prepare_batch(xb, 28)),
        "forward+backward": timed(fwd_bwd),
        "sgd step (torch default)": timed(opt.step),
        "sgd step (fused, optim.SGD)": timed(fused.step),
    }
    for name, ms in parts.items():
        print(f"{name:28s} {ms:7.2f} ms")
    t0 = time.perf_counter()
    prepare_all(x, 28)
    print(f"prepare_all, 50,000 images   {time.perf_counter() - t0:7.2f} s (once per run)")
    print(f"forward+backward alone: {args.batch / parts['forward+backward'] * 1000:,.0f} images/s")
    # the machine's matrix-product rate: the ceiling of any loop on an MLP
    for name, a, b in (
        ("sgemm 128x2352 @ 2352x512", torch.randn(args.batch, 2352), torch.randn(2352, 512)),
        ("sgemm 2048x2048 @ 2048x2048", torch.randn(2048, 2048), torch.randn(2048, 2048)),
    ):
        ms = timed(lambda a=a, b=b: a @ b, n=20)
        print(f"{name:28s} {2 * a.shape[0] * a.shape[1] * b.shape[1] / ms / 1e6:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
