"""The small AlexNet's training step against its plain-torch reference, in one process (issue #18).

    python benchmarks/alexnet_step.py [--shape 1x7x7] [--batch-size 32] [--threads 1] [--reps 9] [--profile]

One step: forward, cross-entropy, backward, the engine's fused SGD (optim.SGD, momentum 0.9) on a
fixed random batch. "reference" is the same network from torch's own layers (nn.Conv2d, an -inf
padded F.max_pool2d, nn.LocalResponseNorm: what models/alexnet.py computed before #18); "alexnet"
is build_model's. Both are timed interleaved (reference, alexnet, reference, ...; `--steps` steps per
repetition) so that load from other processes on a shared machine hits both alike; prints the best
and median ms per step and the ratio of the bests and of the medians. --profile adds torch.profiler's
top ops of each (self CPU time, share of the step).
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from rethinking.engine.optim import SGD as sgd
from rethinking.models import build_model
from rethinking.models.alexnet import LocalResponseNorm, MaxPool2dSame, _same_pool_pads


class PaddedMaxPool(nn.Module):
    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        top, bottom = _same_pool_pads(x.shape[-2], self.kernel_size, self.stride)
        left, right = _same_pool_pads(x.shape[-1], self.kernel_size, self.stride)
        return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), self.kernel_size, self.stride)


def reference(model: nn.Sequential) -> nn.Sequential:
    """`model` rebuilt from torch's plain layers, with its parameters."""
    layers = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
            plain.load_state_dict(m.state_dict())
            m = plain
        elif isinstance(m, MaxPool2dSame):
            m = PaddedMaxPool(m.kernel_size, m.stride)
        elif isinstance(m, LocalResponseNorm):
            m = nn.LocalResponseNorm(m.size, m.alpha, m.beta, m.k)
        layers.append(m)
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1x7x7", help="C x H x W (digits: 1x7x7, CIFAR-10 crop: 3x28x28)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--steps", type=int, default=30, help="steps per repetition")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split("x"))
    torch.manual_seed(0)
    new = build_model("alexnet", shape, 10)
    models = {"reference": reference(new), "alexnet": new}
    x = torch.randn(args.batch_size, *shape)
    y = torch.randint(0, 10, (args.batch_size,))
    steps = {}
    for name, m in models.items():
        opt = sgd(m.parameters(), 0.01, 0.9)

        def step(m=m, opt=opt):
            loss = F.cross_entropy(m(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(5):
            step()
        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    summary = {name: (min(t), sorted(t)[len(t) // 2]) for name, t in times.items()}
    for name, (best, median) in summary.items():
        print(f"{name:10s} best {best:7.2f}  median {median:7.2f} ms/step")
    (rb, rm), (nb, nm) = summary["reference"], summary["alexnet"]
    print(
        f"alexnet / reference: {nb / rb:.3f} (best), {nm / rm:.3f} (median); "
        f"{args.batch_size}x{args.shape}, {args.threads} thread(s)"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    step()
            events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "Optimizer" in e.key]
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            print(f"\n{name}: {total / 20 / 1000:.2f} ms/step profiled; top ops by self CPU time")
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
                ms, share = e.self_cpu_time_total / 20 / 1000, 100 * e.self_cpu_time_total / total
                print(f"  {e.key:42s} {ms:6.2f} ms  {share:5.1f}%")


if __name__ == "__main__":
    main()
