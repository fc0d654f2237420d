"""What building and stepping the optimizer costs a fresh training process: torch.optim.SGD(fused=True)
against the engine's optim.SGD (the same kernel), each in new Python processes, alternated.

    python benchmarks/optimizer_import.py [--repeats 5]

Each process imports torch, builds MLP 1x512 and its optimizer and takes one step; the figure is that
process's wall time and whether torch._dynamo ended up imported. torch's Optimizer imports torch._dynamo
the first time one is built and stepped; every training job of the pipeline is such a process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, torch
from rethinking.models import build_model
from rethinking.engine.optim import SGD
m = build_model("mlp_1x512", (1, 7, 7), num_classes=10)
opt = {ctor}(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4{extra})
m(torch.zeros(2, 1, 7, 7)).sum().backward()
opt.step()
print("torch._dynamo" in sys.modules)
"""
KINDS = {"torch.optim.SGD(fused=True)": ("torch.optim.SGD", ", fused=True"), "rethinking.engine.optim.SGD": ("SGD", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env_path = str(Path(__file__).resolve().parents[1] / "workflow")
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    dynamo = {}
    for _ in range(args.repeats):
        for kind, (ctor, extra) in KINDS.items():
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", SCRIPT.format(ctor=ctor, extra=extra)],
                check=True,
                capture_output=True,
                text=True,
                env={"PYTHONPATH": env_path, "PATH": ""},
            ).stdout
            times[kind].append(time.perf_counter() - t)
            dynamo[kind] = out.strip()
    base = statistics.median(times["torch.optim.SGD(fused=True)"])
    for kind, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{kind:30s} process {med:5.2f} s (median of {len(ts)}; {min(ts):.2f}-{max(ts):.2f})  "
            f"torch._dynamo imported: {dynamo[kind]}  ratio to torch's: {med / base:.2f}"
        )


if __name__ == "__main__":
    main()
