"""What the CUDA paths of both engines depend on, checked on the CPU (nothing here needs a GPU).

- Resuming SGD lays every momentum buffer out like its parameter (channels_last on CUDA, contiguous
  elsewhere, whatever wrote the checkpoint): the fused kernels pair elements by storage position.
- A checkpoint is resumed only on the kind of device that wrote it (its random states do not load into
  another's generators): the fingerprint covers the resolved device type.
- Evaluation (the stop rule's logits) never runs under the training steps' autocast; bf16 autocast only
  on GPUs that compute in bf16 natively; TF32 convolutions are off while evaluating.
- The processes of one multi-process run claim slots on different GPUs, whatever jobs_per_gpu is.
- Every process of a multi-process run has its own training randomness (dropout) after the same
  initialization; a one-process run draws what it always drew.
"""

import contextlib
import copy
import inspect
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine import run as rn
from rethinking.engine import slots
from rethinking.engine import streamed as ts
from rethinking.engine.optim import SGD
from rethinking.engine.pack import Stacked
from rethinking.models import build_model, traits
from rethinking.plan.settings import ENGINE_SOURCES, STREAM_ENGINE_SOURCES, fingerprint, run_settings, stream_settings

from conftest import REPO, torchrun_train

SHAPE = (3, 28, 28)
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4


# ---------------------------------------------------------------------------- 1. momentum buffers' layout


def _batch(seed=0, k=None):
    g = torch.Generator().manual_seed(seed)
    lead = () if k is None else (k,)
    return torch.randn(*lead, 8, *SHAPE, generator=g), torch.randint(0, 10, (*lead, 8), generator=g)


