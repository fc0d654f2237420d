"""Does torch.compile pay for the engine's training step? Eager against compiled, compile time included.

    python benchmarks/compile_step.py [--models mlp_1x512 alexnet] [--pack 8] [--steps 300]

For each model (digits shape 1x7x7, batch 32, 1 thread, like the default experiment's runs) and for
the pack step of --pack members (rethinking.engine.pack.Stacked, its batched forward compiled), every case
runs in its own fresh process, back to back:
  eager         the engine's step as it is (optim.SGD, model(x) in eager mode);
  compile cold  torch.compile(model) with an empty inductor cache (a new TORCHINDUCTOR_CACHE_DIR);
  compile warm  the same again with that cache filled by the cold run (a later process on this machine).
Each prints the time to its first finished step (compile included; torch import excluded) and the
steady ms per step after it. "break-even steps" is how many steps a run must take before the compiled
step has paid its compile time back: (first-step time - eager first-step time) / (eager - compiled ms).
A digits run of the default experiment takes 500-8,000 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKFLOW = str(Path(__file__).resolve().parents[1] / "workflow")


def one(model_name: str, pack: int, compiled: bool, steps: int) -> dict:
    """Runs in the child process: time to the first step, then ms per step."""
    t_start = time.perf_counter()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    t_import = time.perf_counter()
    from rethinking.engine.optim import SGD as sgd
    from rethinking.engine.pack import Stacked
    from rethinking.models import build_model

    torch.manual_seed(0)
    shape, k, b = (1, 7, 7), 10, 32
    x = torch.randn(max(pack, 1), b, *shape)
    y = torch.randint(0, k, (max(pack, 1), b))
    if pack > 1:
        stacked = Stacked([build_model(model_name, shape, k) for _ in range(pack)], 0.9, 5e-4)
        if compiled:
            stacked._batched = torch.compile(stacked._batched)
        stacked.set_lrs([0.01] * pack)

        def step():
            stacked.step(x, y, contextlib.nullcontext)
    else:
        model = build_model(model_name, shape, k)
        fwd = torch.compile(model) if compiled else model
        opt = sgd(model.parameters(), 0.01, 0.9, 5e-4)

        def step():
            loss = F.cross_entropy(fwd(x[0]), y[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    step()
    t_first = time.perf_counter()
    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    ms = (time.perf_counter() - t0) / steps * 1000
    return {"import_s": t_import - t_start, "first_step_s": t_first - t_import, "ms_per_step": ms}


def run_case(model: str, pack: int, mode: str, steps: int, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=WORKFLOW, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--child", model, str(pack), str(int(mode != "eager")), str(steps)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, pack, compiled, steps = sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])), int(sys.argv[5])
        print(json.dumps(one(model, pack, compiled, steps)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp_1x512", "alexnet"])
    ap.add_argument("--pack", type=int, default=8, help="also the pack step of this many MLP 1x512 (0: none)")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    cases = [(m, 1) for m in args.models] + ([("mlp_1x512", args.pack)] if args.pack > 1 else [])
    for model, pack in cases:
        with tempfile.TemporaryDirectory() as cache:
            r = {
                mode: run_case(model, pack, mode, args.steps, cache)
                for mode in ("eager", "compile cold", "compile warm")
            }
        name = model if pack == 1 else f"{model} pack of {pack}"
        for mode, v in r.items():
            if "error" in v:
                print(f"{name:24s} {mode:13s} failed: {v['error']}")
                continue
            line = f"{name:24s} {mode:13s} first step {v['first_step_s']:6.2f} s  {v['ms_per_step']:7.3f} ms/step"
            e = r["eager"]
            if mode != "eager" and "error" not in e:
                gain = e["ms_per_step"] - v["ms_per_step"]
                cost = v["first_step_s"] - e["first_step_s"]
                line += f"  ratio to eager {v['ms_per_step'] / e['ms_per_step']:.2f}"
                line += f"  break-even steps {cost / gain * 1000:,.0f}" if gain > 0 else "  never pays"
            print(line, flush=True)


if __name__ == "__main__":
    main()
