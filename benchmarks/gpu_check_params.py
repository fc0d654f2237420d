"""Helpers of benchmarks/gpu_check.sh (run from the repository root; not part of the package).

python benchmarks/gpu_check_params.py make OUT_PARAMS      the check's params file, from
    benchmarks/gpu-check.yaml and the script's settings (environment variables: RESULTS, DATASET,
    ROOT, TRAIN_SIZE, TEST_SIZE, EPOCHS, BATCH, CROP, TRAIN_MODELS, DEVICE, THREADS); validated, with
    jobs_per_gpu >= the number of runs so that every run holds a GPU slot at once. Also writes
    runs.txt and corruptions.txt beside it.
python benchmarks/gpu_check_params.py finished PARAMS OUT_PARAMS
    PARAMS itself when every run has its summary.json; else a params file whose grid holds only
    the finished runs (so `aggregate` tabulates what a time limit left instead of failing), and
    the missing runs on stdout. Exits 1 when no run finished.
python benchmarks/gpu_check_params.py merge-bench DIR OUT_JSON [VERSIONS_JSON]
    every DIR/*.json that `bench --json` wrote, as one JSON object {file stem: results}; with the info
    step's versions.json, every result (and file) gets its "torch" and the object a "versions" entry.
python benchmarks/gpu_check_params.py carry [PATH ...]
    the bytes the device tool would carry: the working tree git lists (tracked and untracked, not
    ignored) plus each PATH (the ignored paths to name in `carry`); exits 3 when a PATH is missing
    or the total is over the tool's 64 MiB.
python benchmarks/gpu_check_params.py tiny DIR
    the paths steps' inputs (no GPU needed): DIR/tree, a tree of 4 classes x (6 train + 2 val/test) 32x32
    JPEGs; DIR/folder.yaml (imagefolder: two MLP 1x512 runs packed, an AlexNet run to kill and resume),
    DIR/stream.yaml (imagenet source: AlexNet streamed by 2 processes under torchrun, DDP; on a machine
    with fewer than 2 GPUs the 2 processes run on the CPU, gloo), DIR/decode.yaml (streamed, decode:
    device, on DEVICE resolved: never auto); each prepared and corrupted, its run ids in DIR/<name>.runs;
    DIR/decode.skip holds why the decode step cannot run (torchcodec missing).
python benchmarks/gpu_check_params.py killed PARAMS RUN EPOCH
    trains RUN and ends the process (os._exit, as a kill) right after its checkpoint of epoch EPOCH.
python benchmarks/gpu_check_params.py trim SRC_ZIP DST_ZIP PER_CLASS
    a copy of an image-folder zip with PER_CLASS training images of each class and every test image
    (the JPEG CIFAR-10 at 4,500 per class: 56.9 MiB of the full 62.3, so the carry fits as the tree grows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CARRY_LIMIT = 64 * 2**20
MiB = 2**20


def _words(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def make(out: str) -> None:
    import yaml

    from rethinking.plan import corruptions_of, expand_runs, load

    env = os.environ
    p = yaml.safe_load(Path("benchmarks/gpu-check.yaml").read_text())
    p["results_dir"] = env.get("RESULTS", p["results_dir"])
    ds = p["dataset"]
    source = env.get("DATASET") or ds["source"]
    if source != ds["source"] or (env.get("ROOT") and env["ROOT"] != ds.get("root")):
        ds["name"] = None  # another dataset than the yaml's: let the name derive from it
    ds["source"] = source
    if source in ("imagefolder", "cifar10"):
        ds["root"] = env.get("ROOT") or ds.get("root")
    else:
        ds.pop("root", None)
    for key, var in (("train_size", "TRAIN_SIZE"), ("test_size", "TEST_SIZE")):
        if env.get(var):
            ds[key] = int(env[var])
            if ds.get("name"):
                ds["name"] += f"-{key.split('_')[0]}{ds[key]}"
    if env.get("CROP"):
        p["preprocess"]["crop"] = None if env["CROP"] in ("none", "null") else int(env["CROP"])
    elif source == "digits":
        p["preprocess"]["crop"] = 7  # 8x8 images (the yaml's 28 is for CIFAR's 32x32)
    t = p["training"]
    if env.get("EPOCHS"):
        t["max_epochs"] = int(env["EPOCHS"])
    if env.get("BATCH"):
        t["batch_size"] = int(env["BATCH"])
    if env.get("DEVICE"):
        t["device"] = env["DEVICE"]
    if env.get("THREADS"):
        t["threads"] = int(env["THREADS"])
    group = p["grid"][0]
    if _words("TRAIN_MODELS"):
        group["models"] = _words("TRAIN_MODELS")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        out.write_text(
            "# written by benchmarks/gpu_check.sh from benchmarks/gpu-check.yaml\n" + yaml.safe_dump(p, sort_keys=False)
        )
        return load(out)  # validates (schema and checks), as every command will

    runs = expand_runs(write())
    t["jobs_per_gpu"] = max(t.get("jobs_per_gpu", 1), len(runs))  # every run holds a GPU slot at once
    cfg = write()
    (out.parent / "runs.txt").write_text("".join(r.id + "\n" for r in runs))
    (out.parent / "corruptions.txt").write_text("".join(c.id + "\n" for c in corruptions_of(runs)))
    print(
        f"{out}: {len(runs)} runs, {cfg['training']['max_epochs']} epochs, device {cfg['training']['device']}, "
        f"jobs_per_gpu {cfg['training']['jobs_per_gpu']}, dataset {ds['source']} {ds.get('root') or ''}"
    )


def finished(params: str, out: str) -> None:
    import yaml

    from rethinking.plan import expand_runs, load, run_dir

    cfg = load(params)
    runs = expand_runs(cfg)
    done = {r for r in runs if (run_dir(cfg, r) / "summary.json").is_file()}
    if len(done) == len(runs):
        Path(out).write_text(Path(params).read_text())
        print(f"all {len(runs)} runs finished")
        return
    for r in runs:
        if r not in done:
            print(f"not finished (left out of the tables): {r.id}")
    seeds = set(cfg["seeds"])
    cells = {}
    for r in runs:
        cells.setdefault((r.model, r.corruption, r.regularizers), []).append(r)
    groups = []
    for (model, c, regs), members in sorted(cells.items(), key=lambda kv: kv[1][0].id):
        if {m.seed for m in members if m in done} != seeds:
            continue
        if c.kind == "labels":
            corr = (
                {"corruptions": ["random_labels"]}
                if c.level == 1.0
                else {"corruptions": ["labels"], "levels": [c.level]}
            )
        else:
            corr = {"corruptions": [c.kind]}
        groups.append({"name": f"finished{len(groups)}", "models": [model], **corr, "regularizers": [regs]})
    if not groups:
        sys.exit("gpu_check: no run finished; nothing to aggregate")
    p = yaml.safe_load(Path(params).read_text())
    p["grid"] = groups
    Path(out).write_text("# the finished runs of " + params + "\n" + yaml.safe_dump(p, sort_keys=False))
    load(out)
    print(f"{len(done)} of {len(runs)} runs finished: tables of those ({out})")


def merge_bench(folder: str, out: str, versions: str | None = None) -> None:
    """The bench files as one; with `versions` (the info step's versions.json), each result (and each
    DIR/*.json, rewritten) also names the torch it was measured with: the device image's."""
    info = json.loads(Path(versions).read_text()) if versions and Path(versions).is_file() else {}
    torch_version = info.get("torch", "unknown")
    merged = {"versions": info} if info else {}
    for f in sorted(Path(folder).glob("*.json")):
        try:
            result = json.loads(f.read_text())
        except json.JSONDecodeError as exc:  # a bench cut off while writing
            merged[f.stem] = {"error": f"unreadable: {exc}", "torch": torch_version}
            continue
        for r in result if isinstance(result, list) else [result]:
            if isinstance(r, dict):
                r.setdefault("torch", torch_version)
        f.write_text(json.dumps(result, indent=2) + "\n")
        merged[f.stem] = result
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    print(f"{out}: {', '.join(merged) or 'no bench results'}")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def carry(paths: list[str]) -> int:
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, check=True
            )
            .stdout.decode()
            .split("\0")
        )
        tree = sum(Path(n).stat().st_size for n in listed if n and Path(n).is_file() and not Path(n).is_symlink())
        parts = [("working tree (git ls-files)", tree)]
    except (OSError, subprocess.CalledProcessError):
        parts = [("working tree: not a git checkout here, not counted", 0)]
    rc = 0
    for p in paths:
        path = Path(p)
        if not path.exists():
            print(f"carry: {p}: missing")
            rc = 3
            continue
        if path.is_symlink():  # the device tool carries a link as a link, not what it points to
            print(f"carry: {p}: a symbolic link; it would travel as a link only: copy the file instead")
            rc = 3
        parts.append((p, _size(path)))
    total = sum(n for _, n in parts)
    for name, n in parts:
        print(f"carry: {n / MiB:8.2f} MiB  {name}")
    print(
        f"carry: {total / MiB:8.2f} MiB  in all, of the {CARRY_LIMIT // MiB} MiB a device call carries"
        + ("" if total <= CARRY_LIMIT else "  OVER THE LIMIT")
    )
    print("carry: " + json.dumps(paths))
    return 3 if total > CARRY_LIMIT else rc


def _jpeg_tree(root: Path) -> None:
    """train/, val/ and test/ (test: val's images) of 4 classes of 32x32 JPEGs: a class colour on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for k in range(4):
            for d in (root / split / f"n0{k}", *([root / "test" / f"n0{k}"] if split == "val" else [])):
                d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = np.array([60 * k, 255 - 50 * k, 40 + 60 * k]) % 256
                im = Image.fromarray(np.clip(colour + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8))
                im.save(root / split / f"n0{k}" / f"n0{k}_{i:04d}.JPEG", quality=90)
                if split == "val":
                    im.save(root / "test" / f"n0{k}" / f"n0{k}_{i:04d}.JPEG", quality=90)


def _tiny_params(folder: Path, tree: Path, device: str) -> dict:
    """The three params files of the paths steps (see the module's docstring)."""
    threads = {"threads": int(os.environ["THREADS"])} if os.environ.get("THREADS") else {}
    common = {"batch_size": 8, "log_every": 1, "eval_batch_size": 64, "device": device, **threads}
    streamed = {**common, "max_epochs": 1, "image_size": 32, "workers": 0}
    grid = [{"name": "t", "models": ["alexnet"], "corruptions": ["random_labels"]}]
    ddp_device = device
    if device != "cpu":
        import torch

        ddp_device = "cuda" if torch.cuda.device_count() >= 2 else "cpu"
    decode_device = device
    if device == "auto":
        import torch

        decode_device = "cuda" if torch.cuda.is_available() else "cpu"
    imagenet = {"source": "imagenet", "root": str(tree)}
    return {
        "folder": {
            "dataset": {"source": "imagefolder", "root": str(tree), "name": "tiny-tree", "seed": 0},
            "preprocess": {"crop": 28},
            "training": {**common, "max_epochs": 2, "pack": {"mlp_1x512": 2, "default": 1}},
            "grid": [
                {"name": "packed", "models": ["mlp_1x512"], "corruptions": ["true_labels", "random_labels"]},
                {"name": "resumed", "models": ["alexnet"], "corruptions": ["random_labels"]},
            ],
        },
        "stream": {
            "dataset": imagenet,
            "training": {**streamed, "device": ddp_device, "gpus_per_run": 2},
            "grid": grid,
        },
        "decode": {
            "dataset": imagenet,
            "training": {**streamed, "device": decode_device, "decode": "device"},
            "grid": grid,
        },
    }


def tiny(folder: str) -> None:
    import importlib.util

    import yaml

    from rethinking.data.corrupt import corrupt
    from rethinking.plan import corruptions_of, expand_runs, is_streamed, load

    folder = Path(folder).resolve()
    tree = folder / "tree"
    _jpeg_tree(tree)
    for name, p in _tiny_params(folder, tree, os.environ.get("DEVICE") or "auto").items():
        p = {"results_dir": str(folder / name), "seeds": [0], **p}
        path = folder / f"{name}.yaml"
        path.write_text(f"# written by benchmarks/gpu_check.sh (gpu_check_params.py tiny)\n{yaml.safe_dump(p)}")
        cfg = load(path)
        if is_streamed(cfg):
            from rethinking.data.stream import prepare_index

            prepare_index(cfg)
        else:
            from rethinking.data.sources import prepare

            prepare(cfg)
        runs = expand_runs(cfg)
        for c in corruptions_of(runs):
            corrupt(cfg, c)
        (folder / f"{name}.runs").write_text("".join(r.id + "\n" for r in runs))
        print(f"{path}: device {cfg['training']['device']}, {len(runs)} runs")
    if importlib.util.find_spec("torchcodec") is None:
        (folder / "decode.skip").write_text("torchcodec missing\n")
        print("torchcodec missing: the decode step will be skipped")


def killed(params: str, run_id: str, epoch: str) -> None:
    """Train a run and end the process, as a kill would, right after epoch `epoch`'s checkpoint."""
    from rethinking.engine import loop
    from rethinking.plan import find_run, load

    cfg, real = load(params), loop.save_checkpoint

    def save_and_die(out, fingerprint, model, opt, progress, *args, **kw):
        real(out, fingerprint, model, opt, progress, *args, **kw)
        if progress.epoch == int(epoch):
            print(f"killed after the checkpoint of epoch {epoch}", flush=True)
            os._exit(0)

    loop.save_checkpoint = save_and_die
    loop.train(cfg, find_run(cfg, run_id))
    sys.exit(f"{run_id}: ended before epoch {epoch}'s checkpoint")


def trim(src: str, dst: str, per_class: str) -> None:
    """A copy of an image-folder zip with the first `per_class` training images of each class (by name) and
    every test image: the JPEG CIFAR-10 (62.3 MiB) with 4,500 per class is 56.9 MiB, so the carry keeps room
    for the working tree as it grows."""
    import zipfile

    keep, counts = int(per_class), {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            parts = info.filename.split("/")
            if parts[0] == "train" and len(parts) == 3 and parts[2]:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
                if counts[parts[1]] > keep:
                    continue
            zout.writestr(info, zin.read(info))
    print(f"{dst}: {min(keep, max(counts.values(), default=0))} training images per class of {len(counts)}")


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "make":
        make(*args)
    elif cmd == "finished":
        finished(*args)
    elif cmd == "merge-bench":
        merge_bench(*args)
    elif cmd == "carry":
        return carry(args)
    elif cmd == "tiny":
        tiny(*args)
    elif cmd == "killed":
        killed(*args)
    elif cmd == "trim":
        trim(*args)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