def _alexnet(channels_last: bool, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("alexnet", SHAPE, num_classes=10)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def _step(model, opt, x, y, channels_last: bool):
    xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    loss = F.cross_entropy(model(xb), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _max_diff(a, b):
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def _resume(model_state, opt_state, channels_last: bool, loader):
    """A fresh model (layout `channels_last`) and fused SGD, resumed from the states (SGD's by `loader`)."""
    model = _alexnet(channels_last, seed=123)  # another initialization: everything must come from the states
    model.load_state_dict(model_state)
    opt = SGD(model.parameters(), LR, MOMENTUM, WD)
    loader(opt, copy.deepcopy(opt_state))  # load_state_dict keeps (aliases) the saved tensors: a copy per resume
    return model, opt


def _engine_load(opt, state):
    """The engine's resume (optim.SGD.load_state_dict: every buffer laid out like its parameter)."""
    opt.load_state_dict(state)


def _plain_load(opt, state):
    """torch.optim.SGD's own load_state_dict, which keeps the saved buffers as they are (their layout too)."""
    opt.load_state_dict(state)
    for i, p in enumerate(opt.param_groups[0]["params"]):
        opt.state[p]["momentum_buffer"] = state["state"][i]["momentum_buffer"]


def _checkpoint_of(channels_last: bool):
    """(model state, optimizer state) after one fused step of a run in the given layout, and that run's
    parameters after one more step: what an uninterrupted run reaches."""
    model = _alexnet(channels_last)
    assert traits(model)["conv"]
    opt = SGD(model.parameters(), LR, MOMENTUM, WD)
    _step(model, opt, *_batch(0), channels_last)
    states = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _step(model, opt, *_batch(1), channels_last)
    return states, _params(model)


@pytest.mark.parametrize("saved, resumed", [("contiguous", "channels_last"), ("channels_last", "contiguous")])
def test_sgd_resumes_into_the_other_memory_layout(saved, resumed):
    """(a) a contiguous (CPU or pack) checkpoint resumed as a channels_last run (CUDA's conv models), and (b) a
    channels_last checkpoint resumed on the CPU: one fused step equals the uninterrupted run's next step, and
    every buffer has its parameter's strides. torch's plain load_state_dict keeps the saved layout: the CPU's
    fused kernel then pairs wrong elements (CUDA's refuses the step: check_fast_path_restrictions)."""
    (model_state, opt_state), reference = _checkpoint_of(saved == "channels_last")
    x, y = _batch(1)
    cl = resumed == "channels_last"

    model, opt = _resume(model_state, opt_state, cl, _engine_load)
    conv_weight = next(model.parameters())
    assert conv_weight.dim() == 4 and conv_weight.is_contiguous(memory_format=torch.channels_last) == cl
    for p in model.parameters():
        assert opt.state[p]["momentum_buffer"].stride() == p.stride()
    assert all(g["fused"] for g in opt.param_groups)
    _step(model, opt, x, y, cl)
    assert _max_diff(reference, model.parameters()) < 1e-6

    # without the re-layout the step is wrong (by about 1e-3 here): the test can fail
    model, opt = _resume(model_state, opt_state, cl, _plain_load)
    conv_weight = next(model.parameters())
    assert opt.state[conv_weight]["momentum_buffer"].stride() != conv_weight.stride()
    _step(model, opt, x, y, cl)
    assert _max_diff(reference, model.parameters()) > 1e-5


def test_a_packs_optimizer_state_resumes_as_a_channels_last_single_run():
    """(c) a pack's checkpoint of a member (pack.Stacked.optimizer_state: contiguous slices) resumed as a single
    channels_last run steps as the same checkpoint resumed contiguous (no layout question there)."""
    models = [_alexnet(False, seed=s) for s in (0, 1)]
    stacked = Stacked(models, MOMENTUM, WD)
    xs, ys = _batch(0, k=2)
    stacked.set_lrs([LR, LR])
    stacked.step(xs, ys, contextlib.nullcontext)
    k = 1
    member = stacked.member(k)
    model_state = copy.deepcopy(member.state_dict())
    opt_state = copy.deepcopy(stacked.optimizer_state(k, member, LR))
    x, y = _batch(1)

    ref_model, ref_opt = _resume(model_state, opt_state, False, _engine_load)
    _step(ref_model, ref_opt, x, y, False)
    model, opt = _resume(model_state, opt_state, True, _engine_load)
    for p in model.parameters():
        assert opt.state[p]["momentum_buffer"].stride() == p.stride()
    _step(model, opt, x, y, True)
    assert _max_diff(_params(ref_model), model.parameters()) < 1e-6

    model, opt = _resume(model_state, opt_state, True, _plain_load)
    _step(model, opt, x, y, True)
    assert _max_diff(_params(ref_model), model.parameters()) > 1e-5


def test_loading_sgd_state_leaves_matching_buffers_alone():
    """Same layout (every CPU run, and CUDA's MLPs): the loaded buffers are used as they are, no copy."""
    (model_state, opt_state), _ = _checkpoint_of(False)
    model = _alexnet(False)
    model.load_state_dict(model_state)
    opt = SGD(model.parameters(), LR, MOMENTUM, WD)
    state = copy.deepcopy(opt_state)
    opt.load_state_dict(state)
    for i, p in enumerate(model.parameters()):
        assert opt.state[p]["momentum_buffer"].data_ptr() == state["state"][i]["momentum_buffer"].data_ptr()


# ---------------------------------------------------------------------------- 2. the device type in the fingerprint


def test_the_fingerprint_covers_the_device_type_and_only_where_given():
    s = {"run": "r", "lr": 0.1}
    plain, cpu, cuda = (fingerprint(s, ENGINE_SOURCES, d) for d in (None, "cpu", "cuda"))
    assert len({plain, cpu, cuda}) == 3
    assert fingerprint(s, ENGINE_SOURCES, "cpu") == cpu  # deterministic
    with pytest.raises(ValueError, match="resolved"):
        fingerprint(s, ENGINE_SOURCES, "auto")
    with pytest.raises(ValueError, match="resolved"):
        fingerprint(s, ENGINE_SOURCES, "cuda:1")


def test_run_settings_do_not_name_the_device():
    """The settings (summary.json, the Snakemake params, packing) stay what they were: planning knows no device."""
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse("true-labels"), "alexnet", "crop-wd", 0)
    assert not any("device" in key for key in run_settings(cfg, run))
    assert not any("device" in key for key in stream_settings(cfg, run))


class Killed(Exception):
    pass


@pytest.fixture
def tiny(tmp_path):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / "results")
    cfg["training"]["max_epochs"] = 2
    prepare(cfg)
    return cfg


