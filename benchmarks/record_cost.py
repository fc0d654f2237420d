"""What the per-example record (rethinking.engine.examples) costs a run: whole runs with and without it.

    python benchmarks/record_cost.py [--models mlp_1x512 alexnet] [--epochs 20] [--reps 3] [--pack 1]

Each case trains one run of the default experiment's settings (params.yaml: digits, batch 32, 1 thread)
on random labels for exactly --epochs epochs (random labels do not fit that soon), through the engine
itself (loop.train_runs: steps, the evaluation of the training and test sets, the checkpoint after every
epoch, the summary), in this process, from a fresh run folder each time:
  record     the engine as it is;
  no record  the same with the record replaced by one that does nothing (no running sums, nothing in the
             checkpoint, no examples.npz): the engine before issue #23.
The two alternate (record, no record, record, ...) so that load from other processes hits both alike;
it prints each one's median wall time, the ratio of the medians, and the size of examples.npz.
With --pack K, K runs (seeds 0..K-1) train as one pack, as the default experiment packs MLP 1x512.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop
from rethinking.engine.examples import EXAMPLES

REPO = Path(__file__).resolve().parent.parent


class NoRecord:
    """An ExampleRecord that keeps nothing: the engine without the record."""

    def __init__(self, *args, **kwargs):
        pass

    def begin(self, epoch):
        pass

    def add(self, logits, y, right=None):
        pass

    def end(self):
        pass

    def state(self, reduce=None):
        return {}

    def load(self, state):
        pass


def _train(cfg, runs, record: bool) -> float:
    """Seconds to train `runs` from scratch (one pack), with or without the record."""
    real_record, real_finished = loop.ExampleRecord, loop.finished
    if not record:
        loop.ExampleRecord, loop.finished = NoRecord, lambda *a, **k: None
    try:
        for r in runs:
            shutil.rmtree(rc.run_dir(cfg, r), ignore_errors=True)
        t0 = time.perf_counter()
        loop.train_runs(cfg, runs, log=lambda *_: None)
        return time.perf_counter() - t0
    finally:
        loop.ExampleRecord, loop.finished = real_record, real_finished


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["mlp_1x512", "alexnet"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pack", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = rc.load(REPO / "params.yaml")
        cfg["results_dir"] = tmp
        cfg["training"].update(max_epochs=args.epochs, pack={"default": args.pack})
        prepare(cfg)
        corruption = rc.Corruption.parse("random-labels")
        corrupt(cfg, corruption)
        for model in args.models:
            runs = [rc.Run(rc.dataset_id(cfg), corruption, model, "none", s) for s in range(args.pack)]
            times = {True: [], False: []}
            _train(cfg, runs, True)  # warm-up: first-call costs out of the timings
            for _ in range(args.reps):
                for record in (True, False):
                    times[record].append(_train(cfg, runs, record))
            _train(cfg, runs, True)
            size = (rc.run_dir(cfg, runs[0]) / EXAMPLES).stat().st_size
            on, off = statistics.median(times[True]), statistics.median(times[False])
            print(
                f"{model}{f' (pack of {args.pack})' if args.pack > 1 else ''}, {args.epochs} epochs: "
                f"record {on:.2f} s, no record {off:.2f} s (medians of {args.reps}), ratio {on / off:.3f}; "
                f"examples.npz {size / 1024:.0f} KiB per run"
            )
            print(f"  record:    {' '.join(f'{t:.2f}' for t in times[True])}")
            print(f"  no record: {' '.join(f'{t:.2f}' for t in times[False])}")


if __name__ == "__main__":
    main()
