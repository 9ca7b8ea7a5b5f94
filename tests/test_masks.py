"""Mask mechanism: exact kept counts, top-k selection, straight-through gradients, fixed masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.errors import ConfigError
from ticketlab.models import build_model
from ticketlab.sparsity.masks import (
    FixedMask,
    attach_fixed_masks,
    attach_score_masks,
    bake,
    masked_tensors,
    prunable_layers,
    select_layers,
)
from ticketlab.sparsity.report import mask_dict, sparsity_report
from ticketlab.sparsity.selection import kth_largest, num_kept, topk_mask


def sort_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k by a stable descending sort (lowest index wins ties): the specification."""
    flat = x.reshape(-1)
    m = torch.zeros_like(flat, dtype=torch.bool)
    m[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return m.view_as(x)


@pytest.mark.parametrize("n,sparsity,expected", [
    (10, 0.5, 5), (11, 0.5, 6), (100, 0.29, 71), (100, 0.3, 70), (3, 0.9, 1), (266200, 0.9, 26620),
    (7, 0.0, 7), (1000, 0.999, 1),
    # 0.651 * n = 5989490.997 (n = 9200447): a relative slack of 1e-9 removed one weight too many here
    (9200447, 0.651, 9200447 - 5989490),
])
def test_num_kept_convention(n, sparsity, expected):
    # n - floor(p * n), robust to binary floating point (0.29 * 100 = 28.999999999999996).
    assert num_kept(n, sparsity) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_num_kept_rejects_bad_sparsity(bad):
    with pytest.raises(ConfigError, match="sparsity"):
        num_kept(10, bad)


@pytest.mark.parametrize("kind", ["normal", "abs", "ties", "clamped"])
@pytest.mark.parametrize("n", [5, 1000, 50_000])  # small: kthvalue path; large: radix path on CPU
def test_topk_mask_is_exact_and_matches_sort(kind, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g)
    if kind == "abs":
        x = x.abs()
    elif kind == "ties":
        x = torch.randint(-3, 4, (n,), generator=g).float()
    elif kind == "clamped":
        x = x.clamp(min=0)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        m = topk_mask(x, k, nonnegative=kind in ("abs", "clamped"))
        assert m.dtype == torch.bool and m.shape == x.shape
        assert int(m.sum()) == k
        assert torch.equal(m, sort_reference(x, k))


def test_kth_largest_radix_equals_kthvalue():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=g) * 1e-3  # many values share high bits: exercises one dense bin
    for k in (1, 17, 50_000, 99_999, 100_000):
        assert kth_largest(x, k) == torch.sort(x, descending=True).values[k - 1]
        assert kth_largest(x.abs(), k, nonnegative=True) == torch.sort(x.abs(), descending=True).values[k - 1]


def conv6() -> nn.Module:
    return build_model(ModelConfig(name="conv6"), (3, 32, 32), 10)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_layerwise_sparsity_is_exact_per_layer_and_globally(sparsity):
    model = conv6()
    attach_score_masks(model, select_layers(model), sparsity)
    for mt in masked_tensors(model):
        with torch.no_grad():
            mt.mask.scores.normal_()
    rep = sparsity_report(model)
    expected_total = 0
    for name, layer in prunable_layers(model):
        n = layer.weight.numel()
        assert rep.layers[f"{name}.weight"]["kept"] == num_kept(n, sparsity)
        expected_total += num_kept(n, sparsity)
    assert rep.kept == expected_total
    assert rep.total == 2_261_184
    assert abs(rep.sparsity - sparsity) < 1e-4


def test_global_scope_keeps_exact_total_and_follows_scores():
    model = conv6()
    masks = attach_score_masks(model, select_layers(model), 0.8, scope="global")
    with torch.no_grad():
        for i, sm in enumerate(masks):
            sm.scores.normal_(std=1.0 + i)  # later layers get larger scores -> higher density
    rep = sparsity_report(model)
    assert rep.kept == num_kept(2_261_184, 0.8)
    densities = [rep.layers[f"{n}.weight"]["density"] for n, _ in prunable_layers(model)]
    assert densities[-1] > densities[0]  # not a uniform allocation