def _tiny_run(cfg, corruption="true-labels", model="mlp_1x512", regs="none", seed=0):
    run = rc.Run(rc.dataset_id(cfg), rc.Corruption.parse(corruption), model, regs, seed)
    corrupt(cfg, run.corruption)
    return run


def test_a_checkpoint_made_on_cuda_is_not_resumed_on_the_cpu(tiny, tmp_path, monkeypatch):
    """Train 1 of 2 epochs (killed after its checkpoint), give the checkpoint the fingerprint the same function
    gives a CUDA run of these settings (and a CUDA generator's 16-byte state, which set_state would refuse):
    the rerun on the CPU starts over with one log line, and ends as an uninterrupted run."""
    run = _tiny_run(tiny)
    out = rc.run_dir(tiny, run)
    real = tr.save_checkpoint

    def kill_after_epoch_1(*args, **kw):
        real(*args, **kw)
        raise Killed()

    monkeypatch.setattr(tr, "save_checkpoint", kill_after_epoch_1)
    with pytest.raises(Killed):
        tr.train(tiny, run, log=lambda *_: None)
    monkeypatch.setattr(tr, "save_checkpoint", real)

    ck = torch.load(out / rn.CHECKPOINT, map_location="cpu", weights_only=True)
    s = run_settings(tiny, run)
    assert ck["fingerprint"] == fingerprint(s, ENGINE_SOURCES, "cpu") != fingerprint(s, ENGINE_SOURCES)
    ck["fingerprint"] = fingerprint(s, ENGINE_SOURCES, "cuda")
    ck["generator"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator's get_state() holds
    with pytest.raises(RuntimeError):
        torch.Generator().set_state(ck["generator"])  # the crash a resume would have been
    torch.save(ck, out / rn.CHECKPOINT)

    lines = []
    tr.train(tiny, run, log=lines.append)
    assert f"{run.id}: checkpoint was made with other settings or code; starting over" in lines
    assert not any("resuming" in line for line in lines)
    assert not (out / "checkpoint.pt.corrupt").exists()

    other = dict(tiny, results_dir=str(tmp_path / "again"))
    prepare(other)
    corrupt(other, run.corruption)
    ref = tr.train(other, run, log=lambda *_: None)
    cols = ["epoch", "step", "lr", "batch_train_acc", "train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(ref / "epochs.csv")[cols], pd.read_csv(out / "epochs.csv")[cols])
    pd.testing.assert_frame_equal(pd.read_csv(ref / "steps.csv"), pd.read_csv(out / "steps.csv"))


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    from test_imagenet import make_jpeg_tree

    return make_jpeg_tree(tmp_path_factory.mktemp("imagenet") / "tree")


STREAM_RUN = "imagenet/random-labels/alexnet/none/seed0"


def _stream_cfg(tmp_path, tree, results="results", **training):
    from test_checkpoints import streamed_params
    from test_imagenet import prepared

    p = streamed_params(tmp_path, tree, results)
    if training:
        import yaml

        raw = yaml.safe_load(p.read_text())
        raw["training"].update(training)
        p.write_text(yaml.safe_dump(raw))
    cfg = prepared(p, "random-labels")
    return cfg, rc.find_run(cfg, STREAM_RUN)


def test_a_streamed_checkpoint_made_on_cuda_is_not_resumed_on_the_cpu(tmp_path, jpeg_tree, monkeypatch):
    cfg, run = _stream_cfg(tmp_path, jpeg_tree)
    out = rc.run_dir(cfg, run)
    real = ts.save_checkpoint

    def kill_at_step_2(*args, **kw):
        real(*args, **kw)
        raise Killed()

    monkeypatch.setattr(ts, "save_checkpoint", kill_at_step_2)
    with pytest.raises(Killed):
        ts.train(cfg, run, log=lambda *_: None)
    monkeypatch.setattr(ts, "save_checkpoint", real)

    ck = torch.load(out / rn.CHECKPOINT, map_location="cpu", weights_only=True)
    s = stream_settings(cfg, run)
    assert ck["fingerprint"] == fingerprint(s, STREAM_ENGINE_SOURCES, "cpu") != fingerprint(s, STREAM_ENGINE_SOURCES)
    assert ck["progress"]["step"] == 2
    ck["fingerprint"] = fingerprint(s, STREAM_ENGINE_SOURCES, "cuda")
    torch.save(ck, out / rn.CHECKPOINT)
    lines = []
    ts.train(cfg, run, log=lines.append)
    assert f"{run.id}: checkpoint was made with other settings or code; starting over" in lines
    assert not any("resuming" in line for line in lines)
    assert any(f"{run.id}: step 1 (1/6 of epoch 1)" in line for line in lines)
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


# ---------------------------------------------------------------------------- 3. evaluation in fp32


class AutocastRecorder:
    """An autocast factory that counts being entered, inside and outside the engine's `evaluate`."""

    def __init__(self):
        self.in_training = self.in_evaluation = 0
        self.evaluating = False

    def factory(self):
        @contextlib.contextmanager
        def entered():
            if self.evaluating:
                self.in_evaluation += 1
            else:
                self.in_training += 1
            yield

        return entered()

    def wrap(self, evaluate):
        def evaluating(*args, **kw):
            self.evaluating = True
            try:
                return evaluate(*args, **kw)
            finally:
                self.evaluating = False

        return evaluating


@pytest.mark.parametrize("pack", [1, 2])
def test_evaluation_never_enters_the_training_autocast(tiny, monkeypatch, pack):
    rec = AutocastRecorder()
    monkeypatch.setattr(tr, "autocast_for", lambda device: rec.factory)
    monkeypatch.setattr(tr, "evaluate", rec.wrap(tr.evaluate))
    runs = [_tiny_run(tiny, seed=0)]
    if pack == 2:
        tiny["seeds"] = [0, 1]
        runs.append(_tiny_run(tiny, seed=1))
    outs = tr.train_runs(tiny, runs, log=lambda *_: None)
    steps = max(json.loads((out / "summary.json").read_text())["steps"] for out in outs)
    assert rec.in_evaluation == 0
    assert rec.in_training == steps > 0  # a pack: one stacked step for all members
    assert "autocast" not in inspect.signature(tr.evaluate).parameters


def test_streamed_evaluation_never_enters_the_training_autocast(tmp_path, jpeg_tree, monkeypatch):
    rec = AutocastRecorder()
    monkeypatch.setattr(ts, "autocast_for", lambda device: rec.factory)
    monkeypatch.setattr(ts, "evaluate", rec.wrap(ts.evaluate))
    cfg, run = _stream_cfg(tmp_path, jpeg_tree)
    out = ts.train(cfg, run, log=lambda *_: None)
    assert rec.in_evaluation == 0 and rec.in_training == json.loads((out / "summary.json").read_text())["steps"] == 6
    assert "autocast" not in inspect.signature(ts.evaluate).parameters


def test_bf16_autocast_only_where_the_gpu_computes_bf16_natively(monkeypatch):
    assert tr.autocast_for(torch.device("cpu")) is contextlib.nullcontext
    asked = []

    def supported(native):
        def is_bf16_supported(including_emulation=True):
            asked.append(including_emulation)
            return native or including_emulation  # an emulating GPU says yes unless asked for native bf16

        return is_bf16_supported

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(False))
    assert tr.autocast_for(torch.device("cuda", 0)) is contextlib.nullcontext
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported(True))
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = tr.autocast_for(torch.device("cuda", 0))()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert asked == [False, False]
    assert ts.autocast_for is tr.autocast_for  # one helper for both engines


