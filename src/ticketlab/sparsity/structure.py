"""Mask-structure metrics: effective sparsity, active width and the number of input-output paths.

All three come from one "path network", built from a copy of the model
(the SynFlow trick of Vysogorets & Kempe, "Connectivity Matters: Neural Network Pruning Through the
Lens of Effective Sparsity", JMLR 2023, code ``effective_masks_synflow``):

* every prunable weight becomes its binary mask (float64), every bias zero;
* batch norm becomes the identity, max-pooling becomes sum-pooling over the same window,
  adaptive pooling becomes a sum over each output cell's window (same output size);
* ReLUs stay (they are the identity on the non-negative signals of this network).

Fed an all-ones input, the summed output ``R`` is the number of input-output paths (counting each
input pixel and each output unit), and ``dR/dw_e`` is the number of paths through edge ``e``.
Hence:

* **effective mask**: kept weights with ``dR/dw > 0`` (on some input-output path);
  effective sparsity counts the others as removed;
* **log_paths**: ``ln R`` (``inf`` on float64 overflow, ``-inf`` when no path is left);
* **active width** of a layer: output units (channels) that lie on some input-output path, i.e.
  reachable from the input (positive activation) and reaching the output (positive gradient) --
  the path-based reading of "a kept incoming and a kept outgoing weight".

Residual networks are handled as they are (skip connections add paths). Padding at image borders is
respected, since the real layers run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ticketlab.sparsity.masks import prunable_layers, underlying


@dataclass
class MaskStructure:
    """Structure of a model's masks.

    Attributes:
        effective_density: fraction of prunable weights on some input-output path.
        effective_sparsity: ``1 - effective_density``.
        disconnected_fraction: kept weights on no path, as a fraction of kept weights.
        log_paths: natural log of the number of input-output paths.
        layers: per prunable layer: ``density``, ``effective_density``, ``width`` (units), and
            ``active_width`` (units on some path).
    """

    effective_density: float
    effective_sparsity: float
    disconnected_fraction: float
    log_paths: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """Scalars for ``summary.json``/W&B (per-layer values as ``structure/<layer>/<key>``)."""
        out = {"effective_density": self.effective_density, "effective_sparsity": self.effective_sparsity,
               "disconnected_fraction": self.disconnected_fraction, "log_paths": self.log_paths}
        for name, vals in self.layers.items():
            for k, v in vals.items():
                out[f"structure/{name}/{k}"] = v
        return out


class _SumPool(nn.Module):
    def __init__(self, pool: nn.MaxPool2d | nn.AvgPool2d) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, divisor_override=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)


class _AdaptiveSum(nn.Module):
    """Adaptive pooling as a sum over each output cell's window (PyTorch's windows: rows
    ``floor(i H / h) .. ceil((i + 1) H / h)``), keeping the pooling's output size, so the layers after it
    (a ``Linear`` over ``C * h * w`` features) see the shape they were built for."""

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    @staticmethod
    def _counts(n: int, out: int) -> list[int]:
        return [-(-(i + 1) * n // out) - (i * n // out) for i in range(out)]

    def forward(self, x: Tensor) -> Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * 2
        h, w = (s if s is not None else d for s, d in zip(size, x.shape[-2:], strict=True))
        rows = torch.tensor(self._counts(x.shape[-2], h), dtype=x.dtype, device=x.device)
        cols = torch.tensor(self._counts(x.shape[-1], w), dtype=x.dtype, device=x.device)
        return nn.functional.adaptive_avg_pool2d(x, (h, w)) * rows[:, None] * cols[None, :]


def _path_network(model: nn.Module) -> nn.Module:
    """A float64 copy whose effective prunable weights equal their masks (see the module docstring).

    The copy keeps its mask parametrizations (removing them would edit the parametrized class that
    the original model shares); the unmasked tensors behind them are set to 1 (weights) and 0
    (biases), so the effective weight is the mask (for biprop, ``alpha * sign(1) * m = m``).
    """
    net = copy.deepcopy(model)
    for name, module in list(net.named_modules()):
        replacement = None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            replacement = nn.Identity()
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            replacement = _SumPool(module)
        elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            replacement = _AdaptiveSum(module.output_size)
        if replacement is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, replacement)
    net = net.double().eval()
    with torch.no_grad():
        for _, layer in prunable_layers(net):
            underlying(layer, "weight").fill_(1.0)
            bias = underlying(layer, "bias")
            if bias is not None:
                bias.zero_()
    return net


def mask_structure(model: nn.Module, input_shape: tuple[int, ...]) -> MaskStructure:
    """Compute :class:`MaskStructure` for ``model``'s current masks (layers without a mask count as dense).

    Args:
        model: a (masked) model; it is not modified.
        input_shape: ``(C, H, W)`` of one input.

    Returns:
        The metrics; a layer with no kept weight gives ``log_paths = -inf`` and zero effective density.
    """
    net = _path_network(model)
    device = next(net.parameters()).device
    layers = prunable_layers(net)
    outputs: dict[str, Tensor] = {}

    def keep(name):
        def hook(_module, _inp, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers]
    for p in net.parameters():
        p.requires_grad_(True)
    try:
        with parametrize.cached():  # one effective-weight tensor per layer, shared by forward and grad
            weights = [layer.weight for _, layer in layers]
            for w in weights:
                if not w.is_leaf:
                    w.retain_grad()  # effective weights of masked layers
            r = net(torch.ones((1, *input_shape), dtype=torch.float64, device=device)).sum()
            if r.item() > 0:
                r.backward()  # one pass: dR/dW_eff for the effective mask, dR/d(output) for the widths
            grads = [w.grad for w in weights]
    finally:
        for h in handles:
            h.remove()
    total = kept = effective = 0
    per_layer: dict[str, dict[str, float]] = {}
    for (name, _), w, grad in zip(layers, weights, grads, strict=True):
        m = w.detach() > 0
        eff = m & (grad > 0) if grad is not None else torch.zeros_like(m)
        out = outputs[name]
        act = out.detach() > 0
        g = out.grad > 0 if out.grad is not None else torch.zeros_like(act)
        on_path = act & g
        units = on_path.reshape(on_path.shape[0], on_path.shape[1], -1).any(dim=2).any(dim=0) if on_path.dim() > 2 \
            else on_path.any(dim=0)
        n = m.numel()
        per_layer[name] = {"density": int(m.sum()) / n, "effective_density": int(eff.sum()) / n,
                           "width": int(m.shape[0]), "active_width": int(units.sum())}
        total += n
        kept += int(m.sum())
        effective += int(eff.sum())
    rv = r.item()
    log_paths = math.log(rv) if 0 < rv < math.inf else (-math.inf if rv <= 0 else math.inf)
    return MaskStructure(effective_density=effective / total, effective_sparsity=1 - effective / total,
                         disconnected_fraction=(kept - effective) / kept if kept else 0.0, log_paths=log_paths,
                         layers=per_layer)


def mask_warnings(structure: MaskStructure, sparsity: float) -> list[str]:
    """Warn when the masks leave no input-output path, cut a layer off every path, or disconnect most
    kept weights.

    Args:
        structure: a :class:`ticketlab.sparsity.structure.MaskStructure` of the masked model.
        sparsity: the target sparsity (for the message).
    """
    if structure is None:
        return []
    if structure.log_paths == -math.inf or structure.effective_density == 0:
        return [f"the masks at pruner.sparsity={sparsity:g} leave no path from the input to the output: the "
                "network's output does not depend on its input, so it can only learn the class prior. Lower "
                "pruner.sparsity, or use a method that keeps paths (e.g. pruner=phew or pruner=synflow)."]
    warnings = []
    dead = [name for name, layer in structure.layers.items()
            if layer.get("density", 0) > 0 and layer.get("effective_density", 1) == 0]
    if dead:
        warnings.append(f"layer(s) {', '.join(dead)} keep weights of which none lies on an input-output path "
                        "(the network reaches its output around them, through skip connections).")
    if structure.disconnected_fraction > 0.5:
        warnings.append(f"{structure.disconnected_fraction:.0%} of the kept weights lie on no input-output path "
                        f"(effective sparsity {structure.effective_sparsity:.4f} against {sparsity:.4f} nominal).")
    return warnings
