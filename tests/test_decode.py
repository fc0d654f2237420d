"""`decode: device` decodes with TorchCodec (pinned), gives the pixels torchvision.io and Pillow give, and warns
of nothing.

torchvision 0.29 deprecates torchvision.io's image decoders in favour of TorchCodec (a DeprecationWarning at
every call); rethinking.data.stream's `decode: device` path uses torchcodec.decoders.decode_jpeg instead (see the
comment above stream._decode_jpegs, and benchmarks/decode_bench.py for the measurement behind it).
"""

import io
import re
import warnings
from importlib.metadata import version

import numpy as np
import pytest
import torch

from rethinking.data import stream
from rethinking.errors import DataError

from conftest import REPO


def _image(rng, w, h):
    """Class-coloured blobs on noise (as tests/test_imagenet.py writes), so the files carry detail."""
    from PIL import Image

    base = np.kron(rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
    return Image.fromarray(np.clip(base + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """train/<class>/ and val/<class>/ JPEGs: small ones, ImageNet-sized 500x375 ones, a grayscale and a CMYK one."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("decode") / "tree"
    for split, n in (("train", 5), ("val", 2)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = (500, 375) if i % 2 else (int(rng.integers(60, 130)), int(rng.integers(60, 130)))
                im = _image(rng, w, h)
                if split == "train" and c == "a" and i == 0:
                    im = im.convert("L")
                if split == "train" and c == "b" and i == 0:
                    im = im.convert("CMYK")
                im.save(d / f"{c}_{i}.JPEG", format="JPEG", quality=90)
    return root


def _files(tree):
    return sorted(p for p in tree.rglob("*.JPEG"))


def _tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _pillow(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def test_torchcodec_is_pinned_to_the_installed_version():
    text = (REPO / "pyproject.toml").read_text()
    pins = re.findall(r'"torchcodec==([^"]+)"', text)
    assert pins == [version("torchcodec").split("+")[0]], pins


def test_decoding_a_tree_on_the_cpu_gives_pillows_and_torchvisions_pixels(tree):
    datas = [p.read_bytes() for p in _files(tree)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is deprecated, nothing else warns
        got = stream._decode_jpegs([_tensor(d) for d in datas], torch.device("cpu"))
    assert len(got) == len(datas) == 14
    for d, img in zip(datas, got):
        ref = _pillow(d)
        assert img.dtype == torch.uint8 and img.shape == ref.shape and img.device.type == "cpu"
        diff = (img.int() - ref.int()).abs()
        # JPEG decoders may round the IDCT and the chroma upsampling differently; here both are libjpeg-turbo
        assert int(diff.max()) <= 2 and float(diff.float().mean()) < 0.05

    tv = pytest.importorskip("torchvision.io")
    if not hasattr(tv, "decode_jpeg"):
        pytest.skip("torchvision.io.decode_jpeg is gone (removed after its deprecation in torchvision 0.29)")
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
        )
        before = [tv.decode_jpeg(_tensor(d), mode=tv.ImageReadMode.RGB) for d in datas]
    assert all(torch.equal(a, b) for a, b in zip(got, before))  # what decode: device gave with torchvision


def test_decode_device_path_does_not_use_torchvision_io_and_warns_of_nothing(tree, monkeypatch):
    import torchvision.io

    def refuse(*args, **kwargs):
        raise AssertionError("decode: device called torchvision.io")

    for name in ("decode_jpeg", "decode_image", "decode_png"):
        if hasattr(torchvision.io, name):
            monkeypatch.setattr(torchvision.io, name, refuse)
    d = stream.build_index(tree)
    pil = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=True, seed=2)
    raw = stream.StreamImages(tree, d["train_files"], d["y_train"], 75, augment=True, seed=2, raw=True)
    keys = [[(i, 0) for i in range(len(pil))]]
    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x_dev, y_dev = stream.to_input(next(iter(stream.make_loader(raw, keys, 0))), raw, cpu)
    assert [str(w.message) for w in caught] == []
    x_pil, y_pil = stream.to_input(next(iter(stream.make_loader(pil, keys, 0))), pil, cpu)
    assert x_dev.shape == x_pil.shape == (10, 3, 75, 75) and torch.equal(y_dev, y_pil)
    assert float((x_pil - x_dev).abs().mean()) < 0.05  # the same crops; resampling differs a little


def test_a_png_among_the_jpegs_is_decoded_by_pillow_and_garbage_is_refused(tree):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    _image(rng, 90, 70).save(buf, format="PNG")
    png = buf.getvalue()
    jpeg = _files(tree)[1].read_bytes()
    got = stream._decode_jpegs([_tensor(jpeg), _tensor(png)], torch.device("cpu"))
    assert torch.equal(got[1], _pillow(png)) and got[1].shape == (3, 70, 90)
    assert got[0].shape == _pillow(jpeg).shape
    with pytest.raises(DataError, match="not a readable image"):
        stream._decode_jpegs([_tensor(jpeg), _tensor(b"\xff\xd8\xff not really a jpeg")], torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_on_cuda_gives_the_cpu_pixels_within_jpeg_tolerance(tree):
    datas = [_tensor(p.read_bytes()) for p in _files(tree)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpu = stream._decode_jpegs(datas, torch.device("cuda"))
    cpu = stream._decode_jpegs(datas, torch.device("cpu"))
    for g, c in zip(gpu, cpu):
        assert g.device.type == "cuda" and g.shape == c.shape
        assert float((g.cpu().float() - c.float()).abs().mean()) < 1.0  # nvJPEG's IDCT and upsampling differ a little


# ----------------------------------------------------------------------------
# EXIF orientation: both decode modes turn the image upright (issue #25, finding 1)


def _oriented_jpeg(w: int, h: int, orientation: int, seed: int = 3) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[stream.ORIENTATION] = orientation
    buf = io.BytesIO()
    _image(np.random.default_rng(seed), w, h).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _both_modes(data: bytes, size: int, augment: bool, n: int):
    """(worker path, decode: device on the CPU) crops of `data` for indices 0..n-1, both N x 3 x size x size floats."""
    width, height = stream.image_size_of(data)
    params = [stream.crop_params(width, height, augment, 5, 1, i) for i in range(n)]
    workers = torch.stack([torch.from_numpy(stream.decode_crop(data, size, augment, 5, 1, i)) for i in range(n)])
    boxes, flips = zip(*params)
    device = stream.decode_batch([_tensor(data)] * n, list(boxes), list(flips), size, torch.device("cpu"))
    return workers.permute(0, 3, 1, 2).float(), device


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("w, h, size", [(100, 60, 32), (400, 240, 32)])  # 400x240: the workers' draft (1/4 scale)
def test_an_exif_rotated_jpeg_gives_the_same_crops_in_both_decode_modes(orientation, w, h, size):
    data = _oriented_jpeg(w, h, orientation)
    upright = (h, w) if orientation in (6, 8) else (w, h)
    assert stream.image_size_of(data) == upright
    assert stream._decode_jpegs([_tensor(data)], torch.device("cpu"))[0].shape[1:] == upright[::-1]
    for augment, n in ((False, 1), (True, 300)):
        workers, device = _both_modes(data, size, augment, n)
        assert workers.shape == device.shape == (n, 3, size, size)
        # the tolerance of test_decode_device_path_does_not_use_torchvision_io_and_warns_of_nothing (inputs in
        # [-1, 1], mean over the batch): resampling and, at 400x240, the workers' reduced-scale decoding differ a
        # little, as much with orientation 1; and every crop within 0.15 (measured: up to 0.01 at 100x60, 0.095
        # at 400x240; two different crops of these images differ by 0.29 or more)
        per_crop = (workers - device).abs().div(127.5).mean(dim=(1, 2, 3))
        assert float(per_crop.mean()) < 0.05 and float(per_crop.max()) < 0.15, (augment, per_crop.max())


def test_the_orientation_tag_changes_the_crop_and_untagged_files_are_unchanged():
    """Orientation 1 (and no tag) decode as before; 3 (180 degrees) gives the upright image's crop."""
    plain, one, turned = (_oriented_jpeg(100, 60, o) for o in (0, 1, 3))
    a, b = (stream.decode_crop(d, 32, False) for d in (plain, one))
    assert np.array_equal(a, b)
    c = stream.decode_crop(turned, 32, False)
    assert float(np.abs(c[::-1, ::-1].astype(float) - a).mean()) < 3  # the 180-degree turn of the same crop


# ----------------------------------------------------------------------------
# no hidden failures (finding 2)


def _refusing(monkeypatch, exc_of, only=None):
    """TorchCodec's decode_jpeg raising exc_of() for a list, and for a single file where only(file) is true."""
    import torchcodec.decoders

    real = torchcodec.decoders.decode_jpeg

    def decode_jpeg(source, **kw):
        if isinstance(source, list) or only is None or only(source):
            raise exc_of()
        return real(source, **kw)

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", decode_jpeg)


def test_a_decoder_that_always_fails_is_an_error_not_a_silent_fallback(tree, monkeypatch):
    datas = [_tensor(p.read_bytes()) for p in _files(tree)[:4]]
    _refusing(monkeypatch, lambda: RuntimeError("decode_jpeg: nvjpegDecode failed: 7"))
    stats = stream.DecodeStats()
    with pytest.raises(RuntimeError, match=r"refused each of the 4 JPEGs of a batch on cpu .*nvjpegDecode failed"):
        stream._decode_jpegs(datas, torch.device("cpu"), stats)
    # a batch of one JPEG cannot tell: Pillow decodes it, counted
    got = stream._decode_jpegs(datas[:1], torch.device("cpu"), stats)
    assert torch.equal(got[0], _pillow(bytes(datas[0].tolist())))
    assert stats.take() == (1, 1, "decode_jpeg: nvjpegDecode failed: 7") and stats.take() == (0, 0, None)


@pytest.mark.parametrize(
    "exc_of",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("decode_jpeg: torchcodec was not compiled with nvJPEG support, so JPEG images ..."),
        lambda: RuntimeError("Failed to initialize nvjpeg with default backend: 5"),
    ],
)
def test_errors_that_are_not_about_a_file_are_raised_at_once(tree, monkeypatch, exc_of):
    datas = [_tensor(p.read_bytes()) for p in _files(tree)[:3]]
    _refusing(monkeypatch, exc_of)
    for batch in (datas, datas[:1]):
        with pytest.raises(RuntimeError, match=r"^training\.decode: device: TorchCodec cannot decode on cpu .*files"):
            stream._decode_jpegs(batch, torch.device("cpu"), stream.DecodeStats())


def test_a_file_torchcodec_refuses_is_decoded_by_pillow_and_counted(tree, monkeypatch):
    files = _files(tree)
    datas = [_tensor(p.read_bytes()) for p in files]
    odd = files[3].read_bytes()
    _refusing(monkeypatch, lambda: RuntimeError("Failed to get image info: 2"), only=lambda d: bytes(d.tolist()) == odd)
    stats = stream.DecodeStats()
    got = stream._decode_jpegs(datas, torch.device("cpu"), stats)
    monkeypatch.undo()
    want = stream._decode_jpegs(datas, torch.device("cpu"))
    assert torch.equal(got[3], _pillow(odd))
    assert all(torch.equal(a, b) for k, (a, b) in enumerate(zip(got, want)) if k != 3)
    assert stats.take() == (len(datas), 1, "Failed to get image info: 2")


@pytest.mark.parametrize("missing", ["torchcodec", "auto"])
def test_decode_device_is_refused_when_params_are_loaded_where_it_cannot_work(monkeypatch, missing):
    import importlib.util

    from rethinking import plan as rc

    real = importlib.util.find_spec
    if missing == "torchcodec":
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "torchcodec" else real(name, *a)
        )
    raw = {
        "dataset": {"source": "imagenet", "root": "x"},
        "training": {"decode": "device", "device": "auto" if missing == "auto" else "cpu"},
        "grid": [{"name": "a", "models": ["inception_v3"], "corruptions": ["true_labels"]}],
    }
    with pytest.raises(rc.ConfigError) as exc:
        rc.validate(raw, "p.yaml")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("p.yaml: training.decode: 'device' needs ")
    assert ("TorchCodec" if missing == "torchcodec" else "training.device") in message
    raw["training"]["device"] = "cpu"
    monkeypatch.undo()
    assert rc.validate(raw, "p.yaml")["training"]["decode"] == "device"  # installed, device chosen: accepted


# ----------------------------------------------------------------------------
# batched resizing and the prefetch thread (finding 3)


def _one_call_per_crop(datas, boxes, flips, size):
    """decode_batch as it was before crops of one size were resized together (one interpolate per crop)."""
    import torch.nn.functional as F

    images = stream._decode_jpegs(datas, torch.device("cpu"))
    out = torch.empty((len(images), 3, size, size))
    for k, (img, (left, top, right, bottom), flip) in enumerate(zip(images, boxes, flips)):
        crop = img[None, :, top:bottom, left:right].contiguous()
        out[k] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        if flip:
            out[k] = out[k].flip(-1)
    return out


@pytest.mark.parametrize("augment", [False, True])
def test_resizing_crops_of_one_size_together_gives_the_same_bits(tree, augment):
    files = _files(tree) * 3  # the same files thrice: center crops of one size come in groups
    datas = [_tensor(p.read_bytes()) for p in files]
    params = []
    for i, d in enumerate(datas):
        width, height = stream.image_size_of(bytes(d.tolist()))
        params.append(stream.crop_params(width, height, augment, 0, 0, i))
    boxes, flips = (list(v) for v in zip(*params))
    got = stream.decode_batch(datas, boxes, flips, 40, torch.device("cpu"))
    assert torch.equal(got, _one_call_per_crop(datas, boxes, flips, 40))


def _batches(tree, prefetch, workers=0):
    d = stream.build_index(tree)
    raw = stream.StreamImages(tree, d["train_files"], d["y_train"], 48, augment=True, seed=4, raw=True)
    keys = [[(i, e) for i in range(j, min(j + 3, len(raw)))] for e in (0, 1) for j in range(0, len(raw), 3)]
    return stream.DeviceBatches(raw, keys, workers, torch.device("cpu"), prefetch=prefetch)


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_batches_are_the_batches_without_prefetching(tree, workers):
    with _batches(tree, prefetch=False, workers=workers) as plain:
        want = list(plain)
    with _batches(tree, prefetch=True, workers=workers) as ahead:
        got = list(ahead)
        assert ahead.thread is not None and ahead.thread.daemon
    assert not ahead.thread.is_alive() and len(got) == len(want) == 8
    for (xa, ya), (xb, yb) in zip(got, want):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_the_prefetch_thread_ends_when_the_loop_stops_early_or_fails(tree, monkeypatch):
    import threading

    before = set(threading.enumerate())
    with _batches(tree, prefetch=True) as ahead:  # the consumer stops after one batch
        for _ in ahead:
            break
    assert not ahead.thread.is_alive()
    with pytest.raises(KeyError, match="the training step failed"):  # the consumer fails
        with _batches(tree, prefetch=True) as ahead:
            for _ in ahead:
                raise KeyError("the training step failed")
    assert not ahead.thread.is_alive()
    calls = []

    def failing(*args, **kw):  # the producer fails at its third batch: raised in the consumer, in order
        calls.append(1)
        if len(calls) == 3:
            raise DataError("x.JPEG: not a readable image")
        return real(*args, **kw)

    real = stream.decode_batch
    monkeypatch.setattr(stream, "decode_batch", failing)
    seen = 0
    with pytest.raises(DataError, match="not a readable image"):
        with _batches(tree, prefetch=True) as ahead:
            for _ in ahead:
                seen += 1
    assert seen == 2 and not ahead.thread.is_alive()
    assert set(threading.enumerate()) <= before
