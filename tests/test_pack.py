"""Packing: runs trained together as one stacked model write what single runs write."""

import contextlib
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine import run as rn
from rethinking.engine.pack import Stacked
from rethinking.models import build_model
from rethinking.plan.packs import plan_packs

from conftest import REPO, call_cli, copy_tiny, tiny_params


def _cfg(tmp_path, name, **training):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / name)
    cfg["training"].update(training)
    prepare(cfg)
    return cfg


def _runs(cfg, corruptions, model="mlp_1x512", regs="none", seeds=(0,)):
    runs = [rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(c), model, regs, s) for c in corruptions for s in seeds]
    for c in {r.corruption for r in runs}:
        corrupt(cfg, c)
    return runs


def _outputs(cfg, run):
    d = rc.run_dir(cfg, run)
    return (json.loads((d / "summary.json").read_text()), pd.read_csv(d / "epochs.csv"), pd.read_csv(d / "steps.csv"))


def _assert_same_run(single, packed, rtol=1e-4):
    (s1, e1, t1), (s2, e2, t2) = single, packed
    for key in ("status", "epochs", "steps", "step_first_fit", "n_train", "parameters", "lr", "seed", "run"):
        assert s1[key] == s2[key], key
    for key in ("train_loss", "test_loss"):
        assert s2[key] == pytest.approx(s1[key], rel=rtol), key
    # accuracy: the same predictions up to an example that sits on a rounding-sized margin
    assert abs(s1["train_acc"] - s2["train_acc"]) <= 100 / s1["n_train"] + 1e-9
    assert abs(s1["test_acc"] - s2["test_acc"]) <= 100 / s1["n_test"] + 1e-9
    assert list(e1.columns) == list(e2.columns) and list(t1.columns) == list(t2.columns)
    cols = ["epoch", "step", "lr", "train_loss", "test_loss"]
    np.testing.assert_allclose(e2[cols].to_numpy(), e1[cols].to_numpy(), rtol=rtol)
    np.testing.assert_allclose(t2.to_numpy(), t1.to_numpy(), rtol=rtol)


def test_packed_runs_write_what_single_runs_write(tmp_path):
    # different data (pixel corruptions), different labels and seeds, and one run that fits
    # before the others (true labels), so the pack shrinks while it trains
    kw = dict(max_epochs=10, lr_decay_images=None, weight_decay=5e-4, lr={"mlp_1x512": 0.05})
    single, packed = _cfg(tmp_path, "single", **kw), _cfg(tmp_path, "packed", **kw)
    corr = ["true-labels", "random-labels", "shuffled-pixels"]
    runs = _runs(single, corr, regs="wd", seeds=(0, 1))
    _runs(packed, corr)
    for run in runs:
        tr.train(single, run, log=lambda *_: None)
    lines = []
    tr.train_runs(packed, runs, log=lines.append)
    statuses = {_outputs(single, r)[0]["status"] for r in runs}
    assert statuses == {"fitted", "max_epochs"}, "the pack should lose members while it trains"
    for run in runs:
        _assert_same_run(_outputs(single, run), _outputs(packed, run))
        assert (rc.run_dir(packed, run) / rn.CHECKPOINT).is_file()


def test_packed_batchnorm_and_augmented_runs_match_single_runs(tmp_path):
    # Inception (batch norm buffers stacked), random crops drawn from each run's own generator. One epoch
    # at lr 0.01: batch norm over 25 tiny images amplifies rounding differences within a few more steps
    kw = dict(max_epochs=1, lr={"inception": 0.01})
    single, packed = _cfg(tmp_path, "single", **kw), _cfg(tmp_path, "packed", **kw)
    runs = _runs(single, ["true-labels", "random-labels"], model="inception", regs="crop")
    _runs(packed, ["true-labels", "random-labels"], model="inception", regs="crop")
    for run in runs:
        tr.train(single, run, log=lambda *_: None)
    tr.train_runs(packed, runs, log=lambda *_: None)
    for run in runs:
        _assert_same_run(_outputs(single, run), _outputs(packed, run), rtol=1e-3)


class Killed(Exception):
    pass


