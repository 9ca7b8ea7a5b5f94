"""Looks-linear (LL) orthogonal weights and paired/dependent biases.

Fischer & Burkholz 2021 ("Towards strong pruning for lottery tickets with non-zero biases",
arXiv 2110.11150, Sec. 3; code RelationalML/NonZeroBiases ``Edge Pop Up/initializers.py``;
the LL idea is Balduzzi et al. 2017). With ``relu(u) - relu(-u) = u``, a layer whose output is
``[u; -u]`` followed by a layer with weights ``[[W0, -W0], [-W0, W0]]`` keeps the pair structure,
so at initialization (zero biases) the network computes a linear map of its input; with square
orthogonal ``W0`` every such layer preserves the norm of the represented signal.

* first prunable layer: ``[W0; -W0]``, ``W0`` of shape ``(ceil(out/2), in, *kernel)``;
* every later layer: ``[[W0, -W0], [-W0, W0]]``, ``W0`` of shape ``(ceil(out/2), ceil(in/2), *kernel)``;
* ``W0`` orthogonal (``torch.nn.init.orthogonal_`` over the flattened fan-in, unit gain), cropped
  to the layer's shape. Convolutions use the same block structure over channels. Max-pooling does
  not commute with the pair representation, so only pool-free (or average-pooled) networks are
  exactly linear.

Biases (bias std ``g_l = bias_factor * prod_{j <= l} sigma_j``, the running product of the He
stds ``sqrt(2 / fan_in)``, as :func:`ticketlab.init.weights.he_product_stds`):

* ``ll_paired``: ``[b; -b]``, ``b ~ N(0, g_l^2)`` of size ``ceil(out/2)``;
* ``ll_dependent``: odd layers (1-based) ``[b; -b]``; even layers ``[-c; c]`` with
  ``c = sum_{kh,kw}(W0) @ b_prev / sqrt(kh * kw)``, which cancels the previous layer's bias in the
  pair representation (exactly for linear layers; the reference's ``1/sqrt(kh*kw)`` factor on
  convolutions is kept).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ticketlab.errors import ConfigError


def check_even_widths(layers: list[tuple[str, nn.Module]], what: str) -> None:
    """Raise if a layer other than the last has an odd output width (the pairs would not match).

    Raises:
        ConfigError: naming the layer, its width and ``what`` (the init key).
    """
    for name, layer in layers[:-1]:
        width = layer.weight.shape[0]
        if width % 2:
            raise ConfigError(f"{what} needs an even output width in every layer but the last; layer {name!r} has "
                              f"{width} outputs. Choose widths that are even (e.g. model.widths, model.width_mult).")


def ll_weight(shape: tuple[int, ...], first: bool, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A looks-linear orthogonal weight of ``shape`` and its block ``W0``.

    Args:
        shape: ``(out, in, *kernel)``.
        first: the network's first prunable layer (``[W0; -W0]``) or a later one (2x2 blocks).
        gen: CPU generator.

    Returns:
        ``(W, W0)``: the weight (``shape``) and the orthogonal block.
    """
    out, inp, kernel = shape[0], shape[1], tuple(shape[2:])
    dout = math.ceil(out / 2)
    din = inp if first else math.ceil(inp / 2)
    w0 = nn.init.orthogonal_(torch.empty((dout, din, *kernel)), generator=gen)
    w = torch.cat([w0, -w0], dim=0)
    if not first:
        w = torch.cat([w, -w], dim=1)
    return w[:out, :inp].contiguous(), w0


def ll_biases(weights0: list[Tensor], out_widths: list[int], stds: list[float], dependent: bool,
              gen: torch.Generator) -> list[Tensor]:
    """Paired (or dependent) biases for a chain of LL layers.

    Args:
        weights0: each layer's block ``W0`` (from :func:`ll_weight`).
        out_widths: each layer's output width.
        stds: each layer's bias std ``g_l``.
        dependent: ``ll_dependent`` instead of ``ll_paired``.
        gen: CPU generator.

    Returns:
        One bias vector per layer, of length ``out_widths[l]``.
    """
    biases, prev = [], None
    for i, (w0, out, std) in enumerate(zip(weights0, out_widths, stds, strict=True), start=1):
        if dependent and i % 2 == 0 and prev is not None:
            flat = w0.sum(dim=tuple(range(2, w0.dim()))) if w0.dim() > 2 else w0
            scale = 1.0 / math.sqrt(math.prod(w0.shape[2:])) if w0.dim() > 2 else 1.0
            b_prev = prev
            if flat.shape[1] != b_prev.numel():  # conv -> linear: a channel's bias covers its flattened pixels
                b_prev = b_prev.repeat_interleave(flat.shape[1] // b_prev.numel())
            c = flat @ b_prev * scale
            bias = torch.cat([-c, c])[:out]
        else:
            b = torch.randn(math.ceil(out / 2), generator=gen) * std
            prev = b
            bias = torch.cat([b, -b])[:out]
        biases.append(bias)
    return biases
