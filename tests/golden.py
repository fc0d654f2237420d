"""Golden values of a finished results folder: what a refactor must leave unchanged.

`snapshot(results_dir)` reads a results folder of config/tiny.yaml (or any config) into one JSON-able
dict: the run ids, the digest of every base and corrupted artifact's arrays (`artifact_digest`), and per
run the values of
epochs.csv, steps.csv and summary.json that the training decides (wall times, process usage, the
device's name and the versions are left out: they say where and when, not what). `compare` lists the
differences, with floats equal within a tolerance (a packed run may round differently from its
single-run trajectory; another CPU may sum in another order).

    python tests/golden.py results/tiny > tests/data/golden/tiny.json   # record (done at 7d86318)

The artifact digests were the files' SHA-256 until base artifacts gained each training image's origin
(issue #23): a digest now covers the arrays the corruptions and the training read, so the origins and a
label artifact's record of its base's SHA-256 are left out; they were recomputed from 7d86318's files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
from pathlib import Path

# what says where and when a run trained, not what it learned
VOLATILE = {
    "wall_time",
    "cpu_time",
    "max_rss_mb",
    "process_wall_time",
    "device",
    "versions",
    "train_images_per_s",
    "deterministic",
}


def _cell(value: str):
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


# what an artifact holds besides the data: the images' origins, and (in the meta) the base's digest
NOT_DATA = {"__meta__", "origin_train"}


def artifact_digest(path) -> str:
    """SHA-256 of an artifact's arrays (name, dtype, shape, bytes, in name order) but NOT_DATA."""
    import numpy as np

    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for name in sorted(set(z.files) - NOT_DATA):
            a = np.ascontiguousarray(z[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def snapshot(results: str | Path) -> dict:
    results = Path(results)
    artifacts = {
        p.relative_to(results / "data").as_posix(): artifact_digest(p)
        for p in sorted((results / "data").rglob("*.npz"))
    }
    runs = {}
    for summary in sorted((results / "runs").rglob("summary.json")):
        folder = summary.parent
        rid = folder.relative_to(results / "runs").as_posix()
        s = json.loads(summary.read_text())
        runs[rid] = {
            "summary": {k: v for k, v in s.items() if k not in VOLATILE},
            "epochs": _rows(folder / "epochs.csv"),
            "steps": _rows(folder / "steps.csv"),
        }
    return {"artifacts": artifacts, "runs": runs}


def _close(a, b, rel: float, abs_: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    return a == b


def compare(want, got, rel: float = 1e-6, abs_: float = 1e-6, where: str = "") -> list[str]:
    """Every difference between two snapshots (or parts), as 'path: want != got' lines."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got:
                out.append(f"{where}/{k}: missing")
            elif k not in want:
                out.append(f"{where}/{k}: unexpected")
            else:
                out += compare(want[k], got[k], rel, abs_, f"{where}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: {len(want)} rows != {len(got)} rows"]
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in compare(a, b, rel, abs_, f"{where}[{i}]")]
    return [] if _close(want, got, rel, abs_) else [f"{where}: {want!r} != {got!r}"]


if __name__ == "__main__":
    json.dump(snapshot(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
