"""JPEG decoding throughput: torchvision.io.decode_jpeg vs torchcodec.decoders.decode_jpeg vs Pillow, back to back.

    # images/s of each decoder over the same encoded images, one process, one thread, repeats interleaved:
    # real CIFAR-10 JPEGs (32x32, read from the zip) and ImageNet-sized JPEGs (500x375) made from them
    # (upscaled bicubically, Gaussian noise sd 20 so the files carry detail, quality 90, as stream_bench.py)
    python benchmarks/decode_bench.py --cifar ../shared/data/cifar10-jpeg.zip --small 4000 --large 300

    # on a GPU (nvJPEG for torchvision and torchcodec; Pillow decodes on the CPU and copies the batch over)
    python benchmarks/decode_bench.py --device cuda

What is timed is what `decode: device` does per batch (rethinking.data.stream.decode_batch): a list of 1-D uint8
tensors of file bytes -> a list of 3 x H x W uint8 RGB tensors on the device, in batches of --batch.
- torchvision: torchvision.io.decode_jpeg(list, mode=RGB, device) (deprecated since torchvision 0.29).
- torchcodec: torchcodec.decoders.decode_jpeg(list, mode="RGB", device) (its FFmpeg-free image library).
- pillow: Image.open(...).convert("RGB") -> CHW tensor per image (what a loader worker does, at full scale:
  the worker path's reduced-scale `draft` decoding is left out, to compare decoders on the same work).
Each repeat times every decoder once over all images, in a rotated order; printed: the median images/s
per decoder and set, and the median of the per-repeat ratios to torchvision (so drifts in machine load
cancel). The decoders' outputs are compared once: the largest absolute pixel difference to torchvision's.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch


def cifar_jpegs(path: Path, n: int, seed: int = 0) -> list[bytes]:
    with zipfile.ZipFile(path) as z:
        names = sorted(m for m in z.namelist() if m.startswith("train/") and m.endswith(".jpg"))
        pick = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
        return [z.read(names[i]) for i in pick]


def large_jpegs(sources: list[bytes], n: int, size=(500, 375), noise_sd: float = 20.0, seed: int = 1) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        arr = np.asarray(Image.open(io.BytesIO(sources[k % len(sources)])).convert("RGB"))
        big = np.asarray(Image.fromarray(arr).resize(size, Image.BICUBIC), dtype=np.float32)
        img = np.clip(big + rng.normal(0, noise_sd, size=big.shape), 0, 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(img).save(b, format="JPEG", quality=90)
        out.append(b.getvalue())
    return out


def decoders(device: torch.device) -> dict:
    from PIL import Image

    out = {}
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode

        def torchvision_(tensors, blobs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return tv_decode(tensors, mode=ImageReadMode.RGB, device=device)

        out["torchvision"] = torchvision_
    except ImportError:
        pass
    try:
        from torchcodec.decoders import decode_jpeg as tc_decode

        def torchcodec_(tensors, blobs):
            return tc_decode(tensors, mode="RGB", device=device)

        out["torchcodec"] = torchcodec_
    except ImportError:
        pass

    def pillow(tensors, blobs):
        res = []
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                res.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).to(device))
        return res

    out["pillow"] = pillow
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(sets: dict, device: torch.device, batch: int, repeats: int) -> list[dict]:
    decs = decoders(device)
    rows = []
    for set_name, blobs in sets.items():
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        batches = [(tensors[i : i + batch], blobs[i : i + batch]) for i in range(0, len(blobs), batch)]
        # correctness once (and warm-up: library loading, nvJPEG handles)
        ref = None
        diffs = {}
        for name, f in decs.items():
            got = [x for t, b in batches for x in f(t, b)]
            _sync(device)
            if ref is None:
                ref = got
            diffs[name] = max(int((a.int() - r.int()).abs().max()) for a, r in zip(got, ref))
        names = list(decs)
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                f = decs[name]
                t0 = time.perf_counter()
                for t, b in batches:
                    f(t, b)
                _sync(device)
                dt = time.perf_counter() - t0
                rows.append(
                    {
                        "set": set_name,
                        "decoder": name,
                        "repeat": rep,
                        "images": len(blobs),
                        "seconds": round(dt, 4),
                        "images_per_s": round(len(blobs) / dt, 1),
                        "max_abs_diff_to_" + names[0]: diffs[name],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", type=Path, default=Path("../shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--small", type=int, default=4000, help="CIFAR-10 JPEGs (32x32) read from the zip")
    ap.add_argument("--large", type=int, default=300, help="500x375 JPEGs made from CIFAR-10 images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    small = cifar_jpegs(a.cifar, max(a.small, 1))
    sets = {}
    if a.small:
        sets["cifar10-32x32"] = small
    if a.large:
        sets["large-500x375"] = large_jpegs(small, a.large)
    for k, v in sets.items():
        print(json.dumps({"set": k, "images": len(v), "mean_kb": round(float(np.mean([len(b) for b in v])) / 1024, 2)}))
    versions = {"torch": torch.__version__}
    for mod in ("torchvision", "torchcodec", "PIL"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    print(json.dumps({"versions": versions, "device": a.device, "threads": a.threads, "batch": a.batch}))
    rows = run(sets, torch.device(a.device), a.batch, a.repeats)

    import pandas as pd

    df = pd.DataFrame(rows)
    ref = df["decoder"].iloc[0]
    base = df[df["decoder"] == ref].set_index(["set", "repeat"])["images_per_s"]
    df["ratio_to_" + ref] = df["images_per_s"].values / base.loc[list(zip(df["set"], df["repeat"]))].values
    g = df.groupby(["set", "decoder"], sort=False)
    print(
        pd.DataFrame(
            {
                "images_per_s_median": g["images_per_s"].median(),
                "images_per_s_best": g["images_per_s"].max(),
                f"ratio_to_{ref}_median": g["ratio_to_" + ref].median().round(3),
                "max_abs_diff": g["max_abs_diff_to_" + ref].first(),
            }
        ).to_string()
    )
    if a.json:
        a.json.write_text(json.dumps({"versions": versions, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
