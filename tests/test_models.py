import textwrap

import pytest
import torch
from torch import nn

from rethinking import plan as rc
from rethinking.errors import ModelError
from rethinking.models import MODELS, build_model, check_model, count_parameters, model_file, parse, run_name, traits
from rethinking.plan.packs import check_models, plan_packs
from rethinking.plan.settings import run_settings

EXPECTED_PARAMS = {
    "mlp_1x512": 1_209_866,
    "mlp_3x512": 1_735_178,
    "alexnet": 1_387_786,
    "inception": 1_649_402,
    "inception_nobn": 1_649_402,
}


def test_models_tuple():
    assert set(MODELS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", MODELS)
def test_param_counts(name):
    model = build_model(name, (3, 28, 28), num_classes=10)
    assert count_parameters(model) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 7, 7), (3, 32, 32), (3, 28, 28)])
@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=10)
    model.train()  # BN needs batch > 1 per channel in train mode; batch 2 ok
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_backward():
    model = build_model("inception", (3, 8, 8))
    out = model(torch.randn(2, 3, 8, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_name():
    with pytest.raises(ValueError) as err:
        build_model("resnet", (3, 28, 28))
    msg = str(err.value)
    assert "resnet" in msg
    for name in MODELS:
        assert name in msg


@pytest.mark.parametrize("name", MODELS)
def test_dropout(name):
    plain = build_model(name, (3, 28, 28))
    dropped = build_model(name, (3, 28, 28), dropout=0.5)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    assert any(isinstance(m, nn.Dropout) for m in dropped.modules())
    assert count_parameters(dropped) == count_parameters(plain)
    dropped.eval()
    with torch.no_grad():
        assert dropped(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_batchnorm_presence():
    bn = build_model("inception", (3, 28, 28))
    nobn = build_model("inception_nobn", (3, 28, 28))
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in bn.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in nobn.modules())


def test_traits_are_read_from_the_built_module():
    shape = (3, 28, 28)
    t = {name: traits(build_model(name, shape)) for name in MODELS}
    assert all(t[n]["conv"] for n in ("alexnet", "inception", "inception_nobn"))
    assert not t["mlp_1x512"]["conv"] and not t["mlp_3x512"]["conv"]
    assert t["inception"]["batchnorm"] and not t["inception_nobn"]["batchnorm"]
    assert not any(v["dropout"] for v in t.values())
    assert all(traits(build_model(n, shape, dropout=0.3))["dropout"] for n in MODELS)


def test_num_classes():
    for name in MODELS:
        model = build_model(name, (3, 28, 28), num_classes=100)
        model.eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 100)


# ---------------------------------------------------------------------------- the registry (issue #16)


def test_mlp_depth_x_width_is_any_depth_and_width():
    # 3*32*32 -> 64 -> 64 -> 10
    assert count_parameters(build_model("mlp_2x64", (3, 32, 32))) == 3072 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert count_parameters(build_model("mlp_1x4096", (1, 8, 8))) == 64 * 4096 + 4096 + 4096 * 10 + 10
    for name in ("mlp_1x512", "mlp_3x512"):  # the paper's two are two of these
        assert parse(name).kind == "builtin" and run_name(name) == name
    for bad in ("mlp_0x64", "mlp_2x0", "mlp_2x", "mlp_x64"):
        with pytest.raises(ModelError, match="mlp_<depth>x<width>"):
            parse(bad)


def test_resnet18_is_the_cifar_style_resnet18():
    model = build_model("resnet18", (3, 32, 32), 10)
    assert count_parameters(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    t = traits(model)
    assert t["batchnorm"] and t["conv"] and not t["dropout"]
    assert check_model("resnet18", (1, 7, 7), 3)["parameters"] == 11_173_962 - 2 * 64 * 9 - 513 * 7


def test_resnet18_width_family_is_nakkirans():
    """resnet18_k<k>: k, 2k, 4k, 8k channels; k = 64 is resnet18 (the published 11,173,962), fewer below."""
    counts = [count_parameters(build_model(f"resnet18_k{k}", (3, 32, 32), 10)) for k in (1, 2, 4, 8, 16, 32, 64)]
    assert counts[-1] == 11_173_962 == count_parameters(build_model("resnet18", (3, 32, 32), 10))
    assert all(a < b for a, b in zip(counts, counts[1:])) and counts[0] == 2_991
    k64, builtin = build_model("resnet18_k64", (3, 32, 32), 10), build_model("resnet18", (3, 32, 32), 10)
    assert [(n, p.shape) for n, p in k64.named_parameters()] == [(n, p.shape) for n, p in builtin.named_parameters()]
    assert parse("resnet18_k16").kind == "resnet" and run_name("resnet18_k16") == "resnet18_k16"
    for bad in ("resnet18_k0", "resnet18_k", "resnet18_k01"):
        with pytest.raises(ModelError, match="is not a model"):
            parse(bad)


def test_torchvision_entries_are_built_untrained_with_the_grids_dropout():
    assert run_name("torchvision.mobilenet_v3_small") == "tv-mobilenet_v3_small"
    plain = check_model("torchvision.mobilenet_v3_small", (3, 32, 32), 7)
    import torchvision

    ref = torchvision.models.mobilenet_v3_small(weights=None, num_classes=7)
    assert plain["parameters"] == count_parameters(ref)
    assert not plain["dropout"]  # torchvision's own 0.2 is the dropout regularizer's: off without it
    assert check_model("torchvision.mobilenet_v3_small", (3, 32, 32), 7, dropout=0.3)["dropout"]


@pytest.mark.parametrize(
    "entry, needle",
    [
        ("torchvision.fasterrcnn_resnet50_fpn", "is not a classification model of torchvision.models"),
        ("torchvision.not_a_model", "is not a classification model"),
    ],
)
def test_torchvision_names_that_are_not_classifiers(entry, needle):
    with pytest.raises(ModelError, match=needle):
        check_model(entry, (3, 32, 32), 10)


def test_an_input_smaller_than_a_torchvision_model_takes_names_the_smallest():
    with pytest.raises(ModelError, match=r"3x8x8 is smaller than the model takes: it needs at least (\d+)x\1") as e:
        check_model("torchvision.squeezenet1_1", (3, 8, 8), 10)
    side = int(str(e.value).split("at least ")[1].split("x")[0])
    check_model("torchvision.squeezenet1_1", (3, side, side), 10)  # that size works, one less does not
    with pytest.raises(ModelError):
        check_model("torchvision.squeezenet1_1", (3, side - 1, side - 1), 10)
    with pytest.raises(ModelError, match="takes 3-channel images but the data has 1"):
        check_model("torchvision.squeezenet1_1", (1, 64, 64), 10)


FACTORY = textwrap.dedent("""
    from torch import nn

    def good(in_shape, num_classes, dropout=0.0):
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, num_classes))

    def no_dropout(in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    def own_dropout(in_shape, num_classes):
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(c * h * w, num_classes))

    def wrong_shape(in_shape, num_classes):
        return nn.Flatten()

    def raises(in_shape, num_classes):
        raise RuntimeError("no GPU here")

    def not_a_module(in_shape, num_classes):
        return 42

    NOT_CALLABLE = 3
""")


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "nets").mkdir(parents=True)
    (tmp_path / "cfg" / "nets" / "mine.py").write_text(FACTORY)
    (tmp_path / "pkg_mine.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_factory_is_called_with_in_shape_num_classes_and_dropout(factory_dir):
    base = factory_dir / "cfg"
    info = check_model("nets/mine.py:good", (1, 7, 7), 10, base=base)  # relative to the params folder
    assert info["parameters"] == 49 * 10 + 10 and not info["dropout"]
    assert check_model("nets/mine.py:good", (1, 7, 7), 10, dropout=0.5, base=base)["dropout"]
    assert check_model("cfg/nets/mine.py:good", (1, 7, 7), 10)["parameters"] == 500  # or the working directory
    assert check_model("pkg_mine:good", (3, 4, 4), 5)["parameters"] == 48 * 5 + 5  # package.module:function
    assert (
        model_file("nets/mine.py:good", base)
        == model_file("cfg/nets/mine.py:good")
        == type(model_file("cfg/nets/mine.py:good"))("cfg/nets/mine.py")
    )
    name = run_name("nets/mine.py:good")
    assert name.startswith("good-") and len(name) == len("good-") + 8 and name != run_name("cfg/nets/mine.py:good")


@pytest.mark.parametrize(
    "entry, dropout, needle",
    [
        ("nets/absent.py:good", 0.0, "the file nets/absent.py does not exist"),
        ("nets/mine.py:missing", 0.0, "has no function 'missing'"),
        ("nets/mine.py:NOT_CALLABLE", 0.0, "has no function 'NOT_CALLABLE'"),
        (
            "nets/mine.py:raises",
            0.0,
            r"raises\(in_shape=\(1, 7, 7\), num_classes=10\) raised RuntimeError: no GPU here",
        ),
        ("nets/mine.py:wrong_shape", 0.0, r"expected N x K logits \(2 x 10 for input 2 x 1 x 7 x 7\), got 2 x 49"),
        ("nets/mine.py:not_a_module", 0.0, "returned int, not a torch.nn.Module"),
        ("nets/mine.py:no_dropout", 0.5, "takes no dropout= keyword"),
        ("no_such_module_here:good", 0.0, "no module 'no_such_module_here' importable"),
    ],
)
def test_bad_factories_fail_in_one_line(factory_dir, entry, dropout, needle):
    with pytest.raises(ModelError, match=needle) as e:
        check_model(entry, (1, 7, 7), 10, dropout=dropout, base=factory_dir / "cfg")
    assert len(str(e.value).splitlines()) == 1


def _grid(models, **training):
    raw = {
        "dataset": {"source": "digits"},
        "preprocess": {"crop": 7},
        "training": training,
        "grid": [{"name": "g", "models": models, "corruptions": ["true_labels", "random_labels"]}],
    }
    return rc.validate(raw, "p.yaml", params_dir="cfg")


def test_lr_per_entry_and_default(factory_dir):
    cfg = _grid(
        ["mlp_2x64", "alexnet", "nets/mine.py:good", "resnet18"], lr={"default": 0.003, "nets/mine.py:good": 0.2}
    )
    lr = {r.model: run_settings(cfg, r)["lr"] for r in rc.expand_runs(cfg)}
    assert lr == {"mlp_2x64": 0.003, "alexnet": 0.01, "nets/mine.py:good": 0.2, "resnet18": 0.1}
    raw = {
        "grid": [
            {
                "name": "g",
                "models": ["mlp_2x64"],
                "corruptions": ["true_labels"],
                "variant": "fast",
                "training": {"lr": {"mlp_2x64": 0.5}},
            }
        ]
    }
    (run,) = rc.expand_runs(rc.validate(raw))
    assert run_settings(rc.validate(raw), run)["lr"] == 0.5 and run.id == "digits/true-labels/mlp_2x64/none_fast/seed0"
    with pytest.raises(rc.ConfigError, match=r"training\.lr\.mlp_1x521x: not a model entry nor 'default'"):
        _grid(["mlp_2x64"], lr={"mlp_1x521x": 0.1})


def test_bad_entries_are_config_errors_naming_the_key(factory_dir):
    with pytest.raises(
        rc.ConfigError,
        match=r"p\.yaml: grid\[0\]\.models\[1\]: 'resnet' is not a model .*"
        r"mlp_<depth>x<width>, resnet18, .*torchvision\.<name>, path/to/file\.py",
    ):
        _grid(["mlp_2x64", "resnet"])
    with pytest.raises(rc.ConfigError, match=r"grid\[0\]\.models\[0\]: 'nets/nope\.py:good': the file nets/nope\.py"):
        _grid(["nets/nope.py:good"])
    cfg = _grid(["nets/mine.py:wrong_shape"])
    with pytest.raises(rc.ConfigError, match=r"p\.yaml: model 'nets/mine\.py:wrong_shape': expected N x K logits"):
        check_models(cfg, rc.expand_runs(cfg), "p.yaml")
    cfg = _grid(["torchvision.resnet18"])  # 1 x 7 x 7 digits: refused before any work, with the reason
    with pytest.raises(rc.ConfigError, match="takes 3-channel images but the data has 1"):
        check_models(cfg, rc.expand_runs(cfg), "p.yaml")


def test_a_user_models_settings_hold_its_files_hash(factory_dir):
    cfg = _grid(["nets/mine.py:good", "mlp_2x64"])
    runs = rc.expand_runs(cfg)
    s = {r.model: run_settings(cfg, r) for r in runs}
    assert "model_source" not in s["mlp_2x64"]
    assert s["nets/mine.py:good"]["model_source"]["file"] == "cfg/nets/mine.py"
    before = s["nets/mine.py:good"]["model_source"]["sha256"]
    (factory_dir / "cfg/nets/mine.py").write_text(FACTORY + "\n# edited\n")
    assert run_settings(cfg, runs[0])["model_source"]["sha256"] != before


def test_packing_is_decided_from_the_built_module(factory_dir):
    cfg = _grid(["nets/mine.py:good", "nets/mine.py:own_dropout", "mlp_2x64"], pack=4)
    packs = {tuple(r.model for r in p) for p in plan_packs(cfg, rc.expand_runs(cfg))}
    assert packs == {
        ("nets/mine.py:good",) * 2,
        ("mlp_2x64",) * 2,
        ("nets/mine.py:own_dropout",),
    }  # a module with its own dropout layer trains alone


def test_models_command_prints_counts_of_any_entry(capsys):
    from rethinking.cli import main

    assert main(["models", "--shape", "3x32x32", "resnet18", "mlp_2x64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "11,173,962" in out[1] and "201,482" in out[2]
    assert main(["models", "resnet"]) == 2
    bad = capsys.readouterr()
    assert bad.out == "" and "is not a model" in bad.err and len(bad.err.splitlines()) == 1


# --- AlexNet's fast layers (issue #18) against the plain-torch network they replace


def _plain_alexnet(model):
    """`model` (build_model's alexnet) rebuilt from torch's own layers: nn.Conv2d, an -inf padded
    F.max_pool2d (TF SAME) and nn.LocalResponseNorm, with the same parameters."""
    import math

    import torch.nn.functional as F

    from rethinking.models.alexnet import LocalResponseNorm, MaxPool2dSame

    class PaddedPool(nn.Module):
        def forward(self, x):
            pads = []
            for size in (x.shape[-1], x.shape[-2]):
                total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
                pads += [total // 2, total - total // 2]
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)

    layers = []
    for m in model:
        if isinstance(m, nn.Conv2d):
            assert (m.kernel_size, m.stride, m.padding) == ((5, 5), (1, 1), (2, 2))
            plain = nn.Conv2d(m.in_channels, m.out_channels, 5, 1, 2)
            plain.load_state_dict(m.state_dict())
            m = plain
        elif isinstance(m, MaxPool2dSame):
            assert (m.kernel_size, m.stride) == (3, 2)
            m = PaddedPool()
        elif isinstance(m, LocalResponseNorm):
            assert (m.size, m.alpha, m.beta, m.k) == (9, 0.001, 0.75, 1.0)
            m = nn.LocalResponseNorm(9, 0.001, 0.75, 1.0)
        layers.append(m)
    return nn.Sequential(*layers)


def _rel(a, b):
    return float(
        (a.detach().double() - b.detach().double()).abs().max() / b.detach().double().abs().max().clamp(min=1e-12)
    )


@pytest.fixture
def one_thread():
    """Tiny ops: on a shared 2-core machine a second thread only adds waits at every op."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "shape, batch",
    [
        ((1, 7, 7), 32),
        ((1, 8, 8), 5),
        ((3, 28, 28), 6),
        ((3, 32, 32), 2),
        ((2, 9, 5), 3),
        ((1, 1, 1), 2),
        ((3, 3, 6), 1),
    ],
)
def test_alexnet_equals_the_plain_torch_network(shape, batch, one_thread):
    """Forward and every parameter's gradient equal the plain network's to float rounding, in train mode
    with and without dropout (same masks from the same seed) and in eval mode; state dicts are alike."""
    for dropout in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_model("alexnet", shape, 10, dropout)
        plain = _plain_alexnet(model)
        assert list(model.state_dict()) == list(plain.state_dict())
        assert not list(model.buffers())
        x = torch.randn(batch, *shape) * 2
        for train in (True, False):
            model.train(train), plain.train(train)
            grads = []
            for m in (model, plain):
                torch.manual_seed(1)
                out = m(x)
                (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
                grads.append([out] + [p.grad.clone() for p in m.parameters()])
                m.zero_grad(set_to_none=True)
            for a, b in zip(*grads):
                assert _rel(a, b) < 1e-5
            with torch.no_grad():
                assert _rel(model(x), plain(x)) < 1e-5 or train  # (train: dropout draws differ without a seed)


def test_alexnet_layers_equal_torchs_own(one_thread):
    """LocalResponseNorm: torch's nn.LocalResponseNorm (alpha / size, window size // 2 before and
    (size - 1) // 2 after, zero-padded) for odd, even and larger-than-C sizes, NCHW and channels_last;
    MaxPool2dSame: an -inf padded max-pool bit for bit (values and gradients) at every small size."""
    import torch.nn.functional as F

    from rethinking.models.alexnet import LocalResponseNorm, MaxPool2dSame, _same_pool_pads

    torch.manual_seed(0)
    for size, c, beta in [(9, 64, 0.75), (4, 8, 0.75), (5, 3, 1.3), (2, 6, 0.5), (1, 4, 0.75)]:
        for channels_last in (False, True):
            x = torch.randn(3, c, 4, 5) * 3
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_()
            g = torch.randn(3, c, 4, 5)
            outs = [
                m(x) for m in (LocalResponseNorm(size, 0.01, beta, 2.0), nn.LocalResponseNorm(size, 0.01, beta, 2.0))
            ]
            grads = [torch.autograd.grad(o, x, g)[0] for o in outs]
            assert _rel(*outs) < 1e-6 and _rel(*grads) < 1e-6, (size, c, beta, channels_last)
    for h in range(1, 10):
        for w in (1, 2, 5, 8):
            x = torch.randn(2, 3, h, w, requires_grad=True)
            (top, bottom), (left, right) = _same_pool_pads(h), _same_pool_pads(w)
            ref = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, 2)
            out = MaxPool2dSame(3, 2)(x)
            g = torch.randn_like(ref)
            assert torch.equal(out, ref) and torch.equal(*(torch.autograd.grad(o, x, g)[0] for o in (out, ref)))


def test_alexnet_under_vmap_channels_last_and_autocast(one_thread):
    """The layers work where the engines run them: torch.func.vmap over functional_call (packs), a
    channels_last model, CPU bf16 autocast, and no_grad evaluation."""
    import copy

    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.manual_seed(0)
    models = [build_model("alexnet", (1, 7, 7), 10) for _ in range(2)]
    params, _ = stack_module_state(models)
    x, y = torch.randn(2, 6, 1, 7, 7), torch.randint(0, 10, (2, 6))
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(base, p, (xb,)), yb)

    stacked = vmap(grad(loss))(params, x, y)
    for k, m in enumerate(models):
        plain = _plain_alexnet(m)
        nn.functional.cross_entropy(plain(x[k]), y[k]).backward()
        for name, p in plain.named_parameters():
            assert _rel(stacked[name][k], p.grad) < 1e-5, name
    model, plain = models[0], _plain_alexnet(models[0])
    xb = torch.randn(4, 1, 7, 7)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert _rel(cl(xb.contiguous(memory_format=torch.channels_last)), plain(xb)) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xb)
    out.float().sum().backward()
    assert _rel(out.float(), plain(xb)) < 0.05 and all(torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert _rel(model.eval()(xb), plain.eval()(xb)) < 1e-5