def test_a_killed_pack_resumes_packed_or_alone(tmp_path, monkeypatch):
    kw = dict(max_epochs=4)
    full, killed = _cfg(tmp_path, "full", **kw), _cfg(tmp_path, "killed", **kw)
    runs = _runs(full, ["random-labels", "gaussian"])
    _runs(killed, ["random-labels", "gaussian"])
    tr.train_runs(full, runs, log=lambda *_: None)

    real = tr.save_checkpoint

    def kill_at_epoch_2(out, fingerprint, model, opt, progress, *args, **kw):
        real(out, fingerprint, model, opt, progress, *args, **kw)
        if progress.epoch == 2 and out == rc.run_dir(killed, runs[1]):
            raise Killed()

    monkeypatch.setattr(tr, "save_checkpoint", kill_at_epoch_2)
    with pytest.raises(Killed):
        tr.train_runs(killed, runs, log=lambda *_: None)
    monkeypatch.setattr(tr, "save_checkpoint", real)
    assert not any((rc.run_dir(killed, r) / "summary.json").exists() for r in runs)
    # one run goes on alone from the pack's checkpoint, the other in a pack of one more run
    lines = []
    tr.train(killed, runs[0], log=lines.append)
    assert any("resuming after epoch 2" in line for line in lines)
    tr.train_runs(killed, [runs[1]], log=lambda *_: None)
    for run in runs:
        _assert_same_run(_outputs(full, run), _outputs(killed, run))


