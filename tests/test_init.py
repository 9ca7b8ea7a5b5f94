"""Initializers: distributions, per-layer seeding, density scaling, score init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.config import InitConfig, ModelConfig
from ticketlab.init.weights import init_scores, init_weights, weight_std
from ticketlab.models import build_model
from ticketlab.sparsity.masks import prunable_layers


def model():
    return build_model(ModelConfig(name="mlp", widths=[200, 200, 200]), (1, 10, 10), 10)


def test_signed_constant_takes_plus_minus_kaiming_std():
    m = model()
    init_weights(m, InitConfig(name="signed_constant"), seed=0)
    for _, layer in prunable_layers(m):
        std = math.sqrt(2.0 / layer.in_features)
        values = torch.unique(layer.weight).tolist()
        assert values == [pytest.approx(-std), pytest.approx(std)]
        assert abs(float((layer.weight > 0).float().mean()) - 0.5) < 0.05


@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_std(name):
    m = model()
    init_weights(m, InitConfig(name=name), seed=0)
    layer = prunable_layers(m)[1][1]  # 200x200
    assert float(layer.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / 200), rel=0.03)
    if name == "kaiming_uniform":
        assert float(layer.weight.detach().abs().max()) <= math.sqrt(6.0 / 200)


def test_torch_default_is_pytorchs_own_layer_init(cfg_factory):
    """``init=torch_default`` (conf/init/torch_default.yaml): weights and biases U(+-1/sqrt(fan_in)), the distribution
    ``nn.Linear.reset_parameters`` draws (Kaiming-uniform with a = sqrt(5)); compared with PyTorch's own draw."""
    from ticketlab.runner.validate import resolve

    rc = resolve(cfg_factory("init=torch_default", "model.bias=true"))
    assert (rc.init.nonlinearity, rc.init.mode, rc.init.bias_init) == ("linear", "fan_in", "default")
    m = build_model(ModelConfig(name="mlp", widths=[200, 200, 200], bias=True), (1, 10, 10), 10)
    init_weights(m, rc.init, seed=0)
    torch.manual_seed(0)
    reference = nn.Linear(200, 200)  # PyTorch's default draw, for its statistics
    for _, layer in prunable_layers(m):
        bound = 1.0 / math.sqrt(layer.in_features)
        assert float(layer.weight.detach().abs().max()) <= bound
        assert float(layer.bias.detach().abs().max()) <= bound and bool((layer.bias != 0).any())
    layer = prunable_layers(m)[1][1]  # 200 x 200
    assert float(layer.weight.detach().std()) == pytest.approx(float(reference.weight.detach().std()), rel=0.03)
    assert float(layer.weight.detach().std()) == pytest.approx(1.0 / math.sqrt(3 * 200), rel=0.03)


def test_same_seed_same_weights_and_equal_shapes_differ():
    a, b = model(), model()
    init_weights(a, InitConfig(name="kaiming_normal"), seed=3)
    init_weights(b, InitConfig(name="kaiming_normal"), seed=3)
    la, lb = prunable_layers(a), prunable_layers(b)
    assert all(torch.equal(x.weight, y.weight) for (_, x), (_, y) in zip(la, lb, strict=True))
    assert not torch.equal(la[1][1].weight, la[2][1].weight)  # both 200x200
    c = model()
    init_weights(c, InitConfig(name="kaiming_normal", weight_seed=4), seed=3)
    assert not torch.equal(prunable_layers(c)[0][1].weight, la[0][1].weight)


def test_scale_fan_conventions():
    shape = (10, 50)
    base = weight_std(shape, InitConfig(name="signed_constant"))
    paper = weight_std(shape, InitConfig(name="signed_constant", scale_fan=True), density=0.2)
    code = weight_std(shape, InitConfig(name="signed_constant", scale_fan=True, scale_fan_convention="reference_code"),
                      density=0.2)
    assert paper == pytest.approx(base / math.sqrt(0.2))
    assert code == pytest.approx(base / math.sqrt(0.8))
    assert weight_std(shape, InitConfig(name="signed_constant", scale_fan=True), 0.5) == pytest.approx(
        weight_std(shape, InitConfig(name="signed_constant", scale_fan=True, scale_fan_convention="reference_code"),
                   0.5))


def test_default_score_init_is_pytorch_default_bound():
    s = torch.empty(300, 400)
    init_scores([(0, "weight", s, 400)], "default", seed=0)
    assert float(s.abs().max()) <= 1 / math.sqrt(400)
    assert float(s.abs().max()) > 0.95 / math.sqrt(400)
    t = torch.empty(300, 400)
    init_scores([(0, "weight", t, 400)], "default", seed=1)
    assert not torch.equal(s, t)


def test_zero_bias_init():
    layer = nn.Sequential(nn.Linear(4, 4, bias=True))
    init_weights(layer, InitConfig(name="kaiming_normal"), seed=0)
    assert torch.all(layer[0].bias == 0)
