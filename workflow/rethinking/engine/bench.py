"""`python -m rethinking bench`: the engine's training throughput against a conventional loop.

Both train the same model on the same images with the same SGD settings, back
to back in one process:

- engine: the pipeline's own hot loop (loop.run_epoch, a run as a pack of
  one) and optimizer (optim.SGD, torch's fused SGD kernel): images resident on the device,
  prepared once when there is no random augmentation (center crop
  and per-image standardization, timed as part of the engine) or per batch as
  batched tensor ops from uint8 (random crops), batches gathered by a
  device-side permutation, no host sync per step;
- baseline: what a typical script does: a torchvision-style in-memory
  dataset whose __getitem__ makes a PIL image and applies per-image transforms
  (CenterCrop or RandomCrop, ToTensor, standardization), batched by a
  DataLoader with shuffling.

Only training is timed (no evaluation), after one warm-up batch.

The limit: "bare" is the same model's forward, backward and SGD update (the engine's optimizer) on one
batch already on the device, repeated as many steps as the engine's epochs take: no data gathering,
no augmentation, no loss bookkeeping. `bare images/s` and the engine's share of it say how much of a
step the engine's own work costs.

With --pack K it also trains K copies of the model as one pack
(rethinking.engine.pack: stacked parameters, torch.func.vmap), each with its own
permutation, and prints the pack's aggregate images/s against the single
engine's, which is what K runs one after another would give.
FLOPs per image come from torch.utils.flop_counter (forward + backward of one
batch, divided by its size).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import augmentations, per_image_standardization, prepare_all
from ..models import build_model, traits
from .loop import run_epoch
from .optim import SGD
from .pack import Single, Stacked
from .run import autocast_for, pick_device


class ConventionalDataset(torch.utils.data.Dataset):
    """In-memory images, one PIL image and one transform pipeline per __getitem__."""

    def __init__(self, x_uint8: np.ndarray, y: np.ndarray, crop: int | None, random_crop: bool):
        from torchvision import transforms as T

        self.images = x_uint8.transpose(0, 2, 3, 1)  # HWC, as PIL wants
        self.y = y
        steps = []
        if crop:
            steps.append(T.RandomCrop(crop) if random_crop else T.CenterCrop(crop))
        steps += [T.ToTensor(), T.Lambda(lambda t: per_image_standardization(t[None])[0])]
        self.transform = T.Compose(steps)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        return self.transform(pil), int(self.y[i])


def flops_per_image(model, in_shape, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(8, *in_shape, device=device)
    y = torch.zeros(8, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 8


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    model_name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    crop: int | None,
    epochs: int = 1,
    batch_size: int = 128,
    device: str = "cpu",
    random_crop: bool = False,
    workers: int = 0,
    lr: float = 0.01,
    seed: int = 0,
    baseline: bool = True,
    pack: int = 1,
    log=print,
) -> dict:
    dev = pick_device(device)
    n, c, h, w = x.shape
    in_shape = (c, crop or h, crop or w)
    num_classes = int(y.max()) + 1
    result = {
        "model": model_name,
        "device": str(dev),
        "images": n,
        "epochs": epochs,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }
    autocast = autocast_for(dev)  # the engine's: bf16 where the GPU computes it natively
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    kw = dict(
        in_shape=in_shape,
        num_classes=num_classes,
        crop=crop,
        epochs=epochs,
        batch_size=batch_size,
        random_crop=random_crop,
        lr=lr,
        seed=seed,
        autocast=autocast,
        device=dev,
    )
    xd, yd = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    result.update(_bench_engine(model_name, xd, yd, **kw))
    log(f"images/s: {result['images_per_s']:.0f}")
    result["bare_images_per_s"] = _bench_bare(model_name, xd, yd, **kw)
    result["engine_share_of_bare"] = result["images_per_s"] / result["bare_images_per_s"]
    log(f"bare images/s: {result['bare_images_per_s']:.0f}")
    log(f"engine share of bare: {100 * result['engine_share_of_bare']:.0f}%")
    if pack > 1:
        result.update(_bench_pack(model_name, xd, yd, pack, **kw))
        result["pack_speedup"] = result["pack_images_per_s"] / result["images_per_s"]
        log(
            f"packed images/s ({pack} runs): {result['pack_images_per_s']:.0f} aggregate, against "
            f"{result['images_per_s']:.0f} of the single engine"
        )
        log(f"pack speedup: {result['pack_speedup']:.2f}")
    if baseline:
        result["baseline_images_per_s"] = _bench_baseline(model_name, x, y, workers=workers, **kw)
        result["speedup"] = result["images_per_s"] / result["baseline_images_per_s"]
        log(f"baseline images/s: {result['baseline_images_per_s']:.0f}")
        log(f"speedup: {result['speedup']:.1f}")
    log(
        f"flops/image: {result['flops_per_image']:.4g}"
        + (f"  TFLOP/s: {result['tflops']:.2f}" if "tflops" in result else "")
    )
    return result


def _bench_bare(
    model_name, xd, yd, *, in_shape, num_classes, crop, epochs, batch_size, random_crop, lr, seed, autocast, device
) -> float:
    """The limit: forward + backward + update of one resident batch, nothing else (_bare)."""
    xfit = xd if random_crop else prepare_all(xd, crop)
    return _bare(
        model_name,
        in_shape,
        num_classes,
        xfit,
        yd,
        batch_size=batch_size,
        steps=max(10, epochs * (len(yd) // batch_size)),
        lr=lr,
        seed=seed,
        dev=device,
        autocast=autocast,
        crop=crop if random_crop else None,
    )


def _members(x, y, k: int, seed: int, device):
    """k members of a pack as run_epoch reads them: the shared inputs and labels, a generator each."""
    from types import SimpleNamespace

    return [
        SimpleNamespace(x_fit=x, y_train=y, gen=torch.Generator(device=device).manual_seed(seed + i)) for i in range(k)
    ]


def _bench_engine(
    model_name, xd, yd, *, in_shape, num_classes, crop, epochs, batch_size, random_crop, lr, seed, autocast, device
) -> dict:
    """The engine's images/s: one run as a pack of one (loop.run_epoch), its inputs prepared as train does."""
    torch.manual_seed(seed)
    model = build_model(model_name, in_shape, num_classes).to(device)
    out = {"flops_per_image": flops_per_image(model, in_shape, device)}
    single = Single(model, 0.9, 0.0, lr, channels_last=device.type == "cuda" and traits(model)["conv"])
    augment = augmentations({"crop"} if random_crop else set())
    kw = dict(batch_size=batch_size, crop=crop, augment=augment, autocast=autocast)
    n = len(yd)
    run_epoch(
        single,
        _members(xd if random_crop else prepare_all(xd, crop), yd, 1, seed, device),
        [torch.arange(batch_size, device=device)],
        **kw,
    )  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    xfit = xd if random_crop else prepare_all(xd, crop)  # once per run, as train does
    _sync(device)
    out["prepare_s"] = time.perf_counter() - t0
    group = _members(xfit, yd, 1, seed, device)
    for _ in range(epochs):
        run_epoch(single, group, [torch.randperm(n, device=device, generator=group[0].gen)], **kw)
    _sync(device)
    out["images_per_s"] = epochs * n / (time.perf_counter() - t0)
    if device.type == "cuda":
        out["tflops"] = out["images_per_s"] * out["flops_per_image"] / 1e12
    return out


