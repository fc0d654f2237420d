"""The per-example record of a run: which training examples it learns, when, how surely, and which it forgets.

Both engines (and every member of a pack) keep it from the evaluation of the training set after every epoch
(rethinking.engine.metrics.evaluate, eval mode, fp32): the same forward pass as the epoch's accuracy, no
other. Running sums (of the label's probability, its square and the margin), the last loss and the per-epoch
correctness bits live on the device, O(n) memory; the learned epoch, the forgetting events and the last
correctness are read from the bits when the record is written (`from_bits`). A checkpoint holds the record
whole (`state`), so a resumed run ends with exactly the record of an uninterrupted one. A finished run writes
it as `examples.npz` in its folder, before summary.json (rethinking.engine.run.write_summary): a plain npz
(rethinking.files.save_npz, no pickle), one row per recorded training example, in the order of the run's
training set:

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
# sums: n x 3 float64 (probability of the label, its square, margin over epochs); loss (the last); bits
_STATE = ("sums", "loss", "bits")


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
    evaluated batch, in order (evaluate does it: two small reductions of the logits it has), then `end()`,
    which checks that every row of the share was seen and folds the epoch into the sums."""

    def __init__(self, n: int, max_epochs: int, device, positions=None):
        import torch

        self.n, self.max_epochs, self.device = n, max_epochs, device
        self.sums = torch.zeros(n, 3, dtype=torch.float64, device=device)
        self.loss = torch.zeros(n, dtype=torch.float32, device=device)
        # right or wrong at every evaluation: the learned epoch, the forgetting events and the last correctness are
        # read from them at the end (`arrays`), no running state of their own
        self.bits = torch.zeros(n, (max_epochs + 7) // 8, dtype=torch.uint8, device=device)
        self.positions = None if positions is None else torch.as_tensor(positions, dtype=torch.int64, device=device)
        # this epoch's values of this process's share, filled batch by batch, folded into the sums by `end`
        share = n if positions is None else len(self.positions)
        self._log_p = torch.zeros(share, dtype=torch.float32, device=device)  # log-probability of the label
        self._margin = torch.zeros(share, dtype=torch.float32, device=device)
        self._right = torch.zeros(share, dtype=torch.bool, device=device)
        self.epoch, self.cursor = 0, 0

    def begin(self, epoch: int) -> None:
        """Epoch `epoch` (1-based) is about to be evaluated."""
        self.epoch, self.cursor = epoch, 0

    def add(self, logits, y, right=None) -> None:
        """One evaluated batch: its logits (B x K), assigned labels and which of them the prediction hits (as
        evaluate counts them for train_acc and the stop rule; None: argmax), the next B rows of this share."""
        rows = slice(self.cursor, self.cursor + len(y))
        self.cursor += len(y)
        z = logits.float()
        mine = z.gather(1, y[:, None])[:, 0]
        self._log_p[rows] = mine - z.logsumexp(1)  # log_softmax's value at the label, at a fifth of its cost
        # the largest other logit: every logit but the label's (ties with the label's give a margin of 0)
        self._margin[rows] = mine - z.scatter(1, y[:, None], float("-inf")).amax(1)
        self._right[rows] = z.argmax(1) == y if right is None else right

    def end(self) -> None:
        """The epoch's values of the share into the running sums, once per epoch for every batch."""
        import torch

        share = len(self._right)
        if self.cursor != share:
            raise RuntimeError(
                f"example record: {self.cursor} examples evaluated at epoch {self.epoch}, expected {share}"
            )
        rows = slice(None) if self.positions is None else self.positions
        p = self._log_p.exp().double()
        self.sums[rows] += torch.stack([p, p * p, self._margin.double()], 1)
        self.loss[rows] = -self._log_p
        e = self.epoch - 1
        self.bits[rows, e // 8] |= self._right.to(torch.uint8) << (e % 8)

    # ------------------------------------------------------------------ checkpoint and file

    def state(self, reduce=None) -> dict:
        """The record for a checkpoint: {"layout": [(name, dtype, shape)], "data": one uint8 CPU tensor} (one
        tensor: the checkpoint after every epoch pays for one record, not five), the bits so far only.
        `reduce` (a multi-process run): the sum over the processes, each giving its own rows only (the others'
        are zero in it), so every process gets the whole record."""
        import torch

        own = None
        if reduce is not None and self.positions is not None:
            own = torch.zeros(self.n, dtype=torch.bool, device=self.device)
            own[self.positions] = True
        layout, parts = [], []
        for name in _STATE:
            t = getattr(self, name)
            if name == "bits":
                t = t[:, : (self.epoch + 7) // 8]
            if reduce is not None:
                # bytes stay bytes (only one process has a row non-zero: the sum cannot overflow)
                byte = t.dtype in (torch.uint8, torch.bool)
                wide = t.to(torch.float64 if t.is_floating_point() else torch.uint8 if byte else torch.int64)
                if own is not None:
                    wide = torch.where(own.view(-1, *([1] * (wide.dim() - 1))), wide, torch.zeros_like(wide))
                t = reduce(wide).to(t.dtype)
            layout.append((name, str(t.dtype).removeprefix("torch."), list(t.shape)))
            part = t.detach().contiguous().view(torch.uint8).reshape(-1)
            parts += [part, part.new_zeros(-len(part) % 8)]  # every part 8-byte aligned, to view as its dtype
        return {"layout": layout, "data": torch.cat(parts).cpu()}

    @staticmethod
    def tensors(state: dict) -> dict:
        """The named CPU tensors of a `state`."""
        import torch

        out, at = {}, 0
        for name, dtype, shape in state["layout"]:
            kind = getattr(torch, dtype)
            size = int(np.prod(shape)) * torch.empty(0, dtype=kind).element_size()
            out[name] = state["data"][at : at + size].view(kind).reshape(shape)
            at += size + (-size % 8)
        return out

    def load(self, state: dict) -> None:
        """Back from `state` (a checkpoint's): every process holds the whole record, and goes on with its rows."""
        saved = self.tensors(state)
        for name in _STATE:
            t = getattr(self, name)
            t[:, : saved[name].shape[1]].copy_(saved[name]) if name == "bits" else t.copy_(saved[name])

    def arrays(self, epochs: int, state: dict | None = None) -> dict:
        """The record's fields after `epochs` evaluations (FIELDS but index, origin and labels), as numpy."""
        s = self.tensors(state or self.state())
        sums = s["sums"].numpy() / max(epochs, 1)
        mean = sums[:, 0]
        var = np.maximum(sums[:, 1] - mean * mean, 0.0)
        bits = np.ascontiguousarray(s["bits"].numpy()[:, : (epochs + 7) // 8])
        return {
            **from_bits(bits, epochs),
            "confidence": mean.astype(np.float32),
            "variability": np.sqrt(var).astype(np.float32),
            "aum": sums[:, 2].astype(np.float32),
            "final_loss": s["loss"].numpy().astype(np.float32),
            "correct_bits": bits,
        }


def from_bits(bits: np.ndarray, epochs: int) -> dict:
    """The learned epoch (-1: never), the forgetting events and the last correctness, from the correctness bits."""
    n = len(bits)
    if epochs == 0:
        return {
            "learned_epoch": np.full(n, -1, np.int32),
            "forgetting": np.zeros(n, np.int32),
            "final_correct": np.zeros(n, bool),
        }
    right = correct_matrix(bits, epochs)
    wrong = ~right
    last_wrong = epochs - 1 - np.argmax(wrong[:, ::-1], axis=1)  # 0-based epoch of the last wrong evaluation
    learned = np.where(wrong.any(1), last_wrong + 2, 1)  # the epoch after it (1-based), or the first
    return {
        "learned_epoch": np.where(right[:, -1], learned, -1).astype(np.int32),
        "forgetting": (right[:, :-1] & wrong[:, 1:]).sum(1).astype(np.int32),
        "final_correct": right[:, -1].copy(),
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
