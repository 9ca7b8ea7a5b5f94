"""Weight and score initializers.

Every prunable layer draws its tensors from its own ``torch.Generator`` keyed by
``(seed, layer index, purpose)``, on the CPU, then copies them to the layer's device. Hence:

* the same seed gives bit-identical weights on CPU and CUDA;
* weights and scores have independent seeds (``init.weight_seed``, ``init.score_seed``), so
  "same weights, different scores" experiments are possible;
* two layers of equal shape never receive identical tensors.

Weight distributions (``sigma = gain / sqrt(fan)``, Kaiming with ReLU gain sqrt(2) by default;
He et al. 2015, Eq. 10), as in Ramanujan et al. 2020, Sec. 4 / allenai/hidden-networks
``utils/builder.py``:

* ``kaiming_normal``: ``N(0, sigma^2)``;
* ``kaiming_uniform``: ``U(-sqrt(3) sigma, sqrt(3) sigma)``;
* ``signed_constant``: ``sigma * sign(z)``, ``z ~ N(0, 1)`` (+-sigma with equal probability);
* ``unsigned_constant``: ``+sigma`` everywhere (an ablation of Ramanujan et al.);
* ``xavier_normal``: ``N(0, 2 / (fan_in + fan_out))`` (Glorot & Bengio 2010, unit gain);
* ``ortho_ll``: looks-linear orthogonal weights (:mod:`ticketlab.init.looks_linear`), unit gain.

With ``scale_fan`` the std (for ``ortho_ll``: the weight) is divided by ``sqrt(density)``
(``paper``) or by ``sqrt(1 - density)`` (``reference_code``: what hidden-networks computes, its
issue #9).

Bias initializations (``init.bias_init``; Fischer & Burkholz 2021, Sec. 3, and
RelationalML/NonZeroBiases ``initializers.py``): ``zero``; ``default`` (PyTorch's layer default);
``he_product``: ``N(0, g_l^2)`` with ``g_l = bias_factor * prod_{j <= l} sigma_j`` the running
product of the He stds ``sqrt(2 / fan_in_j)`` (density-scaled with ``scale_fan``) over the
prunable layers in order; ``ll_paired`` and ``ll_dependent`` for ``ortho_ll`` networks.

Score initializers (for :class:`ticketlab.sparsity.masks.ScoreMask`):

* ``default``: PyTorch's default layer init, Kaiming-uniform with ``a = sqrt(5)``, i.e.
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` -- what edge-popup, biprop and weight recycling use;
* ``kaiming_uniform``: ``U(-sqrt(6/fan_in), sqrt(6/fan_in))`` -- IteRand's choice;
* ``constant``: 0.5 plus a 1e-4 jitter (Fischer & Burkholz's constant, ties broken at random).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ticketlab.config import InitConfig
from ticketlab.registry import Registry

WEIGHT_INITS: Registry[Callable[[tuple[int, ...], float, torch.Generator], Tensor]] = Registry("init")
SCORE_INITS: Registry[Callable[[tuple[int, ...], int, torch.Generator], Tensor]] = Registry("score_init")


def layer_generator(seed: int, index: int, purpose: str) -> torch.Generator:
    """A CPU generator keyed by ``(seed, layer index, purpose)``.

    Args:
        seed: the run's weight or score seed.
        index: position of the layer among the prunable layers (0 = input layer).
        purpose: e.g. ``"weight"``, ``"bias"``, ``"scores"``; distinct purposes give independent
            streams.

    Returns:
        A seeded ``torch.Generator`` (CPU).
    """
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a Linear/Conv weight of ``shape`` (out, in, *kernel)."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


@WEIGHT_INITS.register("kaiming_normal")
def kaiming_normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``N(0, std^2)`` of ``shape`` (He et al. 2015)."""
    return torch.randn(shape, generator=gen) * std


