"""The engine's hot loop equals a plain PyTorch loop, and the bench command runs."""

import contextlib
import copy
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rethinking.engine.loop import run_epoch
from rethinking.engine.optim import SGD as sgd
from rethinking.engine.pack import Single
from rethinking.models import build_model

from conftest import call_cli


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
    single = Single(model, momentum=0.9, weight_decay=0.0, lr=0.05)  # a run as a pack of one, the engine's SGD
    member = SimpleNamespace(x_fit=torch.from_numpy(x), y_train=torch.from_numpy(y), gen=None)
    correct, seen, step_losses = run_epoch(
        single, [member], [perm], batch_size=16, crop=8, augment=frozenset(), autocast=contextlib.nullcontext
    )
    losses = step_losses[:, 0].tolist()
    step = len(losses)

    torch.manual_seed(0)
    ref = build_model("mlp_1x512", (3, 8, 8), num_classes=4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    ref_losses = []
    crops = x[:, :, 1:9, 1:9].astype(np.float32) / 255.0
    for i in range(0, 70, 16):
        idx = perm[i : i + 16].numpy()
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
    torch.save(opt_b.state_dict(), saved)  # as a checkpoint holds it (loading a live state_dict shares its buffers)
    saved.seek(0)
    opt_c.load_state_dict(torch.load(saved))
    assert all(g["fused"] for g in opt_c.param_groups)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(opt_c.state[p]["momentum_buffer"], opt_b.state[q]["momentum_buffer"])
    step(a, opt_c)
    step(b, opt_b)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def _stepper(model, x, y):
    def step(opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _twins(seed=0):
    torch.manual_seed(seed)
    a = build_model("mlp_2x16", (1, 4, 4), num_classes=3)
    b = build_model("mlp_2x16", (1, 4, 4), num_classes=3)
    b.load_state_dict(a.state_dict())
    return a, b, torch.randn(12, 1, 4, 4), torch.randint(0, 3, (12,))


@pytest.mark.parametrize("momentum, wd", [(0.9, 5e-4), (0.0, 0.0), (0.0, 0.01)])
def test_engine_sgd_writes_and_reads_torch_fused_sgds_state_dict(momentum, wd):
    """optim.SGD against torch.optim.SGD(fused=True): the same parameters after 3 steps, the same state_dict
    (keys, group values, buffers), and each one resumes from the other's state to the same next step."""
    a, b, x, y = _twins()
    ours = sgd(a.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    theirs = torch.optim.SGD(b.parameters(), lr=0.1, momentum=momentum, weight_decay=wd, fused=True)
    for _ in range(3):
        _stepper(a, x, y)(ours)
        _stepper(b, x, y)(theirs)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    sa, sb = ours.state_dict(), theirs.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys() and (len(sa["state"]) == 0) == (momentum == 0)
    for i in sa["state"]:
        torch.testing.assert_close(sa["state"][i]["momentum_buffer"], sb["state"][i]["momentum_buffer"], rtol=0, atol=0)
    # cross-resume: torch's optimizer from our state, ours from torch's
    a2, b2 = build_model("mlp_2x16", (1, 4, 4), 3), build_model("mlp_2x16", (1, 4, 4), 3)
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    ours2 = sgd(a2.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    ours2.load_state_dict(copy.deepcopy(sb))
    theirs2 = torch.optim.SGD(b2.parameters(), lr=0.1, momentum=momentum, weight_decay=wd, fused=True)
    theirs2.load_state_dict(copy.deepcopy(sa))
    for model, opt in ((a, ours), (b, theirs), (a2, ours2), (b2, theirs2)):
        _stepper(model, x, y)(opt)
    for m in (b, a2, b2):
        for p, q in zip(a.parameters(), m.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_engine_sgd_starts_the_buffers_a_resumed_state_lacks_as_torch_does():
    """A state holding buffers for some parameters only: those continue, the others start at buf = g
    (torch's default SGD does the same per parameter; its fused path cannot mix them)."""
    a, b, x, y = _twins(1)
    ours = sgd(a.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    theirs = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    _stepper(a, x, y)(ours)
    _stepper(b, x, y)(theirs)
    state = copy.deepcopy(ours.state_dict())
    del state["state"][0], state["state"][3]
    ours.load_state_dict(state)
    for i, p in enumerate(b.parameters()):
        if i in (0, 3):
            del theirs.state[p]
    for _ in range(2):
        _stepper(a, x, y)(ours)
        _stepper(b, x, y)(theirs)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_engine_sgd_refuses_a_state_of_another_model():
    a, _, _, _ = _twins()
    other = torch.optim.SGD(build_model("mlp_1x16", (1, 4, 4), 3).parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="group of 4 parameters where this optimizer's has 6"):
        sgd(a.parameters(), lr=0.1, momentum=0.9).load_state_dict(other.state_dict())


def test_a_training_process_does_not_import_torch_dynamo(tmp_path):
    """torch.optim's Optimizer imports torch._dynamo (about 1.8 s of a fresh process here,
    benchmarks/optimizer_import.py); a training step, a checkpoint's state_dict and a resume must not."""
    code = (
        "import sys, torch\n"
        "from rethinking.engine.optim import SGD as sgd\n"
        "from rethinking.engine.pack import Stacked\n"
        "from rethinking.models import build_model\n"
        "m = build_model('mlp_1x16', (1, 4, 4), 3)\n"
        "opt = sgd(m.parameters(), 0.1, 0.9, 5e-4)\n"
        "m(torch.zeros(2, 1, 4, 4)).sum().backward(); opt.step()\n"
        "sgd(m.parameters(), 0.1, 0.9).load_state_dict(opt.state_dict())\n"
        "st = Stacked([m, build_model('mlp_1x16', (1, 4, 4), 3)], 0.9, 0.0)\n"
        "st.load_member(1, m.state_dict(), st.optimizer_state(0, st.member(0), 0.1))\n"
        "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_bench_command_reports_throughput_and_speedup(tmp_path):
    proc = call_cli(
        "bench",
        "--model",
        "mlp_1x512",
        "--dataset",
        "digits",
        "--train-size",
        "300",
        "--batch-size",
        "32",
        "--pack",
        "2",
        "--json",
        tmp_path / "b.json",
        cwd=tmp_path,
        check=True,
    )
    assert "images/s:" in proc.stdout and "baseline images/s:" in proc.stdout and "speedup:" in proc.stdout
    assert "packed images/s (2 runs):" in proc.stdout
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["images_per_s"] > 0 and result["baseline_images_per_s"] > 0 and result["pack_images_per_s"] > 0
    assert result["flops_per_image"] > 2 * 49 * 512  # at least the forward multiply-adds
