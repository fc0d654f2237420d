"""The per-example record of a run: which training examples it learns, when, how surely, and which it forgets.

Both engines (and every member of a pack) keep it from the evaluation of the training set after every epoch
(rethinking.engine.metrics.evaluate, eval mode, fp32): the same forward pass as the epoch's accuracy, no
other. Running sums live on the device, O(n) memory; a checkpoint holds them whole (`state`), so a resumed
run ends with exactly the record of an uninterrupted one. A finished run writes them as `examples.npz` in its
folder, before summary.json (rethinking.engine.run.write_summary): a plain npz (rethinking.files.save_npz, no
pickle), one row per recorded training example, in the order of the run's training set:

    index          int64    its position in the run's training set (the artifact's order)
    origin         int64 | str   where it came from: its index in the source's training split (digits:
                   sklearn's load_digits; torchvision datasets: the official training set), or its file path
                   (an image folder: relative to dataset.root; a streamed tree: relative to its root, stored
                   as UTF-8 bytes, a quarter of numpy's str; read_record gives str)
    label          int64    the label it was trained on (possibly corrupted)
    label_true     int64    the base artifact's label; label != label_true: a corrupted example
    learned_epoch  int32    the epoch (1-based) from which it is classified as `label` at every evaluation
                   up to the last; -1: never (wrong at the last evaluation)
    forgetting     int32    forgetting events: right at one evaluation, wrong at the next (Toneva et al. 2019)
    confidence     float32  mean over epochs of the softmax probability of `label` (data maps, Swayamdipta
                   et al. 2020)
    variability    float32  its standard deviation over epochs (population: divided by the epochs)
    aum            float32  mean over epochs of the logit of `label` minus the largest other logit (area under
                   the margin, Pleiss et al. 2020, here from the eval-mode pass after each epoch)
    final_correct  bool     classified as `label` at the last evaluation
    final_loss     float32  its cross-entropy at the last evaluation
    correct_bits   uint8    n x ceil(epochs / 8): right or wrong at every evaluation, 8 epochs to a byte;
                   `correct_matrix` unpacks it (epoch e is bit (e - 1) % 8, little-endian, of byte (e - 1) // 8)

and its meta: {"kind": "examples", "version", "run", "epochs", "classes", "origin": "index" | "path",
"source", "n_train"} (n_train: the whole training set; a streamed run records its `train_eval_size` images).

Reading it needs numpy only (`read_record`); the record itself (`ExampleRecord`) imports torch when built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..files import load_npz, read_array, read_meta, save_npz

EXAMPLES = "examples.npz"
VERSION = 1
FIELDS = (
    "index",
    "origin",
    "label",
    "label_true",
    "learned_epoch",
    "forgetting",
    "confidence",
    "variability",
    "aum",
    "final_correct",
    "final_loss",
    "correct_bits",
)
# the running state on the device, as a checkpoint holds it (`ExampleRecord.state`)
_STATE = ("sum_p", "sum_p2", "sum_margin", "learned", "forgetting", "correct", "loss", "bits")


def correct_matrix(bits: np.ndarray, epochs: int) -> np.ndarray:
    """The n x epochs bool matrix of a record's `correct_bits`: [i, e - 1] is example i right after epoch e."""
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), axis=1, bitorder="little", count=epochs).astype(bool)


def read_record(folder) -> tuple[dict, dict] | None:
    """(meta, arrays) of a run folder's examples.npz; None for a run folder made before the record existed.
    A damaged or foreign file raises ArtifactError naming it."""
    path = Path(folder) / EXAMPLES
    if not path.is_file():
        return None
    meta, arrays = load_npz(path, rebuild_hint="delete the run folder's summary.json and retrain the run")
    missing = [f for f in FIELDS if f not in arrays]
    if meta.get("kind") != "examples" or missing:
        raise ArtifactError(f"{path}: not a run's per-example record (kind {meta.get('kind')!r}, missing {missing})")
    if arrays["origin"].dtype.kind == "S":
        arrays["origin"] = np.char.decode(arrays["origin"], "utf-8")
    return meta, arrays


def write_record(folder, meta: dict, arrays: dict) -> Path:
    path = Path(folder) / EXAMPLES
    save_npz(path, {"kind": "examples", "version": VERSION, **meta}, **arrays)
    return path