def test_evaluation_runs_without_tf32(monkeypatch):
    """Both engines evaluate through metrics.evaluate, inside precision.exact_float32 (its flags:
    tests/test_kernels_gpu.py)."""
    from rethinking.engine import metrics, precision

    assert tr.evaluate is metrics.evaluate and ts.evaluate is metrics.evaluate
    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(precision, "exact_float32", recording)
    model = torch.nn.Linear(4, 3)
    metrics.evaluate(model, [(torch.zeros(5, 4), torch.zeros(5, dtype=torch.int64), None)])
    assert entered == [True]


# ---------------------------------------------------------------------------- 4. one GPU per process of a run


@pytest.mark.parametrize("visible", ["0,1", "4,6,7", "0,1,2,3", "3,2,1,0"])
@pytest.mark.parametrize("per_gpu", [1, 2, 3])
@pytest.mark.parametrize("others", [0, 1, 2])
def test_the_processes_of_a_run_claim_different_gpus(tmp_path, monkeypatch, visible, per_gpu, others):
    """Simulated GPUs (CUDA_VISIBLE_DEVICES, a lock folder of this test): `others` one-process jobs hold slots
    (the first GPU's first slot free again: a job that ended), then runs of `world` processes claim theirs,
    process by process (in turn forwards and backwards), until one finds none free. Every run's processes are
    on different GPUs; no slot is held twice; each slot's index names its GPU. (Before, each process took the
    first free slot anywhere: with GPU 1's first slot held, both processes of a 2-process run went to GPU 0.)"""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    ids = visible.split(",")
    count = len(ids)
    if others + 1 > count * per_gpu:
        pytest.skip("more one-process jobs than slots")
    for world in range(1, count + 1):
        lock_dir = tmp_path / f"locks-{world}"
        held = [slots.claim_gpu(count, per_gpu, lock_dir=lock_dir, timeout=0) for _ in range(others + 1)]
        held.pop(0).release()
        runs = 0
        while True:
            run = {}
            try:
                for rank in range(world) if runs % 2 == 0 else reversed(range(world)):
                    run[rank] = slots.claim_gpu(count, per_gpu, rank, world, lock_dir=lock_dir, timeout=0)
            except TimeoutError:
                for slot in run.values():
                    slot.release()
                break
            runs += 1
            held += run.values()
            assert len({s.physical for s in run.values()}) == world, (world, run)
            for s in run.values():
                assert s.physical == ids[s.device] and s.path.name == f"gpu{s.physical}.slot{s.slot}.lock"
        assert len({(s.physical, s.slot) for s in held}) == len(held)
        if others == 0:  # as many runs as the fewest GPUs of a process (rank_devices) have slots
            assert runs == count // world * per_gpu
        for s in held:
            s.release()


