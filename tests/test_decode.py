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
