"""Forward + backward of one step at batch 128: K runs stacked (vmap) against K single models.

    python benchmarks/pack_step.py --model mlp_1x512 --pack 4 [--threads 2] [--repeats 2]

Random inputs of shape 3x28x28, alternating packed and single passes; prints images/s (aggregate
over the K runs) for each pass. The optimizer step and data gathering are left out: this isolates
what stacking changes. `python -m rethinking bench --pack K` measures the whole training loop.

    python benchmarks/pack_step.py --model mlp_1x512 --pack 10 --engine [--weight-decay 5e-4]

--engine times the engine's whole packed step instead (rethinking.engine.pack.Stacked.step: the
batched forward, backward and the foreach SGD update), K runs' images/s; with PYTHONPATH pointing at
another checkout's workflow/ it measures that checkout's step (back to back: before/after a change);
--aligned forces the update's CUDA operand layout (Stacked._update) on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from rethinking.models import build_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp_1x512")
    p.add_argument("--pack", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--engine", action="store_true", help="time Stacked.step (forward, backward, SGD update)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--aligned", action="store_true", help="--engine: the update's CUDA operand layout on any device")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    k, b = args.pack, args.batch_size
    models = []
    for s in range(k):
        torch.manual_seed(s)
        models.append(build_model(args.model, (3, 28, 28), 10))
    if args.engine:
        return engine_step(models, args)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x, y = torch.randn(k, b, 3, 28, 28), torch.randint(0, 10, (k, b))

    def loss(p_, b_, xx, yy):
        return F.cross_entropy(functional_call(base, (p_, b_), (xx,)), yy)

    batched = vmap(loss)

    def packed():
        torch.autograd.grad(batched(params, buffers, x, y).sum(), list(params.values()))

    def single():
        for i, m in enumerate(models):
            m.zero_grad()
            F.cross_entropy(m(x[i]), y[i]).backward()

    for fn in (packed, single) * args.repeats:
        fn()  # warm-up
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        print(f"{fn.__name__:7s} {k * b * args.steps / (time.perf_counter() - t):10.0f} images/s")


def engine_step(models, args) -> None:
    """images/s of the engine's packed step, the update included (the pack's SGD with momentum 0.9)."""
    import contextlib

    from rethinking.engine.pack import Stacked

    k, b = args.pack, args.batch_size
    stacked = Stacked(models, momentum=0.9, weight_decay=args.weight_decay)
    if args.aligned:
        stacked.aligned = True
    stacked.set_lrs([0.01 * (1 + i) for i in range(k)])
    x, y = torch.randn(k, b, 3, 28, 28), torch.randint(0, 10, (k, b))
    for _ in range(args.repeats):
        stacked.step(x, y, contextlib.nullcontext)  # warm-up
        t = time.perf_counter()
        for _ in range(args.steps):
            stacked.step(x, y, contextlib.nullcontext)
        print(f"engine  {k * b * args.steps / (time.perf_counter() - t):10.0f} images/s")


if __name__ == "__main__":
    main()