def test_first_and_last_layer_dense():
    model = conv6()
    layers = select_layers(model, first_layer_dense=True, last_layer_dense=True)
    attach_score_masks(model, layers, 0.5)
    rep = sparsity_report(model)
    names = [n for n, _ in prunable_layers(model)]
    assert rep.layers[f"{names[0]}.weight"]["density"] == 1.0
    assert rep.layers[f"{names[-1]}.weight"]["density"] == 1.0
    assert rep.layers[f"{names[1]}.weight"]["density"] == pytest.approx(0.5)


@pytest.mark.parametrize("rank", ["abs", "raw"])
def test_straight_through_gradient(rank):
    torch.manual_seed(0)
    layer = nn.Linear(6, 4, bias=False)
    w = layer.weight.detach().clone()
    layer.weight.requires_grad_(False)
    (sm,) = attach_score_masks(layer, [("", layer)], 0.5, rank=rank)
    with torch.no_grad():
        sm.scores.normal_()
    x = torch.randn(3, 6)
    upstream = torch.randn(3, 4)
    out = layer(x)
    (out * upstream).sum().backward()
    mask = sm.current_mask()
    assert int(mask.sum()) == 12
    assert torch.allclose(out, x @ (w * mask).T)
    grad_weff = upstream.T @ x  # dL/dW_eff for L = sum(out * upstream)
    expected = grad_weff * w * (torch.sign(sm.scores.detach()) if rank == "abs" else 1.0)
    assert torch.allclose(sm.scores.grad, expected, atol=1e-6)
    assert layer.parametrizations.weight.original.grad is None  # frozen weight gets nothing


def test_raw_rank_keeps_largest_signed_scores():
    layer = nn.Linear(4, 1, bias=False)
    (sm,) = attach_score_masks(layer, [("", layer)], 0.5, rank="raw")
    with torch.no_grad():
        sm.scores.copy_(torch.tensor([[-5.0, 1.0, -0.5, 2.0]]))
    assert sm.current_mask().tolist() == [[0.0, 1.0, 0.0, 1.0]]
    sm.rank = "abs"
    sm._seen = None
    assert sm.current_mask().tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_mask_follows_score_updates():
    layer = nn.Linear(10, 1, bias=False)
    (sm,) = attach_score_masks(layer, [("", layer)], 0.5)
    with torch.no_grad():
        sm.scores.copy_(torch.arange(10.0).view(1, 10))
    before = sm.current_mask().clone()
    with torch.no_grad():
        sm.scores.mul_(-1).add_(9.5)  # reverse the order in place (as an optimizer step would)
    after = sm.current_mask()
    assert torch.equal(after, 1 - before)


def test_fixed_mask_trains_kept_weights_only():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    mask = torch.rand(3, 5) > 0.5
    attach_fixed_masks(layer, {"weight": mask})
    layer(torch.randn(4, 5)).sum().backward()
    grad = layer.parametrizations.weight.original.grad
    assert torch.all(grad[~mask] == 0) and torch.any(grad[mask] != 0)
    assert torch.all(layer.weight[~mask] == 0)


def test_fixed_mask_rejects_unknown_names_and_shapes():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="does not name"):
        attach_fixed_masks(model, {"9.weight": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        attach_fixed_masks(model, {"0.weight": torch.ones(4, 4, dtype=torch.bool)})


def test_masks_attach_to_torchvision_models_and_bake():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    n_layers = len(prunable_layers(model))
    attach_score_masks(model, select_layers(model), 0.7)
    with torch.no_grad():
        for mt in masked_tensors(model):
            mt.mask.scores.uniform_()
    assert len(list(masked_tensors(model))) == n_layers
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    masks = mask_dict(model)
    bake(model)
    assert not list(masked_tensors(model))
    assert set(model.state_dict()) >= {"conv1.weight", "fc.weight"}
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert sum(int((model.get_submodule(n.rsplit(".", 1)[0]).weight != 0).sum()) for n in masks) == kept
    assert math.isclose(1 - kept / total, 0.7, abs_tol=1e-4)


def test_masks_travel_in_state_dict():
    a = conv6()
    attach_score_masks(a, select_layers(a), 0.5)
    with torch.no_grad():
        for mt in masked_tensors(a):
            mt.mask.scores.normal_()
    b = conv6()
    attach_score_masks(b, select_layers(b), 0.5)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(mask_dict(a)[k], v) for k, v in mask_dict(b).items())
    assert isinstance(FixedMask(torch.ones(2)), nn.Module)
