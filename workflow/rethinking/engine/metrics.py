"""Per-epoch evaluation metrics: one registry entry each, computed by every engine and by packs.

After every epoch the engines evaluate the whole training set (the streamed engine: `train_eval_size` of
its images) in eval mode and in fp32 (`evaluate`). Besides the loss and the accuracy, which the stop rule
reads, every metric registered here is computed from the same forward pass: a metric is a function of one
batch's logits, assigned labels (possibly corrupted), original labels and corrupted mask (assigned !=
original) to a vector of sums, and a function from those sums, added over every batch (and every process
of a multi-GPU run), to its named columns. The columns land in every run's epochs.csv, in the
memorization table (rethinking.analysis.aggregate) and in the DVC plots of label-corrupted runs
(rethinking.pipeline.dvcgen).

Adding one (the README's "Extending the pipeline"):

    def confidence(logits, y, y_true, noisy):      # device tensors of one batch
        p = logits.softmax(1).gather(1, y[:, None])[:, 0]
        return torch.stack([p.sum(), (p * noisy).sum()])

    register(Metric("confidence", ("mean_confidence",), confidence,
                    lambda sums, n: {"mean_confidence": 100 * sums[0] / n if n else float("nan")}))

Sums are float64 on the device; counts stay exact (below 2**53). No torch import at module level: the
Snakemake rules and the DVC generator read the registry's column names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str
    columns: tuple[str, ...]
    # (logits N x K, assigned labels N, original labels N, corrupted mask N (bool)) -> 1-D tensor of sums
    sums: Callable
    # (the sums over every evaluated example, as floats; the number of examples) -> {column: value}
    values: Callable
    unit: str = "% of training examples"  # the y axis of its DVC plot


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric to every engine's evaluation of the training set (a name or a column used twice is an error)."""
    taken = {c for m in METRICS.values() for c in m.columns}
    if metric.name in METRICS or taken & set(metric.columns):
        raise ConfigError(
            f"metric {metric.name!r}: its name or one of its columns {metric.columns} is registered already"
        )
    METRICS[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    METRICS.pop(name, None)
    _WIDTHS.pop(name, None)


def metric_columns() -> tuple[str, ...]:
    """Every registered metric's columns, in registration order (epochs.csv's last columns)."""
    return tuple(c for m in METRICS.values() for c in m.columns)


def _percent(k: float, total: float) -> float:
    return 100.0 * k / total if total else float("nan")


def _memorization_sums(logits, y, y_true, noisy):
    pred = logits.argmax(1)
    hit = pred == y
    import torch

    return torch.stack([(hit & ~noisy).sum(), noisy.sum(), (hit & noisy).sum(), ((pred == y_true) & noisy).sum()])


def _memorization_values(sums, n) -> dict:
    clean_correct, n_noisy, memorized, true = (int(round(s)) for s in sums)
    return {
        "clean_acc": _percent(clean_correct, n - n_noisy),
        "noisy_memorized": _percent(memorized, n_noisy),
        "noisy_true": _percent(true, n_noisy),
    }


# memorization under label noise (Arpit et al. 2017): the accuracy on the training examples whose label is
# intact, and the share of the corrupted ones predicted as their assigned (wrong) label and as their original
# one; percent, blank (NaN) where the group is empty
register(
    Metric("memorization", ("clean_acc", "noisy_memorized", "noisy_true"), _memorization_sums, _memorization_values)
)


def evaluate(model, batches, *, topk: int = 1, reduce=None, metrics: bool = False, record=None) -> dict:
    """Mean loss, top-1 (and top-`topk`) accuracy and the number top-1 correct over `batches`, in eval mode,
    in fp32: no autocast even where the steps train in bf16, and no TF32 (precision.exact_float32), since
    the stop rule needs every training example right and bf16 logits tie and flip small margins.

    `batches` yields (x, y, y_true) device tensors (x ready for the model; y_true None on a split whose labels
    are not corrupted). With `metrics`, every registered metric's columns, from the same forward pass; with a
    `record` (rethinking.engine.examples.ExampleRecord), each batch's logits and top-1 hits go to it too.
    `reduce` sums a float64 vector over the processes of a run (streamed engine; None: one process).
    Returns {"loss", "acc", "correct", "n", ["top5"], **metric columns}."""
    import torch
    import torch.nn.functional as F

    from .precision import exact_float32

    model.eval()
    sums, n = None, 0
    with torch.no_grad(), exact_float32():
        for x, y, y_true in batches:
            logits = model(x)
            if isinstance(logits, tuple):  # a model with an auxiliary head gives (main, aux) in train mode only
                logits = logits[0]
            top = logits.float().topk(min(topk, logits.shape[1]), dim=1).indices if topk > 1 else None
            pred = logits.argmax(1) if top is None else top[:, 0]
            if record is not None:
                record.add(logits, y, pred == y)
            parts = [F.cross_entropy(logits.float(), y, reduction="sum").double(), (pred == y).sum().double()]
            if top is not None:
                parts.append((top == y[:, None]).any(1).sum().double())
            if metrics:
                noisy = y != y_true
                parts += [m.sums(logits, y, y_true, noisy).double() for m in METRICS.values()]
            batch = torch.cat([p.reshape(-1) for p in parts])
            sums = batch if sums is None else sums + batch
            n += len(y)
    return _results(sums, n, topk, metrics, reduce)


def _results(sums, n: int, topk: int, metrics: bool, reduce) -> dict:
    import torch

    if sums is None:  # no example (a process of a multi-GPU run with none to evaluate): zeros of the same width
        width = 2 + (topk > 1) + (sum(_width(m) for m in METRICS.values()) if metrics else 0)
        sums = torch.zeros(width, dtype=torch.float64)
    totals = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64, device=sums.device)])
    if reduce is not None:
        totals = reduce(totals)
    values = totals.tolist()
    n_all = values.pop()
    denom = max(n_all, 1.0)
    out = {"loss": values[0] / denom, "acc": values[1] / denom, "correct": int(round(values[1])), "n": int(n_all)}
    rest = values[2:]
    if topk > 1:
        out["top5"] = rest.pop(0) / denom
    if metrics:
        for m in METRICS.values():
            k = _width(m)
            out.update(m.values(rest[:k], int(n_all)))
            rest = rest[k:]
    return out


_WIDTHS: dict[str, int] = {}


def _width(metric: Metric) -> int:
    """How many sums a metric returns (asked of it once, on an empty batch on the CPU)."""
    if metric.name not in _WIDTHS:
        import torch

        empty = torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        _WIDTHS[metric.name] = int(metric.sums(*empty, torch.zeros(0, dtype=torch.bool)).numel())
    return _WIDTHS[metric.name]