def _bench_baseline(
    model_name,
    x,
    y,
    *,
    workers,
    in_shape,
    num_classes,
    crop,
    epochs,
    batch_size,
    random_crop,
    lr,
    seed,
    autocast,
    device,
) -> float:
    """images/s of a conventional loop: a PIL dataset, per-image transforms, a DataLoader, torch's SGD."""
    torch.manual_seed(seed)
    model = build_model(model_name, in_shape, num_classes).to(device)
    if device.type == "cuda" and traits(model)["conv"]:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)  # a typical script's: torch's default SGD
    loader = torch.utils.data.DataLoader(
        ConventionalDataset(x, y, crop, random_crop),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    n, seen, t0 = len(y), 0, None
    for _ in range(epochs + 1):  # the first batch of the first pass is the warm-up
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if t0 is None:
                _sync(device)
                t0 = time.perf_counter()
                continue
            seen += len(yb)
            if seen >= epochs * n:
                break
        if seen >= epochs * n:
            break
    loss.item()
    return seen / (time.perf_counter() - t0)


def _bare(model_name, in_shape, num_classes, x, y, *, batch_size, steps, lr, seed, dev, autocast, crop) -> float:
    """images/s of forward + backward + the engine's SGD update on one fixed batch (a fresh model)."""
    from ..data.preprocess import prepare_batch

    torch.manual_seed(seed)
    model = build_model(model_name, in_shape, num_classes).to(dev)
    channels_last = dev.type == "cuda" and traits(model)["conv"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = SGD(model.parameters(), lr=lr, momentum=0.9)
    xb, yb = x[:batch_size], y[:batch_size]
    if not xb.is_floating_point():
        xb = prepare_batch(xb, crop)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    model.train()

    def step():
        with autocast():
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps * len(yb) / (time.perf_counter() - t0)


def _bench_pack(
    model_name, xd, yd, k, *, in_shape, num_classes, crop, epochs, batch_size, random_crop, lr, seed, autocast, device
) -> dict:
    """Aggregate images/s of k runs trained as one pack (timed like the engine, after a warm-up)."""
    models = []
    for i in range(k):
        torch.manual_seed(seed + i)
        models.append(build_model(model_name, in_shape, num_classes).to(device))
    stacked = Stacked(models, momentum=0.9, weight_decay=0.0)
    stacked.set_lrs([lr] * k)
    augment = augmentations({"crop"} if random_crop else set())
    n = len(yd)
    kw = dict(batch_size=batch_size, crop=crop, augment=augment, autocast=autocast)
    # warm-up: vmap's first steps are several times slower than its steady state (measured on CPU)
    warm = [torch.arange(min(n, 20 * batch_size), device=device)] * k
    run_epoch(stacked, _members(xd if random_crop else prepare_all(xd, crop), yd, k, seed, device), warm, **kw)
    _sync(device)
    t0 = time.perf_counter()
    group = _members(xd if random_crop else prepare_all(xd, crop), yd, k, seed, device)
    for _ in range(epochs):
        run_epoch(stacked, group, [torch.randperm(n, device=device, generator=m.gen) for m in group], **kw)
    _sync(device)
    return {"pack": k, "pack_images_per_s": k * epochs * n / (time.perf_counter() - t0)}
