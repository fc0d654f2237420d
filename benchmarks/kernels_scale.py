"""Scale check of Section 5's kernel solve on the JPEG CIFAR-10: one JSON line with run_kernel's result.

    python benchmarks/kernels_scale.py --root data/cifar10-jpeg.zip --n-train 2000 [--features pixels]

gamma for CIFAR-10 pixels (x / 255 in [0, 1], d = 3072): the paper gives no value. With --gamma left out
run_kernel uses the median heuristic, gamma = 1 / median |x_i - x_j|^2 over the pairs of a seeded sample of
1,000 training images: 0.0029 on the CIFAR-10 training set (median squared distance ~340; seed 0,
measured at n-train 2000 and 12000). The same
heuristic on MNIST pixels gives ~0.01, the order of the paper's MNIST value 0.02.

The solver is "auto": the float64 Cholesky up to n = 10,000, the in-place blocked float32 Cholesky above
(n = 50,000: a 10 GB kernel buffer, ~12 GB allocated with pixels, ~40 min on 2 CPU cores; see
rethinking.section5.kernels). The printed line
also holds the loading time, the memory model of the blocked solver for this n and the machine's threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--root", default="data/cifar10-jpeg.zip", help="image folder or .zip (train/<class>/*, test/<class>/*)"
    )
    p.add_argument("--n-train", type=int, default=None, help="seeded class-balanced training subset (default: all)")
    p.add_argument("--n-test", type=int, default=None, help="seeded class-balanced test subset (default: all)")
    p.add_argument("--features", default="pixels", choices=["pixels", "random-conv"])
    p.add_argument("--gamma", type=float, default=None, help="kernel width (default: median heuristic)")
    p.add_argument("--ridge", type=float, default=0.0)
    p.add_argument("--n-filters", type=int, default=256)
    p.add_argument("--pool", type=int, default=2, help="random-conv pooling grid (pool x pool)")
    p.add_argument("--solver", default="auto", choices=["auto", "cholesky64", "blocked32", "cg"])
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--jitter", type=float, default=None)
    p.add_argument("--refine", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from rethinking.data.sources import load_imagefolder
    from rethinking.section5.kernels import blocked_memory_model, run_kernel

    t0 = time.perf_counter()
    xtr, ytr, xte, yte, classes, prov = load_imagefolder(args.root)
    load_s = time.perf_counter() - t0
    data = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    res = run_kernel(
        data,
        features=args.features,
        gamma=args.gamma,
        ridge=args.ridge,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        n_filters=args.n_filters,
        pool=args.pool,
        device=args.device,
        block=args.block,
        solver=args.solver,
        jitter=args.jitter,
        refine=args.refine,
    )
    model = blocked_memory_model(res["n_train"], res["d"], res["n_test"], args.block)
    res.update(
        root=str(args.root),
        shape=list(xtr.shape[1:]),
        load_seconds=round(load_s, 2),
        blocked32_model_peak_gb=round(model["peak_gb"], 3),
        threads=torch.get_num_threads(),
    )
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