def _rel(a, b):
    """Largest difference relative to the tensor's scale (rounding differs by layer, not by element)."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


# Inception: smaller steps, fewer of them. Its batch norm over 16 tiny images has channels of almost zero
# variance, which amplify rounding differences (~3e-6 in the first gradients) by orders of magnitude per step.
@pytest.mark.parametrize(
    "model, lrs, steps", [("mlp_3x512", [0.1, 0.05, 0.01], 3), ("inception", [0.001, 0.0005, 0.0002], 2)]
)
def test_stacked_update_is_torch_sgd(model, lrs, steps):
    """Stacked steps equal torch.optim.SGD (momentum, weight decay) on each member, with per-member lr,
    and batch norm's running statistics are each member's own."""
    torch.manual_seed(0)
    models = [build_model(model, (1, 7, 7), 10) for _ in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    stacked = Stacked(models, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(3, 16, 1, 7, 7), torch.randint(0, 10, (3, 16))
    opts = [torch.optim.SGD(r.parameters(), lr=lr, momentum=0.9, weight_decay=0.01) for r, lr in zip(refs, lrs)]
    for _ in range(steps):
        stacked.set_lrs(lrs)
        stacked.step(x, y, contextlib.nullcontext)
        for r, o, xb, yb in zip(refs, opts, x, y):
            o.zero_grad()
            torch.nn.functional.cross_entropy(r(xb), yb).backward()
            o.step()
    for k, r in enumerate(refs):
        member = stacked.member(k)
        for (n, a), b in zip(member.state_dict().items(), r.state_dict().values()):
            assert _rel(a, b) < 1e-4, n
        assert any("running_mean" in n for n in member.state_dict()) == (model == "inception")
        # and the momentum round-trips through a single run's optimizer state
        sd = stacked.optimizer_state(k, stacked.member(k), lrs[k])
        for a, b in zip(sd["state"].values(), opts[k].state_dict()["state"].values()):
            assert _rel(a["momentum_buffer"], b["momentum_buffer"]) < 1e-4


def test_plan_packs_groups_only_runs_that_can_share_a_model(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["grid"].append(
        {
            "name": "drop",
            "models": ["mlp_1x512"],
            "corruptions": ["true_labels", "random_labels"],
            "regularizers": ["dropout"],
        }
    )
    runs = rc.expand_runs(cfg)
    assert plan_packs(cfg, runs, 1) == [[r] for r in runs]
    cfg["training"]["pack"] = 4
    packs = plan_packs(cfg, runs)
    assert sorted(r.id for p in packs for r in p) == sorted(r.id for r in runs)  # every run once
    assert max(len(p) for p in packs) == 4
    for p in packs:
        assert len({(r.model, r.regularizers, r.variant) for r in p}) == 1
        if len(p) > 1:
            assert "dropout" not in p[0].regularizers


def test_training_pack_may_be_set_per_model():
    raw = tiny_params()
    raw["grid"].append({"name": "conv", "models": ["alexnet"], "corruptions": ["labels"], "levels": [0.0, 0.5, 1.0]})
    raw["training"]["pack"] = {"mlp_1x512": 3, "default": 1}
    cfg = rc.validate(raw)
    sizes = {}
    for p in plan_packs(cfg, rc.expand_runs(cfg)):
        sizes.setdefault(p[0].model, []).append(len(p))
    assert max(sizes["mlp_1x512"]) == 3 and set(sizes["alexnet"]) == {1}
    raw["training"]["pack"] = {"alexnet": 2}  # no default: 1
    cfg = rc.validate(raw)
    sizes = {
        m: [len(p) for p in plan_packs(cfg, rc.expand_runs(cfg)) if p[0].model == m] for m in ("mlp_1x512", "alexnet")
    }
    assert set(sizes["mlp_1x512"]) == {1} and max(sizes["alexnet"]) == 2
    raw["training"]["pack"] = {"mlp_1x5l2": 2}
    with pytest.raises(rc.ConfigError, match=r"training\.pack\.mlp_1x5l2: not a model entry"):
        rc.validate(raw)


def test_train_command_refuses_runs_that_cannot_share_a_pack(tmp_path):
    params = copy_tiny(
        tmp_path, (REPO / "config" / "tiny.yaml").read_text().replace("results/tiny", str(tmp_path / "r"))
    )
    a, b = (
        "digits-train100-test50/true-labels/mlp_1x512/none/seed0",
        "digits-train100-test50/true-labels/alexnet/crop-wd/seed0",
    )
    proc = call_cli("train", "--params", params, "--run", a, "--run", b, cwd=tmp_path)
    assert proc.returncode == 2
    assert "alexnet/crop-wd/seed0 has model='alexnet'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "runs").exists()
    proc = call_cli("train", "--params", params, "--run", a, "--run", a, cwd=tmp_path)
    assert proc.returncode == 2 and "twice" in proc.stderr


def test_switching_packing_on_retrains_nothing(tmp_path):
    """Finished single runs are finished runs for a pack too (same checkpoint, same fingerprint), so
    changing training.pack only rewrites the run folders' files from their checkpoints."""
    cfg = _cfg(tmp_path, "r", max_epochs=2)
    runs = _runs(cfg, ["true-labels", "random-labels"])
    for run in runs:
        tr.train(cfg, run, log=lambda *_: None)
    before = [(rc.run_dir(cfg, r) / "epochs.csv").read_bytes() for r in runs]
    lines = []
    tr.train_runs(cfg, runs, log=lines.append)
    assert sum("resuming after epoch 2" in line for line in lines) == 2
    assert not any("epoch 3" in line for line in lines)
    assert [(rc.run_dir(cfg, r) / "epochs.csv").read_bytes() for r in runs] == before


@pytest.mark.parametrize(
    "name, shape",
    [("mlp_1x512", (1, 7, 7)), ("mlp_3x512", (3, 8, 8)), ("alexnet", (1, 7, 7)), ("alexnet", (3, 12, 10))],
)
def test_the_batched_pack_step_is_the_vmap_step(name, shape):
    """Plain stacks of layers (the MLPs, AlexNet) take one batched op per layer instead of vmap: the same
    losses, predictions and parameters after three steps, to float rounding; Inception keeps vmap."""
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(build_model(name, shape, 10))
    fast, ref = Stacked(models, 0.9, 5e-4), Stacked(models, 0.9, 5e-4)
    assert fast._batched is not None
    ref._batched = None
    x, y = torch.randn(3, 16, *shape), torch.randint(0, 10, (3, 16))
    for s in (fast, ref):
        s.set_lrs([0.01, 0.02, 0.05])
    for _ in range(3):
        (la, ca), (lb, cb) = fast.step(x, y, contextlib.nullcontext), ref.step(x, y, contextlib.nullcontext)
        assert torch.allclose(la, lb, rtol=1e-5, atol=1e-6) and torch.equal(ca, cb)
    for n in fast.params:
        assert torch.allclose(fast.params[n], ref.params[n], rtol=1e-5, atol=1e-6), n
    assert Stacked([build_model("inception", (1, 8, 8))] * 2, 0.9, 0.0)._batched is None