@WEIGHT_INITS.register("kaiming_uniform")
def kaiming_uniform(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``U(-sqrt(3) std, sqrt(3) std)`` of ``shape`` (variance ``std^2``)."""
    bound = math.sqrt(3.0) * std
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


@WEIGHT_INITS.register("unsigned_constant")
def unsigned_constant(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``+std`` everywhere (Ramanujan et al. 2020's unsigned-constant ablation)."""
    return torch.full(shape, std)


@WEIGHT_INITS.register("xavier_normal")
def xavier_normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``N(0, std^2)`` with the Glorot std computed by :func:`weight_std`."""
    return torch.randn(shape, generator=gen) * std


@WEIGHT_INITS.register("ortho_ll")
def ortho_ll_placeholder(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """Looks-linear weights need the layer's position: :func:`init_weights` builds them with
    :func:`ticketlab.init.looks_linear.ll_weight`; this entry only registers the name (and serves
    IteRand redraws with a plain orthogonal-scale normal)."""
    return torch.randn(shape, generator=gen) * std


@WEIGHT_INITS.register("signed_constant")
def signed_constant(shape: tuple[int, ...], std: float, gen: torch.Generator) -> Tensor:
    """``+-std`` with equal probability (Ramanujan et al. 2020, Sec. 4, "signed Kaiming constant")."""
    return torch.where(torch.randn(shape, generator=gen) >= 0, std, -std)


@SCORE_INITS.register("default")
def score_default(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's Kaiming-uniform with ``a = sqrt(5)``."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


@SCORE_INITS.register("kaiming_uniform")
def score_kaiming_uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> Tensor:
    """``U(-sqrt(6/fan_in), sqrt(6/fan_in))``: Kaiming-uniform with ReLU gain (IteRand)."""
    bound = math.sqrt(6.0 / fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


@SCORE_INITS.register("constant")
def score_constant(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> Tensor:
    """``0.5 + U(-1e-4, 1e-4)``: Fischer & Burkholz's constant 0.5, with a jitter that breaks ties."""
    return 0.5 + (torch.rand(shape, generator=gen) * 2 - 1) * 1e-4


def weight_std(shape: tuple[int, ...], cfg: InitConfig, density: float = 1.0) -> float:
    """Standard deviation of a weight tensor under ``cfg``.

    Args:
        shape: weight shape ``(out, in, *kernel)``.
        cfg: the init config (mode, nonlinearity, density scaling).
        density: fraction of this layer's weights that will be kept (for ``scale_fan``).

    Returns:
        ``gain / sqrt(fan)``, divided by ``sqrt(density)`` (paper) or ``sqrt(1 - density)``
        (reference code) when ``cfg.scale_fan``.
    """
    fan_in, fan_out = fans(shape)
    if cfg.name == "xavier_normal":
        std = math.sqrt(2.0 / (fan_in + fan_out))
    elif cfg.name == "ortho_ll":
        std = 1.0 / math.sqrt(fan_in)  # orthogonal rows of unit norm: per-entry scale 1/sqrt(fan_in)
    else:
        fan = fan_in if cfg.mode == "fan_in" else fan_out
        gain = math.sqrt(2.0) if cfg.nonlinearity == "relu" else 1.0
        std = gain / math.sqrt(fan)
    return std * density_factor(cfg, density)


def density_factor(cfg: InitConfig, density: float) -> float:
    """``1/sqrt(density)`` (paper), ``1/sqrt(1 - density)`` (reference code) or 1 without ``scale_fan``."""
    if not cfg.scale_fan:
        return 1.0
    factor = density if cfg.scale_fan_convention == "paper" else 1.0 - density
    return 1.0 / math.sqrt(factor) if factor > 0 else 1.0


def he_product_stds(layers: list[tuple[str, nn.Module]], cfg: InitConfig, densities: dict[str, float]
                    ) -> list[float]:
    """Bias stds ``g_l = bias_factor * prod_{j <= l} sqrt(2 / fan_in_j) * density_factor_j``.

    Source: Fischer & Burkholz 2021; RelationalML/NonZeroBiases ``init_with_bias`` (``gainProd``).
    """
    g, out = cfg.bias_factor, []
    for name, layer in layers:
        g *= math.sqrt(2.0 / fans(tuple(layer.weight.shape))[0]) * density_factor(cfg, densities.get(name, 1.0))
        out.append(g)
    return out


@torch.no_grad()
def init_weights(model: nn.Module, cfg: InitConfig, seed: int,
                 densities: dict[str, float] | None = None) -> None:
    """Initialize every prunable layer's weight and bias in place.

    Must run before masks are attached (it writes ``layer.weight`` directly).

    Args:
        model: the model.
        cfg: init config; ``cfg.weight_seed`` overrides ``seed`` when set.
        seed: the run's seed.
        densities: ``{layer name: density}`` used by ``scale_fan``; missing layers count as 1.

    Raises:
        ConfigError: unknown ``cfg.name``; a looks-linear init on a layer (other than the last)
            with an odd output width.
    """
    from ticketlab.init.looks_linear import check_even_widths, ll_biases, ll_weight
    from ticketlab.sparsity.masks import prunable_layers

    sample = WEIGHT_INITS.get(cfg.name)
    wseed = seed if cfg.weight_seed is None else cfg.weight_seed
    densities = densities or {}
    layers = prunable_layers(model)
    blocks = []
    if cfg.name == "ortho_ll" or cfg.bias_init.startswith("ll_"):
        check_even_widths(layers, "init.name=ortho_ll" if cfg.name == "ortho_ll" else f"init.bias_init={cfg.bias_init}")
    for idx, (name, layer) in enumerate(layers):
        w = layer.weight
        gen = layer_generator(wseed, idx, "weight")
        if cfg.name == "ortho_ll":
            value, w0 = ll_weight(tuple(w.shape), idx == 0, gen)
            factor = density_factor(cfg, densities.get(name, 1.0))
            w.copy_(value * factor)
            blocks.append(w0 * factor)
        else:
            w.copy_(sample(tuple(w.shape), weight_std(tuple(w.shape), cfg, densities.get(name, 1.0)), gen))
    with_bias = [(i, layer) for i, (_, layer) in enumerate(layers) if getattr(layer, "bias", None) is not None]
    if cfg.bias_init == "default" or not with_bias:
        return
    if cfg.bias_init == "zero":
        for _, layer in with_bias:
            layer.bias.zero_()
        return
    stds = he_product_stds(layers, cfg, densities)
    if cfg.bias_init == "he_product":
        for i, layer in with_bias:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=layer_generator(wseed, i, "bias")) * stds[i])
        return
    biases = ll_biases(blocks, [layer.weight.shape[0] for _, layer in layers], stds,
                       cfg.bias_init == "ll_dependent", layer_generator(wseed, -1, "bias"))
    for i, layer in with_bias:
        layer.bias.copy_(biases[i])


@torch.no_grad()
def init_scores(named_scores: list[tuple[int, str, Tensor, int]], name: str, seed: int) -> None:
    """Initialize score tensors in place.

    Args:
        named_scores: ``(layer index, "weight"|"bias", scores, fan_in)``; the layer index and
            tensor name key the generator; ``fan_in`` is that of the layer's weight.
        name: score initializer (``default`` or ``kaiming_uniform``).
        seed: score seed.

    Raises:
        ConfigError: unknown ``name``.
    """
    sample = SCORE_INITS.get(name)
    for idx, tname, scores, fan_in in named_scores:
        scores.copy_(sample(tuple(scores.shape), fan_in, layer_generator(seed, idx, f"scores.{tname}")))
