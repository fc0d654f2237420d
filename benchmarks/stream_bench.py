"""The streaming loader (rethinking.data.stream) against torchvision's ImageFolder + DataLoader; Inception V3 step time.

    # a tree of ImageNet-like JPEGs: CIFAR-10 images upscaled to 300-500 x 250-450 px (--large-fraction f: that
    # share at 1000-2000 x 750-1500), with Gaussian noise (sd 20) so the files carry detail (70 KB on average
    # at the small sizes); --noise for pure-noise images. Written as train/<class>/*.JPEG and val/<class>/*.JPEG
    python benchmarks/stream_bench.py make-tree --out data/stream-bench --images 512 [--large-fraction 0.1]

    # images/s of one pass over train/ at batch 32, 2 workers each, training transforms (random resized crop 299 +
    # flip) and evaluation transforms (resize 342 + center crop 299)
    python benchmarks/stream_bench.py loaders --root data/stream-bench --workers 2 --batch 32 --size 299

    # seconds per SGD step of Inception V3 (auxiliary head on) at 299x299, and its FLOPs per image
    python benchmarks/stream_bench.py step --size 299 --batch 8 --threads 2

Loaders compared, each over the same images with the same number of worker processes and batch size:
- torchvision: ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize (the reference
  ImageNet recipe), a shuffling DataLoader: float32 batches.
- torchvision-uint8: the same with PILToTensor (uint8 batches, no normalization): what the float conversion costs.
- stream: rethinking.data.stream.StreamImages (one Pillow resize of the crop box, reduced-scale JPEG decoding where
  the box allows, uint8 HWC batches: what training moves to the device, which normalizes).
- stream+normalize: the same plus the normalization to [-1, 1] in this process (what a CPU-only run does).
- stream-device: decode_jpeg in the training process (decode: device): on the CPU, or with --device cuda nvJPEG.
Wall-clock timing starts at the first batch (worker start-up excluded) and counts the images after it; CPU time
(this process and its workers) covers the whole pass. Repeats are interleaved; the median and best are printed.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch


def make_tree(
    out: Path,
    images: int,
    cifar: Path | None,
    noise: bool,
    large_fraction: float = 0.0,
    noise_sd: float = 20.0,
    val_fraction: float = 0.1,
    seed: int = 0,
):
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    if cifar is not None and not noise:
        with zipfile.ZipFile(cifar) as z:
            names = sorted(n for n in z.namelist() if n.startswith("train/") and n.endswith(".jpg"))
            pick = rng.choice(len(names), size=images, replace=False)
            for i in pick:
                n = names[i]
                sources.append((n.split("/")[1], np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB"))))
    else:
        sources = [(f"class{k % 10}", None) for k in range(images)]
    sizes = []
    for k, (cls, arr) in enumerate(sources):
        if rng.random() < large_fraction:  # a large photo: 1000-2000 x 750-1500 px
            w, h = int(rng.integers(1000, 2001)), int(rng.integers(750, 1501))
        else:
            w, h = int(rng.integers(300, 501)), int(rng.integers(250, 451))
        if arr is None:
            img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        else:
            big = np.asarray(Image.fromarray(arr).resize((w, h), Image.BICUBIC), dtype=np.float32)
            img = np.clip(big + rng.normal(0, noise_sd, size=big.shape), 0, 255).astype(np.uint8)
        split = "val" if k < int(images * val_fraction) else "train"
        d = out / split / cls
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{cls}_{k:06d}.JPEG"
        Image.fromarray(img).save(path, format="JPEG", quality=90)
        sizes.append(path.stat().st_size)
    print(
        json.dumps(
            {
                "out": str(out),
                "images": len(sizes),
                "mean_kb": round(np.mean(sizes) / 1024, 1),
                "source": "noise" if noise or cifar is None else f"{cifar} upscaled",
            }
        )
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the loader's workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _synced(batch):
    if batch[0].is_cuda:
        torch.cuda.synchronize()
    return batch


def _rate(loader, prepare=lambda b: b):
    """Wall-clock images/s after the first batch, and CPU seconds per image over the whole pass (workers
    included; they exit at the end of the pass). The CPU figure is what other jobs on a shared machine
    disturb least: on an idle machine images/s is about cores / (CPU seconds per image)."""
    cpu0 = _cpu_seconds()
    it = iter(loader)
    first = prepare(next(it))
    n0 = len(first[1])
    t0, n = time.perf_counter(), 0
    for b in it:
        b = prepare(b)
        n += len(b[1])
    dt = time.perf_counter() - t0
    del it
    cpu = _cpu_seconds() - cpu0
    return {
        "images": n,
        "seconds": round(dt, 2),
        "images_per_s": round(n / dt, 1) if dt > 0 else None,
        "cpu_ms_per_image": round(1000 * cpu / (n + n0), 2),
        "first_batch": n0,
    }


def loaders(root: Path, workers: int, batch: int, size: int, repeats: int, device: str = "cpu"):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from rethinking.data import stream

    idx = stream.build_index(root)
    results = []
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    train_tf = {
        "torchvision": T.Compose(
            [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        ),
        "torchvision-uint8": T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()]),
    }
    eval_tf = {
        "torchvision": T.Compose(
            [T.Resize(round(size / 0.875)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)]
        ),
        "torchvision-uint8": T.Compose([T.Resize(round(size / 0.875)), T.CenterCrop(size), T.PILToTensor()]),
    }
    n = len(idx["y_train"])
    for rep in range(repeats):
        for mode, augment in (("train", True), ("eval", False)):
            for name, tfs in (
                ("torchvision", train_tf if augment else eval_tf),
                ("torchvision-uint8", train_tf if augment else eval_tf),
            ):
                ds = ImageFolder(str(root / "train"), transform=tfs[name])
                dl = torch.utils.data.DataLoader(
                    ds, batch_size=batch, shuffle=True, num_workers=workers, prefetch_factor=4 if workers else None
                )
                results.append({"loader": name, "mode": mode, "repeat": rep, **_rate(dl)})
                print(json.dumps(results[-1]), flush=True)
            dev = torch.device(device)
            for name, raw, prepare in (
                ("stream", False, None),
                ("stream+normalize", False, True),
                ("stream-device", True, True),
            ):
                ds = stream.StreamImages(root, idx["train_files"], idx["y_train"], size, augment=augment, raw=raw)
                perm = np.random.default_rng(rep).permutation(n)
                keys = [[(int(i), rep) for i in perm[j : j + batch]] for j in range(0, n, batch)]
                dl = stream.make_loader(ds, keys, workers)
                results.append(
                    {
                        "loader": name,
                        "mode": mode,
                        "repeat": rep,
                        **(
                            _rate(dl, lambda b, ds=ds, dev=dev: _synced(stream.to_input(b, ds, dev)))
                            if prepare
                            else _rate(dl)
                        ),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    return results


def step(size: int, batch: int, threads: int, steps: int, classes: int):
    from torch.utils.flop_counter import FlopCounterMode

    from rethinking.models.inception_v3 import inception_v3, loss_of

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = inception_v3(classes, dropout=0.2).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))

    def one():
        loss, _ = loss_of(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as fc:
        loss, _ = loss_of(model(x), y)
        loss.backward()
    train_flops = fc.get_total_flops() / batch
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    eval_flops = fc.get_total_flops() / batch
    model.train()
    one()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    out = {
        "size": size,
        "batch": batch,
        "threads": threads,
        "steps": steps,
        "seconds_per_step_median": round(float(np.median(times)), 3),
        "seconds_per_step_min": round(float(np.min(times)), 3),
        "images_per_s": round(batch / float(np.median(times)), 2),
        "train_gflop_per_image": round(train_flops / 1e9, 2),
        "eval_gflop_per_image": round(eval_flops / 1e9, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print(json.dumps(out))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-tree")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--cifar", type=Path, default=Path("../shared/data/cifar10-jpeg.zip"))
    p.add_argument("--noise", action="store_true", help="random-noise JPEGs instead of upscaled CIFAR-10 images")
    p.add_argument("--large-fraction", type=float, default=0.0, help="share of large photos (1000-2000 px wide)")
    p = sub.add_parser("loaders")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--repeats", type=int, default=3, help="passes per loader, interleaved; the median is printed")
    p.add_argument("--device", default="cpu", help="where stream+normalize and stream-device put (and decode) batches")
    p.add_argument("--json", type=Path)
    p = sub.add_parser("step")
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "make-tree":
        make_tree(a.out, a.images, a.cifar if a.cifar and a.cifar.exists() else None, a.noise, a.large_fraction)
        return
    res = (
        loaders(a.root, a.workers, a.batch, a.size, a.repeats, a.device)
        if a.cmd == "loaders"
        else step(a.size, a.batch, a.threads, a.steps, a.classes)
    )
    if a.cmd == "loaders":  # the median of the repeats per loader and mode
        import pandas as pd

        g = pd.DataFrame(res).groupby(["mode", "loader"], sort=False)
        print(
            pd.DataFrame(
                {
                    "images_per_s_median": g["images_per_s"].median(),
                    "images_per_s_best": g["images_per_s"].max(),
                    "cpu_ms_per_image_median": g["cpu_ms_per_image"].median(),
                }
            ).to_string()
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
