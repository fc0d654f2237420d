"""The engine's hot loop equals a plain PyTorch loop, and the bench command runs."""
import contextlib
import io
import json

import numpy as np
import torch
import torch.nn.functional as F

from conftest import run_cli
from rethinking.models import build_model
from rethinking.train import load_sgd, run_epoch, sgd


def plain_standardize(x: np.ndarray) -> np.ndarray:
    """TF's per-image standardization, written independently in numpy."""
    out = np.empty_like(x)
    for i, img in enumerate(x):
        out[i] = (img - img.mean()) / max(img.std(), 1 / np.sqrt(img.size))
    return out


def test_engine_matches_a_plain_loop_given_the_same_batch_order():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(70, 3, 10, 10), dtype=np.uint8)
    y = rng.integers(0, 4, size=70)
    perm = torch.from_numpy(rng.permutation(70))

    torch.manual_seed(0)
    model = build_model("mlp_1x512", (3, 8, 8), num_classes=4)
    opt = sgd(model.parameters(), lr=0.05, momentum=0.9)   # the engine's optimizer
    losses = []
    step, correct, seen = run_epoch(
        model, opt, torch.from_numpy(x), torch.from_numpy(y), perm, batch_size=16, crop=8, augment=frozenset(),
        generator=None, autocast=contextlib.nullcontext, channels_last=False, loss_sum=torch.zeros(()), step=0,
        log_every=1, on_log=lambda s, loss: losses.append(loss))

    torch.manual_seed(0)
    ref = build_model("mlp_1x512", (3, 8, 8), num_classes=4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_losses = []
    crops = x[:, :, 1:9, 1:9].astype(np.float32) / 255.0
    for i in range(0, 70, 16):
        idx = perm[i:i + 16].numpy()
        xb = torch.from_numpy(plain_standardize(crops[idx]))
        loss = F.cross_entropy(ref(xb), torch.from_numpy(y[idx]))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(loss.item())

    assert step == 5 and seen == 70 and len(losses) == 5
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_sgd_equals_torch_default_sgd_and_resumes_from_an_unfused_state():
    torch.manual_seed(0)
    a = build_model("mlp_1x512", (3, 6, 6), num_classes=5)
    b = build_model("mlp_1x512", (3, 6, 6), num_classes=5)
    b.load_state_dict(a.state_dict())
    opt_a = sgd(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(20, 3, 6, 6), torch.randint(0, 5, (20,))

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for _ in range(5):
        step(a, opt_a)
        step(b, opt_b)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # a single run resumes from a default SGD's state (what a pack writes) and stays fused
    opt_c = sgd(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    saved = io.BytesIO()
    torch.save(opt_b.state_dict(), saved)   # as a checkpoint holds it (loading a live state_dict shares its buffers)
    saved.seek(0)
    load_sgd(opt_c, torch.load(saved))
    assert all(g["fused"] for g in opt_c.param_groups)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(opt_c.state[p]["momentum_buffer"], opt_b.state[q]["momentum_buffer"])
    step(a, opt_c)
    step(b, opt_b)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_bench_command_reports_throughput_and_speedup(tmp_path):
    proc = run_cli("bench", "--model", "mlp_1x512", "--dataset", "digits", "--train-size", "300",
                   "--batch-size", "32", "--pack", "2", "--json", tmp_path / "b.json", cwd=tmp_path, check=True)
    assert "images/s:" in proc.stdout and "baseline images/s:" in proc.stdout and "speedup:" in proc.stdout
    assert "packed images/s (2 runs):" in proc.stdout
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["images_per_s"] > 0 and result["baseline_images_per_s"] > 0 and result["pack_images_per_s"] > 0
    assert result["flops_per_image"] > 2 * 49 * 512  # at least the forward multiply-adds