class ExampleRecord:
    """The running per-example sums of one run, on its device.

    `positions`: the record rows this process evaluates, in its evaluation order (None: all n, in order; a
    process of a multi-process run: its share). Per epoch: `begin(epoch)`, then `add(logits, y)` for every
    evaluated batch, in order (evaluate does it), then `end()`, which checks every row of the share was seen."""

    def __init__(self, n: int, max_epochs: int, device, positions=None):
        import torch

        self.n, self.max_epochs, self.device = n, max_epochs, device
        f64, i32 = dict(dtype=torch.float64, device=device), dict(dtype=torch.int32, device=device)
        self.sum_p, self.sum_p2, self.sum_margin = (torch.zeros(n, **f64) for _ in range(3))
        self.learned = torch.zeros(n, **i32)  # 0 while not right at the last evaluation (epochs are 1-based)
        self.forgetting = torch.zeros(n, **i32)
        self.correct = torch.zeros(n, dtype=torch.bool, device=device)
        self.loss = torch.zeros(n, dtype=torch.float32, device=device)
        self.bits = torch.zeros(n, (max_epochs + 7) // 8, dtype=torch.uint8, device=device)
        self.positions = None if positions is None else torch.as_tensor(positions, dtype=torch.int64, device=device)
        self.epoch, self.cursor = 0, 0

    def begin(self, epoch: int) -> None:
        """Epoch `epoch` (1-based) is about to be evaluated."""
        self.epoch, self.cursor = epoch, 0

    def add(self, logits, y) -> None:
        """One evaluated batch: its fp32 logits (B x K) and assigned labels, the next B rows of this share."""
        import torch

        b = len(y)
        rows = (
            slice(self.cursor, self.cursor + b)
            if self.positions is None
            else self.positions[self.cursor : self.cursor + b]
        )
        self.cursor += b
        logits = logits.float()
        log_p = torch.log_softmax(logits, 1).gather(1, y[:, None])[:, 0]
        p = log_p.exp().double()
        mine = logits.gather(1, y[:, None])[:, 0]
        top = logits.topk(min(2, logits.shape[1]), dim=1)
        others = top.values[:, 1] if logits.shape[1] > 1 else torch.full_like(mine, float("-inf"))
        # the largest other logit: the top one unless it is the label's own (argmax ties: equal values anyway)
        other = torch.where(top.indices[:, 0] == y, others, top.values[:, 0])
        right = logits.argmax(1) == y  # as evaluate and the stop rule count it
        self.sum_p[rows] += p
        self.sum_p2[rows] += p * p
        self.sum_margin[rows] += (mine - other).double()
        self.forgetting[rows] += (self.correct[rows] & ~right).int()
        learned = self.learned[rows]
        self.learned[rows] = torch.where(right, torch.where(learned == 0, self.epoch, learned), 0).int()
        self.correct[rows] = right
        self.loss[rows] = -log_p
        e = self.epoch - 1
        self.bits[rows, e // 8] |= right.to(torch.uint8) << (e % 8)

    def end(self) -> None:
        share = self.n if self.positions is None else len(self.positions)
        if self.cursor != share:
            raise RuntimeError(
                f"example record: {self.cursor} examples evaluated at epoch {self.epoch}, expected {share}"
            )

    # ------------------------------------------------------------------ checkpoint and file

    def state(self, reduce=None) -> dict:
        """The sums as CPU tensors for a checkpoint. `reduce` (a multi-process run): the sum over the processes,
        each giving its own rows only (the others' are zero in it), so every process gets the whole record."""
        import torch

        out = {}
        own = None
        if reduce is not None and self.positions is not None:
            own = torch.zeros(self.n, dtype=torch.bool, device=self.device)
            own[self.positions] = True
        for name in _STATE:
            t = getattr(self, name)
            if reduce is not None:
                # bytes stay bytes (only one process has a row non-zero: the sum cannot overflow)
                byte = t.dtype in (torch.uint8, torch.bool)
                wide = t.to(torch.float64 if t.is_floating_point() else torch.uint8 if byte else torch.int64)
                if own is not None:
                    wide = torch.where(own.view(-1, *([1] * (wide.dim() - 1))), wide, torch.zeros_like(wide))
                t = reduce(wide).to(t.dtype)
            out[name] = t.detach().cpu().clone()
        return out

    def load(self, state: dict) -> None:
        """Back from `state` (a checkpoint's): every process holds the whole record, and goes on with its rows."""
        for name in _STATE:
            getattr(self, name).copy_(state[name].to(self.device))

    def arrays(self, epochs: int, state: dict | None = None) -> dict:
        """The record's fields after `epochs` evaluations (FIELDS but index, origin and labels), as numpy."""
        s = state or self.state()
        e = max(epochs, 1)
        mean = s["sum_p"].numpy() / e
        var = np.maximum(s["sum_p2"].numpy() / e - mean * mean, 0.0)
        return {
            "learned_epoch": np.where(s["learned"].numpy() > 0, s["learned"].numpy(), -1).astype(np.int32),
            "forgetting": s["forgetting"].numpy().astype(np.int32),
            "confidence": mean.astype(np.float32),
            "variability": np.sqrt(var).astype(np.float32),
            "aum": (s["sum_margin"].numpy() / e).astype(np.float32),
            "final_correct": s["correct"].numpy().astype(bool),
            "final_loss": s["loss"].numpy().astype(np.float32),
            "correct_bits": np.ascontiguousarray(s["bits"].numpy()[:, : (epochs + 7) // 8]),
        }


def base_origins(base_path, n: int) -> tuple[np.ndarray, str]:
    """(each training example's origin, what the origins refer to) from the base artifact (data.sources.prepare
    stores them): sklearn's or torchvision's dataset, or the image folder's root. A base artifact made before
    origins were stored: the example's index in the artifact."""
    origin = read_array(base_path, "origin_train", None)
    prov = read_meta(base_path).get("provenance", {})
    source = prov.get("origin") or prov.get("root") or prov.get("source", "")
    return (np.arange(n), f"{base_path} (index)") if origin is None else (origin, source)


def finished(
    record: ExampleRecord, run_id: str, epochs: int, *, index, origin, label, label_true, meta: dict, state=None
):
    """(meta, arrays) of a finished run's examples.npz: the record's scores after `epochs` evaluations, with
    each recorded example's index, origin and labels; `meta`: classes, source, n_train."""
    origin = np.asarray(origin)
    arrays = {
        "index": np.asarray(index, dtype=np.int64),
        "origin": origin,
        "label": np.asarray(label, dtype=np.int64),
        "label_true": np.asarray(label_true, dtype=np.int64),
        **record.arrays(epochs, state),
    }
    kind = "path" if origin.dtype.kind in "US" else "index"
    return {"run": run_id, "epochs": epochs, "origin": kind, **meta}, arrays
