"""training.optimizer: the engine's Adam against torch.optim.Adam, its checkpoints and exact resumes, the
params that choose it, and the default (sgd) runs' settings left as they were."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from rethinking import plan as rc
from rethinking.data.corrupt import corrupt
from rethinking.data.sources import prepare
from rethinking.engine import loop as tr
from rethinking.engine.optim import SGD, Adam, make_optimizer
from rethinking.errors import ConfigError
from rethinking.files import load_npz
from rethinking.plan.packs import check_packable, plan_packs
from rethinking.plan.settings import ENGINE_SOURCES, fingerprint, run_settings

from conftest import REPO, train_until_killed

HYPER = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-7, "weight_decay": 5e-4}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("kind", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_adam_is_torch_optim_adam(kind):
    """The fused kernel's update to the bit; torch's foreach and per-tensor Adam (other op orders) to
    float rounding."""
    ours, theirs = _model(), _model()
    _train(ours, Adam(ours.parameters(), **HYPER), 6)
    _train(theirs, torch.optim.Adam(theirs.parameters(), **HYPER, **kind), 6)
    if kind.get("fused"):
        assert _same_params(ours, theirs)
    else:
        for p, q in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # and not trivially: the weights moved, and weight decay is in the update (L2, as torch's Adam)
    assert not _same_params(ours, _model())
    other = _model()
    _train(other, Adam(other.parameters(), **{**HYPER, "weight_decay": 0.0}), 6)
    assert not _same_params(ours, other)


def test_adam_state_dict_is_torch_format_and_resumes_in_either():
    ours, theirs = _model(), _model()
    opt = Adam(ours.parameters(), **HYPER)
    ref = torch.optim.Adam(theirs.parameters(), **HYPER, fused=True)
    _train(ours, opt, 3)
    _train(theirs, ref, 3)
    mine, torch_sd = opt.state_dict(), ref.state_dict()
    assert mine["param_groups"] == torch_sd["param_groups"]
    assert mine["state"].keys() == torch_sd["state"].keys()
    for i, st in mine["state"].items():
        assert st.keys() == torch_sd["state"][i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for k, v in st.items():
            assert v.dtype == torch_sd["state"][i][k].dtype and torch.equal(v, torch_sd["state"][i][k]), k
    # ours' state into torch's Adam, torch's into ours (with other hyperparameters: the saved ones win)
    a, b = copy.deepcopy(ours), copy.deepcopy(ours)
    into_torch = torch.optim.Adam(a.parameters(), lr=1.0, foreach=True)
    into_torch.load_state_dict(copy.deepcopy(mine))
    into_ours = Adam(b.parameters(), lr=1.0, betas=(0.5, 0.5))
    into_ours.load_state_dict(copy.deepcopy(torch_sd))
    assert into_ours.param_groups[0]["betas"] == (0.8, 0.99) and into_ours.param_groups[0]["lr"] == 1e-2
    _train(ours, opt, 3, seed=2)
    _train(a, into_torch, 3, seed=2)
    _train(b, into_ours, 3, seed=2)
    assert _same_params(ours, a) and _same_params(ours, b)


def test_adam_refuses_a_state_of_another_shape():
    model = _model()
    opt = Adam(model.parameters(), **HYPER)
    _train(model, opt, 1)
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="exp_avg 0 has shape"):
        Adam(_model().parameters(), **HYPER).load_state_dict(sd)


def test_make_optimizer_follows_the_settings():
    s = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    assert type(make_optimizer(_model().parameters(), s)) is SGD
    adam = make_optimizer(
        _model().parameters(), {**s, "optimizer": "adam", "adam": {"betas": [0.9, 0.95], "eps": 1e-6}}
    )
    assert type(adam) is Adam and adam.param_groups[0]["betas"] == (0.9, 0.95) and adam.param_groups[0]["eps"] == 1e-6
    with pytest.raises(ValueError, match="'rmsprop'"):
        make_optimizer(_model().parameters(), {**s, "optimizer": "rmsprop"})


# ---------------------------------------------------------------------------- params and settings


def _raw(**training):
    raw = {
        "grid": [{"name": "g", "models": ["mlp_1x512"], "corruptions": ["true_labels", "random_labels"]}],
        "training": training,
    }
    return raw


@pytest.mark.parametrize(
    "training, message",
    [
        ({"optimizer": "rmsprop"}, r"training\.optimizer: 'rmsprop' is not one of .*\(allowed: sgd, adam\)"),
        ({"adam": {"betas": [0.9]}}, r"training\.adam\.betas: \[0\.9\] is too short \(expected exactly 2 items\)"),
        ({"adam": {"betas": [0.9, 1.0]}}, r"training\.adam\.betas\[1\]: 1\.0 is greater than or equal"),
        ({"adam": {"betas": [-0.1, 0.9]}}, r"training\.adam\.betas\[0\]: -0\.1 is less than the minimum of 0"),
        ({"adam": {"eps": 0}}, r"training\.adam\.eps: 0 is less than or equal to the minimum of 0"),
        ({"adam": {"beta": 0.9}}, r"training\.adam: .*'beta' was unexpected.*\(allowed keys: betas, eps\)"),
    ],
)
def test_bad_optimizer_params_are_one_line_errors(training, message):
    with pytest.raises(ConfigError, match=message) as err:
        rc.validate(_raw(**training))
    assert "\n" not in str(err.value)


def test_a_group_override_with_bad_optimizer_is_refused():
    raw = _raw()
    raw["grid"][0].update(variant="x", training={"optimizer": "lbfgs"})
    with pytest.raises(ConfigError, match=r"grid\[0\]\.training\.optimizer: 'lbfgs'"):
        rc.validate(raw)


# a run's settings before the optimizer became a parameter (an sgd run's must stay these, in this order)
SETTINGS_KEYS = [
    "run", "model", "corruption", "regularizers", "variant", "seed", "crop", "batch_size", "max_epochs",
    "momentum", "lr", "lr_decay", "lr_decay_images", "weight_decay", "dropout", "log_every",
]  # fmt: skip


def test_the_default_keeps_every_run_setting_and_fingerprint():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    default = rc.validate(copy.deepcopy(raw), params_dir=REPO)
    raw["training"]["optimizer"] = "sgd"
    raw["training"]["adam"] = {"betas": [0.5, 0.6], "eps": 1.0}  # not read by sgd runs
    explicit = rc.validate(raw, params_dir=REPO)
    runs = rc.expand_runs(default)
    assert runs == rc.expand_runs(explicit)
    for run in runs:
        s = run_settings(default, run)
        assert list(s) == SETTINGS_KEYS
        assert json.dumps(s, sort_keys=True) == json.dumps(run_settings(explicit, run), sort_keys=True)
    raw["training"]["optimizer"] = "adam"
    adam = rc.validate(raw, params_dir=REPO)
    s = run_settings(adam, runs[0])
    assert s["optimizer"] == "adam" and s["adam"] == {"betas": [0.5, 0.6], "eps": 1.0}
    assert fingerprint(s, ENGINE_SOURCES) != fingerprint(run_settings(default, runs[0]), ENGINE_SOURCES)


def test_a_variant_trains_with_adam_and_merges_its_betas():
    raw = _raw(pack=4)
    raw["grid"].append(
        {
            "name": "dd",
            "models": ["mlp_1x512"],
            "corruptions": ["true_labels", "random_labels"],
            "variant": "adam",
            "training": {"optimizer": "adam", "lr": {"mlp_1x512": 1e-4}, "adam": {"eps": 1e-6}},
        }
    )
    cfg = rc.validate(raw)
    runs = rc.expand_runs(cfg)
    by_variant = {v: [r for r in runs if (r.variant or None) == v] for v in (None, "adam")}
    assert len(by_variant[None]) == len(by_variant["adam"]) == 2
    for r in by_variant["adam"]:
        s = run_settings(cfg, r)
        assert s["optimizer"] == "adam" and s["lr"] == 1e-4
        assert s["adam"] == {"betas": [0.9, 0.999], "eps": 1e-6}  # params' betas, the variant's eps
    assert all("optimizer" not in run_settings(cfg, r) for r in by_variant[None])
    # the sgd runs share a pack; adam runs are trained alone, and refused in a pack
    packs = plan_packs(cfg, runs)
    assert sorted(len(p) for p in packs) == [1, 1, 2]
    adam_runs = by_variant["adam"]
    with pytest.raises(ConfigError, match=r"trains with training\.optimizer 'adam'; a pack trains with sgd only"):
        check_packable(cfg, adam_runs, [run_settings(cfg, r) for r in adam_runs])


# ---------------------------------------------------------------------------- training and exact resumes


def _adam_cfg(tmp_path, name):
    cfg = rc.load(REPO / "config" / "tiny.yaml")
    cfg["results_dir"] = str(tmp_path / name)
    cfg["training"].update(optimizer="adam", max_epochs=4, lr={"mlp_1x512": 1e-3}, pack=1)
    prepare(cfg)
    return cfg


VARIES = ("time", "rss", "images_per_s")  # measured, not computed: they differ between any two runs


def test_an_adam_run_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    full, killed = _adam_cfg(tmp_path, "full"), _adam_cfg(tmp_path, "killed")
    run = rc.Run(rc.dataset_id(full), rc.Corruption.parse("labels-0.5"), "mlp_1x512", "wd-dropout", 0)
    corrupt(full, run.corruption)
    corrupt(killed, run.corruption)
    a = tr.train(full, run, log=lambda *_: None)
    train_until_killed(killed, run, 2, monkeypatch)
    ck = torch.load(rc.run_dir(killed, run) / "checkpoint.pt", weights_only=False)
    assert set(ck["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # Adam's state was saved
    assert not (rc.run_dir(killed, run) / "summary.json").exists()
    lines = []
    b = tr.train(killed, run, log=lines.append)
    assert any("resuming after epoch 2" in line for line in lines)
    for table in ("epochs.csv", "steps.csv"):
        x, y = pd.read_csv(a / table), pd.read_csv(b / table)
        cols = [c for c in x.columns if not any(w in c for w in VARIES)]
        pd.testing.assert_frame_equal(x[cols], y[cols], check_exact=True)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["optimizer"] == "adam" and sa["adam"]["betas"] == [0.9, 0.999] and sa["epochs"] == 4
    for key in sa:
        if not any(w in key for w in VARIES):
            assert sa[key] == sb[key], key
    (_, xa), (_, xb) = load_npz(a / "examples.npz"), load_npz(b / "examples.npz")
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def test_a_streamed_adam_run_resumed_inside_an_epoch_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    from rethinking.engine import streamed as ts

    from test_imagenet import make_jpeg_tree, params, prepared, stream_killed_and_resumed

    tree = make_jpeg_tree(tmp_path / "tree")

    def run_of(results):
        p = params(tmp_path, tree, results, batch_size=4, max_epochs=2, checkpoint_every=2, image_size=32)
        p.write_text(p.read_text().replace("inception_v3", "alexnet"))
        raw = yaml.safe_load(p.read_text())
        raw["training"].update(optimizer="adam", lr={"alexnet": 1.0e-3}, adam={"betas": [0.8, 0.99]})
        p.write_text(yaml.safe_dump(raw))
        cfg = prepared(p, "random-labels")
        return cfg, rc.find_run(cfg, "imagenet/random-labels/alexnet/none/seed0")

    cfg, run = run_of("full")
    full = ts.train(cfg, run, log=lambda *_: None)

    def adam_state(opt):  # the checkpoint inside epoch 2 holds Adam's state at step 8
        assert set(opt["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and opt["state"][0]["step"] == 8

    resumed, lines = stream_killed_and_resumed(*run_of("killed"), 8, monkeypatch, check=adam_state)
    assert any("resuming after epoch 1, batch 2 (step 8)" in line for line in lines)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, resumed))
    assert a["optimizer"] == "adam" and a["adam"] == {"betas": [0.8, 0.99], "eps": 1e-8}
    for key in a:
        if not any(w in key for w in VARIES):
            assert a[key] == b[key], key
    for table in ("epochs.csv", "steps.csv"):
        x, y = pd.read_csv(full / table), pd.read_csv(resumed / table)
        cols = [c for c in x.columns if not any(w in c for w in VARIES)]
        pd.testing.assert_frame_equal(x[cols], y[cols], check_exact=True)
    (_, xa), (_, xb) = load_npz(full / "examples.npz"), load_npz(resumed / "examples.npz")
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def test_runs_csv_has_flat_optimizer_columns_where_a_run_uses_adam(tmp_path):
    from rethinking.analysis.aggregate import load_summaries

    raw = _raw()
    raw["results_dir"] = str(tmp_path / "results")
    raw["grid"].append({**raw["grid"][0], "name": "a", "variant": "adam", "training": {"optimizer": "adam"}})
    cfg = rc.validate(raw)
    for run in rc.expand_runs(cfg):
        out = rc.run_dir(cfg, run)
        out.mkdir(parents=True)
        summary = {**run_settings(cfg, run), "status": "fitted", "train_acc": 100.0, "test_acc": 50.0}
        (out / "summary.json").write_text(json.dumps({**summary, "train_loss": 0.1, "test_loss": 2.0}))
    frame = load_summaries(cfg).set_index("variant")
    assert list(frame.loc["adam", "optimizer"]) == ["adam"] * 2 and list(frame.loc["", "optimizer"]) == ["sgd"] * 2
    assert list(frame.loc["adam", "adam_beta2"]) == [0.999] * 2 and "adam" not in frame


def test_an_adam_run_is_not_comparable_with_the_paper():
    from rethinking.analysis.paper import setup_differences

    run = {
        "model": "alexnet",
        "variant": "",
        "n_train": 50000,
        "n_test": 10000,
        "input_shape": [3, 28, 28],
        "lr": 0.01,
        "momentum": 0.9,
        "lr_decay": 0.95,
        "lr_decay_images": None,
    }
    assert setup_differences(run, "table1") == []
    assert setup_differences({**run, "optimizer": "sgd"}, "table1") == []
    assert setup_differences({**run, "optimizer": "adam"}, "table1") == [
        "optimizer adam, the paper's SGD with momentum"
    ]


def _conv(channels_last: bool, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return m.to(memory_format=torch.channels_last) if channels_last else m


def _conv_steps(model, opt, seeds, channels_last):
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("saved, resumed", [(False, True), (True, False)])
def test_adam_resumes_into_the_other_memory_layout(saved, resumed):
    """As SGD's (tests/test_cuda_paths.py): a contiguous checkpoint (CPU) resumed as a channels_last run (CUDA's
    conv models) and the other way round: each moment is laid out like its parameter, the steps go on as the
    uninterrupted run's."""
    model = _conv(saved)
    opt = Adam(model.parameters(), **HYPER)
    _conv_steps(model, opt, [0, 1], saved)
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _conv_steps(model, opt, [2, 3], saved)

    again = _conv(resumed, seed=5)
    again.load_state_dict(model_state)
    opt2 = Adam(again.parameters(), lr=1.0)
    opt2.load_state_dict(opt_state)
    for p in again.parameters():
        assert opt2.state[p]["exp_avg"].stride() == p.stride() == opt2.state[p]["exp_avg_sq"].stride()
    _conv_steps(again, opt2, [2, 3], resumed)
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_an_adam_step_and_resume_do_not_import_torch_dynamo():
    """As SGD's (tests/test_engine.py): torch.optim's Optimizer would import torch._dynamo in every process."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from rethinking.engine.optim import make_optimizer\n"
        "from rethinking.models import build_model\n"
        "m = build_model('mlp_1x16', (1, 4, 4), 3)\n"
        "s = {'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4, 'optimizer': 'adam',\n"
        "     'adam': {'betas': [0.9, 0.999], 'eps': 1e-8}}\n"
        "opt = make_optimizer(m.parameters(), s)\n"
        "m(torch.zeros(2, 1, 4, 4)).sum().backward(); opt.step()\n"
        "make_optimizer(m.parameters(), s).load_state_dict(opt.state_dict())\n"
        "assert type(opt).__name__ == 'Adam' and opt.state\n"
        "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
