"""Atomic outputs and artifacts that say what is wrong when they are damaged.

Every file is written under a temporary name in its own folder and renamed into
place, so a killed job never leaves a truncated file that a later stage would
read as good.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class ArtifactError(RuntimeError):
    """A missing, truncated or foreign artifact; the message names it and how to rebuild it."""


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it into place if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path, suffix: str | None = None) -> list[Path]:
    """Delete the temporary files that atomic_path(path) leaves when its process is killed (kill -9,
    a preempted job): call it only where no other process can be writing `path`."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*{suffix or path.suffix + '.tmp'}"))
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return stale


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path, obj) -> None:
    """torch.save, atomically: a reader (or a resume after a kill) sees the old file or the new one."""
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def save_npz(path, meta: dict, **arrays) -> None:
    """An artifact: named arrays plus a JSON `meta` record, written atomically.

    A plain .npz (np.load reads it), written member by member with a fixed
    order and a fixed timestamp, so the same content gives the same bytes.
    """
    arrays = dict(arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True, default=_jsonable).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)


def load_npz(path, rebuild_hint: str = "") -> tuple[dict, dict]:
    """Load an artifact written by save_npz: (meta, arrays). Damaged files raise ArtifactError."""
    path = Path(path)
    hint = f"; rebuild it with {rebuild_hint}" if rebuild_hint else "; delete it and rerun the pipeline to rebuild it"
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact is missing{hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise ArtifactError(f"{path}: artifact is truncated or corrupted ({exc.__class__.__name__}: {exc}){hint}") from None
    return meta, arrays


def read_meta(path) -> dict:
    """Only the `meta` record of an artifact (cheap: the arrays are not read)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("__meta__.npy") as f:
            return json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes().decode())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: artifact is missing; rerun the pipeline to rebuild it") from None
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: artifact is truncated or corrupted ({exc}); delete it and rerun the pipeline") from None


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