def _dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense (ATen's is_non_overlapping_and_dense): some order of the dimensions is contiguous."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


@pytest.mark.parametrize(
    "name, shape, wd", [("mlp_1x512", (1, 7, 7), 5e-4), ("alexnet", (3, 12, 10), 5e-4), ("inception", (1, 8, 8), 0.0)]
)
def test_the_stacked_update_keeps_every_foreach_operand_list_alike(name, shape, wd, monkeypatch):
    """CUDA runs a foreach op as one fused kernel only when its tensor lists agree tensor by tensor (sizes,
    strides, dense); else it loops over per-tensor kernels. Not measurable on a CPU, so checked here: every
    list operand of every foreach call of a step has its parameter's sizes and strides (a batched linear
    layer's gradient comes back from bmm transposed; a broadcast (K, 1) lr view has other sizes)."""
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(build_model(name, shape, 10))
    stacked = Stacked(models, 0.9, wd)
    assert stacked.aligned is None  # aligned on CUDA only; forced here, where no fused kernel exists
    stacked.aligned = True
    calls = []
    for op in ("_foreach_add_", "_foreach_mul_", "_foreach_addcmul_"):
        real = getattr(torch, op)

        def spy(*args, _op=op, _real=real, **kw):
            layout = [(p.shape, p.stride()) for p in stacked.params.values()]  # the parameters' at this call
            calls.append((_op, layout, [a for a in args if isinstance(a, (list, tuple))]))
            return _real(*args, **kw)

        monkeypatch.setattr(torch, op, spy)
    x, y = torch.randn(3, 16, *shape), torch.randint(0, 10, (3, 16))
    for lrs in ([0.01, 0.02, 0.05], [0.01, 0.02]):
        if len(lrs) == 2:
            stacked.keep([0, 2])
            x, y = x[[0, 2]], y[[0, 2]]
        stacked.set_lrs(lrs)
        stacked.step(x, y, contextlib.nullcontext)
    step_ops = ["_foreach_add_"] * bool(wd) + ["_foreach_mul_", "_foreach_add_", "_foreach_addcmul_"]
    assert [op for op, _, _ in calls] == step_ops * 2
    for op, layout, lists in calls:
        assert len(lists) >= 1
        for ts in lists:
            assert len(ts) == len(layout), op
            for t, (shape, stride) in zip(ts, layout):
                assert t.shape == shape and t.stride() == stride and _dense(t), (op, t.shape, t.stride(), stride)


@pytest.mark.parametrize("name, shape", [("mlp_1x512", (1, 7, 7)), ("alexnet", (3, 12, 10)), ("inception", (1, 8, 8))])
def test_the_aligned_update_is_the_broadcast_one_to_the_bit(name, shape):
    """The CUDA layout of the update (gradients copied into the parameters' strides, lr tensors the
    parameters' size) computes what the CPU's (autograd's layouts, a broadcast lr view) does, bit for bit,
    through a pack that shrinks and a change of learning rates."""
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(build_model(name, shape, 10))
    packs = [Stacked(models, 0.9, 5e-4) for _ in range(2)]
    packs[0].aligned, packs[1].aligned = True, False
    x, y = torch.randn(3, 16, *shape), torch.randint(0, 10, (3, 16))
    for step in range(4):
        lrs = [0.01, 0.02 * 0.95**step, 0.05]
        if step == 2:
            for p in packs:
                p.keep([0, 2])
            x, y = x[[0, 2]], y[[0, 2]]
        for p in packs:
            p.set_lrs(lrs if step < 2 else lrs[::2])
        (la, _), (lb, _) = (p.step(x, y, contextlib.nullcontext) for p in packs)
        assert torch.equal(la, lb), step
    for n in packs[0].params:
        assert torch.equal(packs[0].params[n], packs[1].params[n]), n
        assert torch.equal(packs[0].momentum_buf[n], packs[1].momentum_buf[n]), n
