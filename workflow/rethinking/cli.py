"""`python -m rethinking <command>`: the commands every Snakemake rule and DVC stage calls.

Bad input (params, data paths, damaged artifacts) exits with status 2 and one
line naming the key or file, the bad value and what is allowed; no traceback,
and nothing written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .errors import ConfigError
from .plan import (
    artifact_name,
    artifacts_of,
    check_data,
    dataset_id,
    expand_runs,
    find_run,
    is_streamed,
    load,
    parse_artifact,
    train_size_of,
)

DEFAULT_PARAMS = "params.yaml"


def _params_arg(p):
    p.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: params.yaml)")


def cmd_prepare(args):
    cfg = load(args.params)
    check_data(cfg, args.params)
    if args.dataset not in (None, dataset_id(cfg)):  # a training-set size: a subset of the params' dataset
        from .data.subsets import prepare_subset

        train_size_of(cfg, args.dataset)  # a dataset id of this grid, or a one-line error naming them
        print(prepare_subset(cfg, args.dataset))
        return
    if is_streamed(cfg):  # an ImageNet-style tree: an index of its files, no pixels
        from .data.stream import prepare_index

        print(prepare_index(cfg))
        return
    from .data.sources import prepare

    print(prepare(cfg))


def cmd_corrupt(args):
    from .data.corrupt import corrupt

    cfg = load(args.params)
    dataset, c = parse_artifact(cfg, args.corruption)
    needed = artifacts_of(expand_runs(cfg))
    if (dataset, c) not in needed:
        allowed = ", ".join(artifact_name(*a) for a in needed)
        raise ConfigError(f"--corruption: {args.corruption!r} is not in this config's grid (allowed: {allowed})")
    print(corrupt(cfg, c, dataset))


def cmd_train(args):
    cfg = load(args.params)
    if args.device:
        cfg["training"]["device"] = args.device
    runs = [find_run(cfg, r) for r in args.run]
    from .plan.packs import check_models

    check_models(cfg, runs, args.params)  # torchvision and user models: before any work
    if is_streamed(cfg):  # images read from disk while training, one run in one or several processes
        if len(runs) > 1:
            raise ConfigError("--run: a streamed run (dataset.source imagenet) trains alone; give one --run")
        from .engine.streamed import train

        train(cfg, runs[0])
        return
    from .engine.loop import train_runs

    train_runs(cfg, runs)


def cmd_aggregate(args):
    from .analysis.aggregate import aggregate

    print(aggregate(load(args.params)))


def cmd_records(args):
    from .analysis.records import records

    print(records(load(args.params)))


def cmd_figures(args):
    from .analysis.figures import figures

    print(figures(load(args.params)))


def cmd_jobs(args):
    from .analysis.jobs import jobs
    from .pipeline.stages import expected_jobs

    cfg = load(args.params)
    print(jobs(cfg, expected_jobs(cfg)))


def cmd_examples(args):
    from .analysis.examples import ranked

    frame = ranked(args.run_folder, args.by, args.top)
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
        return
    shown = frame.assign(learned_epoch=[str(e) if e > 0 else "never" for e in frame["learned_epoch"]])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def cmd_runs(args):
    cfg = load(args.params)
    for run in expand_runs(cfg):
        print(run.id)


def cmd_packs(args):
    from .plan.packs import plan_packs

    cfg = load(args.params)
    for pack in plan_packs(cfg, expand_runs(cfg)):
        print(" ".join(r.id for r in pack))


def cmd_corruptions(args):
    cfg = load(args.params)
    for dataset, c in artifacts_of(expand_runs(cfg)):
        print(artifact_name(dataset, c))


def cmd_models(args):
    from .errors import ModelError
    from .models import MODELS, check_model

    try:
        shape = tuple(int(v) for v in args.shape.lower().split("x"))
        assert len(shape) == 3 and min(shape) > 0
    except (ValueError, AssertionError):
        raise ConfigError(f"--shape: {args.shape!r} is not CxHxW (e.g. 3x28x28)") from None
    if args.classes < 1:
        raise ConfigError(f"--classes: {args.classes} must be at least 1")
    names = args.model or MODELS
    counts = {}
    for name in names:  # every entry checked before anything is printed
        try:
            counts[name] = check_model(name, shape, args.classes)["parameters"]
        except ModelError as exc:
            raise ConfigError(f"model {exc}") from None
    print(f"# parameters for input {args.shape}, {args.classes} classes")
    for name, n in counts.items():
        print(f"{name:{max(16, max(map(len, names)) + 1)}s} {n:>12,d}")


def cmd_bench(args):
    import json

    import torch

    from .data.sources import load_source
    from .engine.bench import bench
    from .errors import ModelError
    from .models import parse

    for model in args.model:
        try:
            parse(model)
        except ModelError as exc:
            raise ConfigError(f"--model: {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    d = load_source(args.dataset, args.root, args.train_size)  # loaded once for every model
    x, y = d["x_train"], d["y_train"]
    crop = args.crop if args.crop is not None else {32: 28, 8: 7}.get(x.shape[2])
    results = []
    for model in args.model:
        if len(args.model) > 1:
            print(f"# {model}")
        results.append(
            bench(
                model,
                x,
                y,
                crop=crop or None,
                epochs=args.epochs,
                batch_size=args.batch_size,
                device=args.device,
                random_crop=args.random_crop,
                workers=args.workers,
                baseline=not args.no_baseline,
                pack=args.pack,
            )
        )
    if args.json:
        from .files import write_text

        write_text(args.json, json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n")


def cmd_kernels(args):
    if args.dataset is None:  # the pipeline stage
        from .section5.stages import kernels_stage

        print(kernels_stage(_section5(args.params)))
        return
    from .data.sources import load_source
    from .section5.kernels import run_kernel

    data = load_source(args.dataset, args.root, test_size=args.n_test)
    r = run_kernel(
        data,
        features=args.features,
        gamma=args.gamma,
        ridge=args.ridge,
        n_train=args.n_train,
        n_filters=args.n_filters,
        device=args.device,
    )
    print(f"test_error: {r['test_error']:.2f}")
    print(f"train_error: {r['train_error']:.2f}")
    print(f"norm: {r['norm']:.6g}")
    for key in ("n_train", "n_test", "d", "gamma", "ridge", "jitter", "solver", "residual", "seconds", "peak_rss_gb"):
        print(f"{key}: {r[key]}")


def cmd_theorem(args):
    if args.dataset is None:  # the pipeline stage
        from .section5.stages import theorem_stage

        print(theorem_stage(_section5(args.params)))
        return
    from .data.sources import load_source
    from .section5.theorem import theorem_sweep

    row = theorem_sweep(load_source(args.dataset, args.root), [args.n], labels=args.labels, seed=args.seed).iloc[0]
    print(f"weights: {row['weights']}")
    print(f"expected_weights: {2 * row['n'] + row['d']} (2n + d, n={row['n']}, d={row['d']})")
    print(f"max_abs_error: {row['max_abs_error']:.3g}")
    print(f"condition_number: {row['condition_number']:.3g}")


def _section5(params):
    cfg = load(params)
    if not cfg.get("section5"):
        raise ConfigError(f"{params}: section5: not set, so there is no kernels/theorem stage in this grid")
    return cfg


def cmd_dvc(args):
    from .pipeline.dvcgen import check, write

    if args.check:
        check(args.params, args.output)
    else:
        print(write(args.params, args.output))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rethinking", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="dataset -> base artifact")
    _params_arg(p)
    p.add_argument(
        "--dataset", help="a dataset id of the grid (default: the params' dataset; <id>-n<size>: a train_sizes entry)"
    )
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("corrupt", help="base artifact -> corrupted artifact")
    _params_arg(p)
    p.add_argument(
        "--corruption",
        required=True,
        help="[<dataset id>/]<corruption id>, e.g. labels-0.4, random-labels, digits-n400/gaussian",
    )
    p.set_defaults(func=cmd_corrupt)

    p = sub.add_parser("train", help="train one run of the grid (several: one pack, in one process)")
    _params_arg(p)
    p.add_argument(
        "--run",
        "--run-id",
        dest="run",
        required=True,
        action="append",
        help="a run id as `runs` prints it; repeat it to train runs as one pack (see `packs`). "
        "Under torchrun spell it --run-id (torchrun reads --run as its own --run-path)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override training.device")
    p.set_defaults(func=cmd_train)

    for name, func, text in [
        ("aggregate", cmd_aggregate, "run folders -> tables"),
        ("records", cmd_records, "the runs' per-example records -> which labels are wrong (tables, figures)"),
        ("figures", cmd_figures, "tables -> figures"),
        ("jobs", cmd_jobs, "benchmark files (or run summaries) -> per-stage time and memory"),
        ("runs", cmd_runs, "list the runs the config expands to, one per line"),
        ("packs", cmd_packs, "list the runs as training.pack groups them, one process per line"),
        ("corruptions", cmd_corruptions, "list the corrupted datasets the config needs"),
    ]:
        p = sub.add_parser(name, help=text)
        _params_arg(p)
        p.set_defaults(func=func)

    _add_tools(sub)

    p = sub.add_parser("dvc", help="write dvc.yaml for a params file (or --check that it is current)")
    _params_arg(p)
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--check", action="store_true", help="fail with instructions if the file is stale")
    p.set_defaults(func=cmd_dvc)
    return ap


def _add_tools(sub) -> None:
    """The commands that work outside the pipeline: models, bench, and kernels/theorem on their own."""
    p = sub.add_parser("models", help="parameter count of each model for an input shape")
    p.add_argument(
        "model",
        nargs="*",
        help="model entries (default: the paper's five): mlp_<depth>x<width>, "
        "resnet18, torchvision.<name>, path/to/file.py:function, ...",
    )
    p.add_argument("--shape", default="3x28x28", help="CxHxW (default 3x28x28, the paper's CIFAR-10 crop)")
    p.add_argument("--classes", type=int, default=10)
    p.set_defaults(func=cmd_models)

    from .analysis.scores import SCORES

    p = sub.add_parser("examples", help="a run's training examples, most likely mislabeled first (examples.npz)")
    p.add_argument("run_folder", help="a finished run's folder: results/runs/<run id>")
    p.add_argument(
        "--by",
        default="aum",
        choices=list(SCORES),
        help="the score to rank by, most suspect first: "
        + "; ".join(f"{s.name}: {s.text}" for s in SCORES.values())
        + " (default: aum)",
    )
    p.add_argument("--top", type=int, default=20, help="how many (default 20; 0: every example)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    p.set_defaults(func=cmd_examples)

    p = sub.add_parser("bench", help="engine images/s against a conventional DataLoader loop")
    p.add_argument("--model", nargs="+", default=["mlp_1x512"], help="one or more models (see `models`)")
    p.add_argument(
        "--dataset",
        default="digits",
        choices=["digits", "cifar10", "mnist", "fashion_mnist", "kmnist", "cifar100", "svhn", "imagefolder"],
    )
    p.add_argument("--root", help="data location (cifar10, imagefolder)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--crop", type=int, help="crop side (default: 28 for 32x32 images, 7 for 8x8, else none)")
    p.add_argument("--random-crop", action="store_true", help="random instead of center crops")
    p.add_argument("--train-size", type=int, help="a class-balanced subset of the training split")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the baseline")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument(
        "--pack", type=int, default=1, help="also train this many copies as one pack (rethinking.engine.pack)"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("kernels", help="Section 5: min-norm kernel interpolation (stage, or standalone with --dataset)")
    _params_arg(p)
    p.add_argument(
        "--dataset",
        choices=["digits", "cifar10", "mnist", "fashion_mnist", "kmnist", "cifar100", "svhn", "imagefolder"],
        help="standalone: print test_error and norm for this dataset instead of running the stage",
    )
    p.add_argument("--root")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--features", default="pixels", choices=["pixels", "random-conv"])
    p.add_argument("--gamma", type=float, help="default: 1 / median squared distance")
    p.add_argument("--ridge", type=float, default=0.0)
    p.add_argument("--n-filters", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("theorem", help="Theorem 1: the 2n+d weight ReLU net (stage, or standalone with --dataset)")
    _params_arg(p)
    p.add_argument(
        "--dataset",
        choices=["digits", "cifar10", "mnist", "fashion_mnist", "kmnist", "cifar100", "svhn", "imagefolder"],
    )
    p.add_argument("--root")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--labels", default="random", choices=["true", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_theorem)


def main(argv=None) -> int:
    from .errors import ArtifactError, DataError, RunBusyError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not in Python's flush at exit
    except (ConfigError, DataError, ArtifactError, RunBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout stopped (`packs | head -3`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is left in the buffer goes nowhere
        return 128 + signal.SIGPIPE  # a shell's status for a command that SIGPIPE ended (141)
    return 0
