"""The kernels stage's CUDA paths, checked on the CPU: its GPU slot and `gpu` resource, and float32 without TF32.

What runs here: the device choice with CUDA simulated (torch.cuda.is_available / device_count / set_device
patched, the slot lock folder a temporary one), the slot held while the stage runs and free again when it
fails, the rule's `gpu` resource in dry runs, and the TF32 flags (readable and
settable without a GPU) around the feature pass and the solve. What does not: a real CUDA run (whether
cuDNN and cuBLAS then compute in IEEE float32 is for a GPU check: random-conv features against the CPU's).
"""

import re

import numpy as np
import pytest
import torch
import yaml
from test_slurm import dry_run_resources

from rethinking.engine import slots
from rethinking.section5 import kernels
from rethinking.section5 import stages as section5
from rethinking.section5.kernels import exact_float32
from rethinking.section5.stages import kernel_device, kernel_gpus

from conftest import clone_project, tiny_params


def _cfg(device="auto", jobs_per_gpu=1):
    return {"section5": {"kernels": {"device": device}}, "training": {"jobs_per_gpu": jobs_per_gpu}}


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """CUDA with 3 GPUs as far as the stage can tell; the slot locks in tmp_path/slots; set_device recorded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
    monkeypatch.setattr(slots, "DEFAULT_DIR", tmp_path / "slots")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return chosen


def _free(lock_dir, gpu, slot=0) -> bool:
    fd = slots.try_lock(lock_dir / f"gpu{gpu}.slot{slot}.lock", "probe\n")
    if fd is None:
        return False
    slots._unlock(fd)
    return True


# --- 5: the device and its GPU slot --------------------------------------------------------------------


def test_cpu_and_auto_without_cuda_claim_no_slot(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(slots, "DEFAULT_DIR", tmp_path / "slots")
    for name in ("cpu", "auto"):
        with kernel_device(_cfg(name), log=lambda m: None) as device:
            assert device == torch.device("cpu")
    assert not (tmp_path / "slots").exists()  # not even the lock folder
    with pytest.raises(RuntimeError, match="section5.kernels.device: 'cuda'"):
        with kernel_device(_cfg("cuda")):
            pass


def test_cuda_claims_the_next_free_slot_like_a_training_job(fake_cuda, tmp_path):
    """Two training jobs hold GPUs 0 and 1 (their slots claimed as train_runs claims them): auto and cuda both
    resolve to the third GPU's slot, cuda:2, and make it the current device; the slot is free once released."""
    lock_dir = tmp_path / "slots"
    held = [slots.claim(3, 1), slots.claim(3, 1)]  # what two training processes hold
    assert [s.device for s in held] == [0, 1]
    logged = []
    for name in ("auto", "cuda"):
        with kernel_device(_cfg(name), log=logged.append) as device:
            assert device == torch.device("cuda", 2)
            assert fake_cuda[-1] == torch.device("cuda", 2)
            assert not _free(lock_dir, 2)
        assert _free(lock_dir, 2)
    assert logged == ["kernels: GPU slot 0 of GPU 2"] * 2
    # every GPU's slot taken: the stage waits, as a training job does (here: times out)
    third = slots.claim(3, 1)
    with pytest.raises(TimeoutError):
        slots.claim(3, 1, timeout=0.2, poll=0.05)
    for s in [*held, third]:
        s.release()


