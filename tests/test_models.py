import pytest
import torch
from torch import nn

from rethinking.models import MODELS, build_model, count_parameters, is_conv

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


def test_is_conv():
    assert is_conv("alexnet") and is_conv("inception") and is_conv("inception_nobn")
    assert not is_conv("mlp_1x512") and not is_conv("mlp_3x512")


def test_num_classes():
    for name in MODELS:
        model = build_model(name, (3, 28, 28), num_classes=100)
        model.eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 100)


def test_the_params_schema_allows_exactly_these_models():
    import yaml
    from rethinking.config import SCHEMA_PATH
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    from rethinking.inception_v3 import STREAM_MODELS  # trained on streamed trees only (rethinking.train_stream)
    assert schema["properties"]["grid"]["items"]["properties"]["models"]["items"]["enum"] == \
        list(MODELS) + list(STREAM_MODELS)