def test_rank_devices_partition_the_gpus():
    for count in range(1, 9):
        for world in range(1, count + 1):
            parts = [slots.rank_devices(count, r, world) for r in range(world)]
            assert sorted(itertools.chain(*parts)) == list(range(count))  # every GPU, each for one rank
            assert all(parts)
    assert slots.rank_devices(4, 0, 1) == [0, 1, 2, 3]


def test_a_run_of_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(
        rc.ConfigError,
        match=r"gpus_per_run: a run of 2 processes needs 2 GPUs.*sees 1 "
        r"\(CUDA_VISIBLE_DEVICES=2\)",
    ):
        slots.claim_gpu(1, 4, 1, 2, timeout=0)


def test_a_one_process_run_claims_as_slots_claim_does(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    a = slots.claim_gpu(2, 2, lock_dir=tmp_path, timeout=0)
    b = slots.claim(2, 2, lock_dir=tmp_path, timeout=0)
    c = slots.claim_gpu(2, 2, lock_dir=tmp_path, timeout=0)
    assert [(s.physical, s.slot) for s in (a, b, c)] == [("5", 0), ("7", 0), ("5", 1)]
    for s in (a, b, c):
        s.release()


def test_the_default_lock_folder_is_slots_claims(tmp_path, monkeypatch):
    """Without lock_dir: slots.DEFAULT_DIR, or the SLURM job's own folder in it, as slots.claim uses."""
    monkeypatch.setattr(slots, "DEFAULT_DIR", tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with slots.claim_gpu(2, 1, 1, 2, timeout=0) as s:
        assert s.path == tmp_path / "gpu1.slot0.lock"
        with slots.claim(2, 1, timeout=0) as other:  # a one-process job sees process 1's slot taken
            assert other.path == tmp_path / "gpu0.slot0.lock"
            with pytest.raises(TimeoutError):
                slots.claim(2, 1, timeout=0)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with slots.claim_gpu(2, 1, 0, 2, timeout=0) as s:
        assert s.path == tmp_path / "slurm-job-42" / "gpu0.slot0.lock"


# ---------------------------------------------------------------------------- 7. a random stream per process


def test_rank_seeds_are_distinct_and_deterministic():
    seeds = {(seed, rank): ts.rank_seed(seed, rank) for seed in range(4) for rank in range(1, 9)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert ts.rank_seed(3, 2) == seeds[(3, 2)]
    assert all(v not in range(4) for v in seeds.values())
    with pytest.raises(ValueError):
        ts.rank_seed(0, 0)


def test_after_the_same_initialization_each_process_draws_its_own_dropout():
    """The engine's setup in processes 0..3: the same model everywhere, then process 0 goes on with the run's
    stream (the one-process run's draws, unchanged) and the others draw masks of their own."""

    def setup(rank):
        torch.manual_seed(5)
        model = build_model("mlp_1x512", (1, 7, 7), num_classes=10, dropout=0.5)
        ts.seed_process(5, rank)
        return model, torch.get_rng_state(), torch.nn.functional.dropout(torch.ones(1000), 0.5)

    torch.manual_seed(5)
    build_model("mlp_1x512", (1, 7, 7), num_classes=10, dropout=0.5)
    single = torch.get_rng_state()
    results = [setup(rank) for rank in range(4)]
    for model, _, _ in results[1:]:
        for a, b in zip(results[0][0].parameters(), model.parameters()):
            assert torch.equal(a, b)
    assert torch.equal(results[0][1], single)
    states = [r[1] for r in results]
    masks = [r[2] for r in results]
    assert all(not torch.equal(states[i], states[j]) for i, j in itertools.combinations(range(4), 2))
    assert all(not torch.equal(masks[i], masks[j]) for i, j in itertools.combinations(range(4), 2))
    assert torch.equal(setup(2)[2], masks[2])  # deterministic


@pytest.mark.slow
def test_two_gloo_processes_keep_different_random_states(tmp_path, jpeg_tree):
    """torchrun, 2 gloo processes, a run with dropout: the checkpoint's per-process random states differ (they
    were equal when every process trained from the run's seed alone), and the run completes."""

    import yaml

    from test_checkpoints import streamed_params

    p = streamed_params(tmp_path, jpeg_tree, "results")
    raw = yaml.safe_load(p.read_text())
    raw["training"]["gpus_per_run"] = 2
    raw["grid"][0]["regularizers"] = ["dropout"]
    p.write_text(yaml.safe_dump(raw))
    from test_imagenet import prepared

    prepared(p, "random-labels")
    run_id = STREAM_RUN.replace("/none/", "/dropout/")
    proc = torchrun_train(p, run_id, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "runs" / run_id
    ck = torch.load(out / rn.CHECKPOINT, map_location="cpu", weights_only=True)
    a, b = ck["processes"]
    assert not torch.equal(a["torch_rng"], b["torch_rng"])
    s = json.loads((out / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == 6 and s["dropout"] > 0


# ---------------------------------------------------------------------------- 8a. evaluation counts without a sync


def test_streamed_evaluation_counts_images_on_the_host(tmp_path, jpeg_tree):
    """Evaluation shares its sums between processes once per evaluation (one vector, the image count in it),
    not once per batch; the means are over all images, whatever the batch size."""
    cfg, run = _stream_cfg(tmp_path, jpeg_tree)
    d = ts.load_streamed(cfg, run.corruption)
    test_set = ts.StreamImages(d["root"], d["test_files"], d["y_test"], 32, augment=False)
    torch.manual_seed(0)
    model = build_model("alexnet", (3, 32, 32), num_classes=len(d["classes"]))
    procs = ts._Procs(1, 0, torch.device("cpu"))
    idx = np.arange(len(test_set))
    results = {}
    for batch_size in (3, len(test_set)):
        reduced = []

        def reduce(v, reduced=reduced):
            reduced.append(v.clone())
            return procs.sum(v)

        ev = ts.evaluate(model, ts._eval_batches(test_set, idx, procs, batch_size, 0, False), topk=5, reduce=reduce)
        assert len(reduced) == 1 and reduced[0][-1] == len(test_set)
        results[batch_size] = (ev["loss"], ev["acc"], ev["top5"], ev["correct"])
    (loss, top1, top5, correct), again = results[3], results[len(test_set)]
    assert 0 <= top1 <= top5 <= 1 and correct == round(top1 * len(test_set)) and len(test_set) > 3
    assert again[3] == correct and again[:3] == pytest.approx((loss, top1, top5), rel=1e-12)
