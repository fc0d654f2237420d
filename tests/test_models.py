import pytest
import torch
from torch import nn

from rethinking.models import MODELS, build_model, count_parameters, traits

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

import textwrap  # noqa: E402

from rethinking import config as rc  # noqa: E402
from rethinking.models import ModelError, check_model, model_file, parse, run_name  # noqa: E402
from rethinking.plan import check_models, plan_packs, run_settings  # noqa: E402


def test_mlp_depth_x_width_is_any_depth_and_width():
    # 3*32*32 -> 64 -> 64 -> 10
    assert count_parameters(build_model("mlp_2x64", (3, 32, 32))) == 3072 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    assert count_parameters(build_model("mlp_1x4096", (1, 8, 8))) == 64 * 4096 + 4096 + 4096 * 10 + 10
    for name in ("mlp_1x512", "mlp_3x512"):   # the paper's two are two of these
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


def test_torchvision_entries_are_built_untrained_with_the_grids_dropout():
    assert run_name("torchvision.mobilenet_v3_small") == "tv-mobilenet_v3_small"
    plain = check_model("torchvision.mobilenet_v3_small", (3, 32, 32), 7)
    import torchvision
    ref = torchvision.models.mobilenet_v3_small(weights=None, num_classes=7)
    assert plain["parameters"] == count_parameters(ref)
    assert not plain["dropout"]   # torchvision's own 0.2 is the dropout regularizer's: off without it
    assert check_model("torchvision.mobilenet_v3_small", (3, 32, 32), 7, dropout=0.3)["dropout"]


@pytest.mark.parametrize("entry, needle", [
    ("torchvision.fasterrcnn_resnet50_fpn", "is not a classification model of torchvision.models"),
    ("torchvision.not_a_model", "is not a classification model"),
])
def test_torchvision_names_that_are_not_classifiers(entry, needle):
    with pytest.raises(ModelError, match=needle):
        check_model(entry, (3, 32, 32), 10)


def test_an_input_smaller_than_a_torchvision_model_takes_names_the_smallest():
    with pytest.raises(ModelError, match=r"3x8x8 is smaller than the model takes: it needs at least (\d+)x\1") as e:
        check_model("torchvision.squeezenet1_1", (3, 8, 8), 10)
    side = int(str(e.value).split("at least ")[1].split("x")[0])
    check_model("torchvision.squeezenet1_1", (3, side, side), 10)   # that size works, one less does not
    with pytest.raises(ModelError):
        check_model("torchvision.squeezenet1_1", (3, side - 1, side - 1), 10)
    with pytest.raises(ModelError, match="takes 3-channel images but the data has 1"):
        check_model("torchvision.squeezenet1_1", (1, 64, 64), 10)


FACTORY = textwrap.dedent('''
    from torch import nn

    def good(in_shape, num_classes, dropout=0.0):
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * h * w, num_classes))

    def no_dropout(in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    def own_dropout(in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes))

    def wrong_shape(in_shape, num_classes):
        return nn.Flatten()

    def raises(in_shape, num_classes):
        raise RuntimeError("no GPU here")

    def not_a_module(in_shape, num_classes):
        return 42

    NOT_CALLABLE = 3
''')


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
    info = check_model("nets/mine.py:good", (1, 7, 7), 10, base=base)   # relative to the params folder
    assert info["parameters"] == 49 * 10 + 10 and not info["dropout"]
    assert check_model("nets/mine.py:good", (1, 7, 7), 10, dropout=0.5, base=base)["dropout"]
    assert check_model("cfg/nets/mine.py:good", (1, 7, 7), 10)["parameters"] == 500   # or the working directory
    assert check_model("pkg_mine:good", (3, 4, 4), 5)["parameters"] == 48 * 5 + 5      # package.module:function
    assert model_file("nets/mine.py:good", base) == model_file("cfg/nets/mine.py:good") == \
        type(model_file("cfg/nets/mine.py:good"))("cfg/nets/mine.py")
    name = run_name("nets/mine.py:good")
    assert name.startswith("good-") and len(name) == len("good-") + 8 and name != run_name("cfg/nets/mine.py:good")


