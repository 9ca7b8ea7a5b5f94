"""Model zoo: exact weight counts of the reference architectures, options, and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.errors import ConfigError
from ticketlab.models import MODELS, build_model
from ticketlab.sparsity.masks import prunable_layers


def n_weights(model: nn.Module) -> int:
    return sum(layer.weight.numel() for _, layer in prunable_layers(model))


@pytest.mark.parametrize("name,shape,expected", [
    # counted from the architectures (Frankle & Carbin 2019, Fig. 2: 266K, 4.3M, 2.4M, 2.3M), bias-free
    ("lenet300_100", (1, 28, 28), 266_200),
    ("conv2", (3, 32, 32), 4_300_992),
    ("conv4", (3, 32, 32), 2_425_024),
    ("conv6", (3, 32, 32), 2_261_184),
    ("conv8", (3, 32, 32), 5_275_840),
])
def test_reference_weight_counts(name, shape, expected):
    cfg = ModelConfig(name=name, widths=[300, 100])
    model = build_model(cfg, shape, 10)
    assert n_weights(model) == expected
    assert all(getattr(layer, "bias", None) is None for _, layer in prunable_layers(model))


@pytest.mark.parametrize("name", ["mlp", "conv2", "conv4", "conv6", "conv8", "vgg11", "vgg16", "vgg19", "resnet18",
                                  "resnet20", "resnet34", "resnet50"])
def test_every_model_builds_for_cifar_shapes(name):
    model = build_model(ModelConfig(name=name), (3, 32, 32), 100)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, 100)


@pytest.mark.parametrize("group", ["model", "dataset", "init", "pruner"])
def test_yaml_options_and_registry_agree_both_ways(group):
    """Every ``conf/<group>/*.yaml`` names a registered entry, and every registered entry has its YAML."""
    from ticketlab.data import DATASETS
    from ticketlab.init.weights import WEIGHT_INITS
    from ticketlab.pruners import PRUNERS

    from .conftest import CONF

    registry = {"model": MODELS, "dataset": DATASETS, "init": WEIGHT_INITS, "pruner": PRUNERS}[group]
    yaml_names = {p.stem for p in (CONF / group).glob("*.yaml")}
    assert sorted(yaml_names - set(registry.names())) == [], f"conf/{group}/ options without a registered {group}"
    assert sorted(set(registry.names()) - yaml_names) == [], f"registered {group}s without conf/{group}/<name>.yaml"


def test_width_multiplier_scales_hidden_widths_only():
    base = build_model(ModelConfig(name="conv4"), (3, 32, 32), 10)
    wide = build_model(ModelConfig(name="conv4", width_mult=2.0), (3, 32, 32), 10)
    assert prunable_layers(wide)[0][1].out_channels == 2 * prunable_layers(base)[0][1].out_channels
    assert prunable_layers(wide)[-1][1].out_features == 10
    half = build_model(ModelConfig(name="lenet300_100", widths=[300, 100], width_mult=0.5), (1, 28, 28), 10)
    assert [layer.out_features for _, layer in prunable_layers(half)] == [150, 50, 10]


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "resnet50"])
@pytest.mark.parametrize("affine", [False, True])
def test_bn_affine_option(name, affine):
    model = build_model(ModelConfig(name=name, batch_norm=True, bn_affine=affine), (3, 32, 32), 10)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.affine == affine for m in bns)
    assert all((m.weight is not None) == affine for m in bns)


def test_bias_option():
    model = build_model(ModelConfig(name="conv2", bias=True), (3, 32, 32), 10)
    assert all(layer.bias is not None for _, layer in prunable_layers(model))


def test_model_that_does_not_fit_the_input_is_rejected():
    with pytest.raises(ConfigError, match=r"model.name='conv8' does not fit digits \(input 1x8x8\).*16x16"):
        build_model(ModelConfig(name="conv8"), (1, 8, 8), 10, "digits")


def test_unknown_model_lists_options():
    with pytest.raises(ConfigError, match="choose one of: .*conv6.*lenet300_100"):
        build_model(ModelConfig(name="alexnet"), (3, 32, 32), 10)


def test_resnet_fixed_stem_width(cfg_factory):
    """IteRand's reference keeps a 64-channel stem at every width factor (``model.stem_width``); models that
    do not declare the trait refuse it when the config is validated."""
    from ticketlab.runner.validate import resolve

    model = build_model(ModelConfig(name="resnet18", width_mult=0.5, stem_width=64), (3, 32, 32), 10)
    assert model.conv1.out_channels == 64 and model.layers[0].conv1.in_channels == 64
    assert model.layers[0].conv1.out_channels == 32 and not isinstance(model.layers[0].shortcut, torch.nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model(ModelConfig(name="resnet18", width_mult=0.5), (3, 32, 32), 10).conv1.out_channels == 32
    assert MODELS.with_trait("stem_width") == ["resnet18", "resnet20", "resnet34"]
    with pytest.raises(ConfigError, match=r"model.stem_width=64 applies to resnet18, resnet20, resnet34, not "
                                          r"model.name='conv6'"):
        resolve(cfg_factory("model=conv6", "model.stem_width=64"))
    assert resolve(cfg_factory("model=resnet20", "dataset=cifar10", "model.stem_width=16")).model.stem_width == 16