def test_jobs_per_gpu_and_visible_devices_are_honoured(fake_cuda, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,9")
    held = [slots.claim(3, 2) for _ in range(3)]  # every GPU's first slot
    with kernel_device(_cfg("cuda", jobs_per_gpu=2), log=lambda m: None) as device:
        assert device == torch.device("cuda", 0)
        assert not _free(tmp_path / "slots", 5, slot=1)  # GPU 5 (the first visible), its second slot
    assert _free(tmp_path / "slots", 5, slot=1)
    for s in held:
        s.release()


def test_the_stage_holds_its_slot_while_it_runs_and_frees_it_when_it_fails(fake_cuda, monkeypatch, tmp_path):
    """kernels_stage passes cuda:<slot> to the kernel solves, and a crash in them leaves the slot free."""
    lock_dir = tmp_path / "slots"
    seen = []

    def run_kernel(data, **kw):
        seen.append((kw["device"], _free(lock_dir, 0)))
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(section5, "_data", lambda cfg: {})
    monkeypatch.setattr(section5, "read_meta", lambda path: {})
    monkeypatch.setattr(section5, "base_artifact", lambda cfg: tmp_path / "base.npz")
    monkeypatch.setattr(kernels, "run_kernel", run_kernel)
    cfg = {
        "results_dir": str(tmp_path / "results"),
        "dataset": {"seed": 0},
        "training": {"jobs_per_gpu": 1},
        "section5": {
            "kernels": {
                "device": "auto",
                "features": ["pixels"],
                "ridge": 0.0,
                "gamma": {},
                "n_train": None,
                "n_test": None,
                "n_filters": 4,
                "pool": 2,
            },
            "implicit": {},
        },
    }
    with pytest.raises(RuntimeError, match="simulated"):
        section5.kernels_stage(cfg)
    assert seen == [(torch.device("cuda", 0), False)]  # cuda:0, its slot held during the solve
    assert _free(lock_dir, 0)  # and free again after the crash


def test_kernel_gpus_follows_the_training_convention():
    assert kernel_gpus(_cfg("auto")) == 1 and kernel_gpus(_cfg("cuda")) == 1 and kernel_gpus(_cfg("cpu")) == 0
    assert kernel_gpus({"section5": None}) == 0 and kernel_gpus({}) == 0


@pytest.fixture(scope="module")
def dry_project(tmp_path_factory):
    """A clone with config/tiny.yaml's grid, section5.kernels.device auto (as params.yaml) and cpu."""
    root = clone_project(tmp_path_factory.mktemp("kgpu") / "project")
    cfg = tiny_params()
    for device in ("auto", "cpu"):
        cfg["section5"]["kernels"]["device"] = device
        (root / f"kernels-{device}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.mark.parametrize("device, gpus", [("auto", 1), ("cpu", 0)])
def test_the_kernels_rule_asks_a_gpu_unit_when_it_may_use_a_gpu(dry_project, device, gpus):
    """(The SLURM profile's partition for it: tests/test_slurm.py.)"""
    found = dry_run_resources(dry_project, f"--configfile kernels-{device}.yaml")
    assert re.search(rf"\bgpu={gpus}\b", found["kernels"]), found["kernels"]
    assert "gpu=" not in found["theorem"]


# --- 6: float32 without TF32 -----------------------------------------------------------------------------


def _flags():
    return (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.rnn.fp32_precision,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.mkldnn.matmul.fp32_precision,
    )


@pytest.fixture
def restore_tf32():
    """Put torch's TF32 settings back after a test that changes them (cudnn.allow_tf32 is True by default)."""
    saved = _flags()
    yield
    torch.backends.cudnn.allow_tf32 = saved[0]
    torch.set_float32_matmul_precision(saved[2])
    for knob, value in zip(
        (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul, torch.backends.mkldnn.matmul),
        saved[3:],
    ):
        knob.fp32_precision = value
    assert _flags() == saved


@pytest.mark.parametrize("setup", ["default", "high", "medium", "cudnn_off"])
def test_exact_float32_turns_tf32_off_and_restores_the_flags(restore_tf32, setup):
    if setup in ("high", "medium"):
        torch.set_float32_matmul_precision(setup)  # TF32 matmuls on, as a caller may set it
    elif setup == "cudnn_off":
        torch.backends.cudnn.allow_tf32 = False
    before = _flags()
    if setup == "default":
        assert before[:3] == (True, False, "highest")  # torch's defaults: cuDNN TF32 on, cuBLAS TF32 off
    with exact_float32():
        inside = _flags()
        with exact_float32():  # nested: the inner exit leaves the outer setting
            pass
        assert _flags() == inside
    assert inside == (False, False, "highest", "ieee", "ieee", "ieee", "ieee")
    assert _flags() == before


def test_exact_float32_restores_after_an_exception(restore_tf32):
    torch.set_float32_matmul_precision("high")
    before = _flags()
    with pytest.raises(ValueError):
        with exact_float32():
            raise ValueError
    assert _flags() == before


def _record_flags(monkeypatch, module, name):
    """Wrap module.name to record (cudnn.allow_tf32, matmul.allow_tf32) at each call."""
    seen, real = [], getattr(module, name)

    def spy(*a, **kw):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(*a, **kw)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_the_random_conv_feature_pass_runs_without_tf32(monkeypatch, restore_tf32):
    torch.set_float32_matmul_precision("high")  # a caller's TF32 matmuls: still off inside the pass
    seen = _record_flags(monkeypatch, torch.nn.functional, "conv2d")
    x = np.random.default_rng(0).integers(0, 256, size=(5, 3, 12, 12), dtype=np.uint8)
    f = kernels.random_conv_features(x, n_filters=8, pool=2, seed=0)
    assert f.shape == (5, 32) and seen and set(seen) == {(False, False)}
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)  # restored


@pytest.mark.parametrize("solver", ["blocked32", "cg"])
def test_the_float32_kernel_build_and_solve_run_without_tf32(monkeypatch, restore_tf32, solver):
    """The Gram matrix's row blocks (torch.mm), the blocked Cholesky's and the solves' matmuls: no TF32."""
    torch.set_float32_matmul_precision("high")
    mm = _record_flags(monkeypatch, torch, "mm")
    chol = _record_flags(monkeypatch, torch.linalg, "cholesky_ex")
    tri = _record_flags(monkeypatch, torch.linalg, "solve_triangular")
    f = torch.from_numpy(np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32))
    y = torch.eye(4, dtype=torch.float64)[torch.arange(40) % 4]
    sol = kernels.solve_interpolant(f, y, gamma=0.1, ridge=0.01, solver=solver, block=16)
    assert sol["solver"] == solver and mm and set(mm) == {(False, False)}
    if solver == "blocked32":
        assert chol and tri and set(chol) | set(tri) == {(False, False)}
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