@pytest.mark.parametrize("entry, dropout, needle", [
    ("nets/absent.py:good", 0.0, "the file nets/absent.py does not exist"),
    ("nets/mine.py:missing", 0.0, "has no function 'missing'"),
    ("nets/mine.py:NOT_CALLABLE", 0.0, "has no function 'NOT_CALLABLE'"),
    ("nets/mine.py:raises", 0.0, r"raises\(in_shape=\(1, 7, 7\), num_classes=10\) raised RuntimeError: no GPU here"),
    ("nets/mine.py:wrong_shape", 0.0, r"expected N x K logits \(2 x 10 for input 2 x 1 x 7 x 7\), got 2 x 49"),
    ("nets/mine.py:not_a_module", 0.0, "returned int, not a torch.nn.Module"),
    ("nets/mine.py:no_dropout", 0.5, "takes no dropout= keyword"),
    ("no_such_module_here:good", 0.0, "no module 'no_such_module_here' importable"),
])
def test_bad_factories_fail_in_one_line(factory_dir, entry, dropout, needle):
    with pytest.raises(ModelError, match=needle) as e:
        check_model(entry, (1, 7, 7), 10, dropout=dropout, base=factory_dir / "cfg")
    assert len(str(e.value).splitlines()) == 1


def _grid(models, **training):
    raw = {"dataset": {"source": "digits"}, "preprocess": {"crop": 7}, "training": training,
           "grid": [{"name": "g", "models": models, "corruptions": ["true_labels", "random_labels"]}]}
    return rc.validate(raw, "p.yaml", params_dir="cfg")


def test_lr_per_entry_and_default(factory_dir):
    cfg = _grid(["mlp_2x64", "alexnet", "nets/mine.py:good", "resnet18"],
                lr={"default": 0.003, "nets/mine.py:good": 0.2})
    lr = {r.model: run_settings(cfg, r)["lr"] for r in rc.expand_runs(cfg)}
    assert lr == {"mlp_2x64": 0.003, "alexnet": 0.01, "nets/mine.py:good": 0.2, "resnet18": 0.1}
    raw = {"grid": [{"name": "g", "models": ["mlp_2x64"], "corruptions": ["true_labels"], "variant": "fast",
                     "training": {"lr": {"mlp_2x64": 0.5}}}]}
    (run,) = rc.expand_runs(rc.validate(raw))
    assert run_settings(rc.validate(raw), run)["lr"] == 0.5 and run.id == "digits/true-labels/mlp_2x64/none_fast/seed0"
    with pytest.raises(rc.ConfigError, match=r"training\.lr\.mlp_1x521x: not a model entry nor 'default'"):
        _grid(["mlp_2x64"], lr={"mlp_1x521x": 0.1})


def test_bad_entries_are_config_errors_naming_the_key(factory_dir):
    with pytest.raises(rc.ConfigError, match=r"p\.yaml: grid\[0\]\.models\[1\]: 'resnet' is not a model .*"
                                             r"mlp_<depth>x<width>, resnet18, .*torchvision\.<name>, path/to/file\.py"):
        _grid(["mlp_2x64", "resnet"])
    with pytest.raises(rc.ConfigError, match=r"grid\[0\]\.models\[0\]: 'nets/nope\.py:good': the file nets/nope\.py"):
        _grid(["nets/nope.py:good"])
    cfg = _grid(["nets/mine.py:wrong_shape"])
    with pytest.raises(rc.ConfigError, match=r"p\.yaml: model 'nets/mine\.py:wrong_shape': expected N x K logits"):
        check_models(cfg, rc.expand_runs(cfg), "p.yaml")
    cfg = _grid(["torchvision.resnet18"])   # 1 x 7 x 7 digits: refused before any work, with the reason
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
    assert packs == {("nets/mine.py:good",) * 2, ("mlp_2x64",) * 2,
                     ("nets/mine.py:own_dropout",)}   # a module with its own dropout layer trains alone


def test_models_command_prints_counts_of_any_entry(capsys):
    from rethinking.cli import main
    assert main(["models", "--shape", "3x32x32", "resnet18", "mlp_2x64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "11,173,962" in out[1] and "201,482" in out[2]
    assert main(["models", "resnet"]) == 2
    bad = capsys.readouterr()
    assert bad.out == "" and "is not a model" in bad.err and len(bad.err.splitlines()) == 1
