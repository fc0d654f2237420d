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

from .errors import ArtifactError

_UMASK = os.umask(0)
os.umask(_UMASK)


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


CORRUPT_SUFFIX = ".corrupt"


def load_checkpoint(
    path, fingerprint: str, required_keys, log=print, *, name: str = "", move_aside: bool = True
) -> dict | None:
    """A training checkpoint to resume from, read safely, or None: start over.

    Read with torch.load(weights_only=True), so a file holds tensors and plain containers only and
    loading one never runs code a pickle carries. None when there is no file; when the file was made
    with other settings or code (its fingerprint differs: left in place, the next checkpoint replaces
    it); or when it cannot be used: truncated, not a checkpoint at all, refused by weights_only (an
    unsafe pickle), not a dict or lacking `required_keys`. Such a file is moved aside to
    <path>.corrupt (replacing an older one) with one line naming it and why, if `move_aside`
    (process 0 of a multi-process run; the others only read). `name` prefixes the log lines.
    """
    import torch

    path = Path(path)
    prefix = f"{name}: " if name else ""
    try:
        f = open(path, "rb")
    except FileNotFoundError:  # none yet (or process 0 just moved a damaged one aside)
        return None
    with f:
        try:
            ck = torch.load(f, map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except Exception as exc:  # a truncated zip: RuntimeError; foreign bytes, unsafe: UnpicklingError; ...
            ck, problem = None, f"{exc.__class__.__name__}: {_short_reason(exc)}"
    if ck is not None:
        if not isinstance(ck, dict):
            problem = f"it holds a {type(ck).__name__}, not a checkpoint's dict"
        elif not isinstance(ck.get("fingerprint"), str):
            problem = "it has no fingerprint, so it is not a checkpoint of this engine"
        elif ck["fingerprint"] != fingerprint:
            log(f"{prefix}checkpoint was made with other settings or code; starting over")
            return None
        elif missing := [k for k in required_keys if k not in ck]:
            problem = f"it lacks {', '.join(map(repr, missing))}"
        else:
            return ck
    if move_aside:
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        try:
            os.replace(path, aside)
            moved = f"moved it to {aside.name}"
        except OSError as exc:
            moved = f"could not move it aside ({exc.__class__.__name__}: {exc})"
        log(f"{prefix}checkpoint {path} cannot be used ({problem}); {moved}; starting over")
    return None


def _short_reason(exc: BaseException, limit: int = 160) -> str:
    """The informative part of a torch.load error, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):  # torch's advice around one line of cause
        cause = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
        cause = [line.split("WeightsUnpickler error:")[-1].strip() for line in cause]
        text = "weights_only refused it: " + (
            " ".join(c for c in cause if c and not c.startswith("Please file")) or "unsupported content"
        )
    else:
        text = (
            lines[0]
            if lines
            else ("the file ends early (empty, or cut short)" if isinstance(exc, EOFError) else "no details")
        )
        sentence = text.find(". ")
        if 0 < sentence < len(text) - 2:
            text = text[: sentence + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def write_rows(path, rows: list[dict], columns=None) -> None:
    """A CSV of dict rows, byte for byte as write_csv(path, pandas.DataFrame(rows, columns=columns)) writes
    it, without importing pandas (a quarter of a second of every training process): columns given, else
    every key in order of first appearance; NaN, None and missing keys blank; floats as repr, and a column
    of ints that has a blank written as floats (pandas makes it a float column)."""
    import csv
    import math

    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    missing = [any(_blank(r.get(c)) for r in rows) for c in columns]
    floaty = [m or any(isinstance(r.get(c), (float, np.floating)) for r in rows) for c, m in zip(columns, missing)]

    def cell(v, as_float):
        if _blank(v):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if isinstance(v, (int, np.integer)) and not as_float:
            return str(int(v))
        if isinstance(v, (int, float, np.integer, np.floating)):
            return repr(float(v)) if math.isfinite(float(v)) else ("inf" if v > 0 else "-inf")
        return str(v)

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            for r in rows:
                w.writerow([cell(r.get(c), fl) for c, fl in zip(columns, floaty)])


def _blank(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and v != v)


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
        raise ArtifactError(
            f"{path}: artifact is truncated or corrupted ({exc.__class__.__name__}: {exc}){hint}"
        ) from None
    return meta, arrays


def read_meta(path) -> dict:
    """Only the `meta` record of an artifact (cheap: the arrays are not read)."""
    return json.loads(read_array(Path(path), "__meta__").tobytes().decode())


_REQUIRED = object()


def read_array(path, name: str, default=_REQUIRED):
    """One array of an artifact (cheap: the others are not read); `default` where the artifact has no such
    array (none given: ArtifactError, as for a missing or damaged file)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if name + ".npy" not in zf.namelist() and default is not _REQUIRED:
                return default
            with zf.open(name + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: artifact is missing; rerun the pipeline to rebuild it") from None
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: artifact is truncated or corrupted ({exc}); delete it and rerun the pipeline"
        ) from None


def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
