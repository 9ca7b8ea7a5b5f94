"""Masks attached to any ``nn.Module`` through ``torch.nn.utils.parametrize``.

One mechanism serves both families of methods:

* :class:`FixedMask` -- a fixed binary mask over a weight that stays trainable (pruning at
  initialization, IMP): ``W_eff = W * m``.
* :class:`ScoreMask` -- trainable scores over a frozen weight (strong lottery tickets, edge-popup):
  ``W_eff = W * TopK(key(S), k)`` with a straight-through gradient to ``S``
  (Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?", Sec. 3,
  Algorithm 1).

Layers are never replaced: the masks become parametrizations of ``weight`` (and optionally
``bias``) of every Conv/Linear layer ("prunable layers"), so torchvision models work unchanged,
masks and scores travel in ``state_dict``, and :func:`bake` turns a masked model into a plain one.

Kept-count convention (pinned by the tests): a tensor of ``n`` entries at sparsity ``p`` keeps
``n - floor(p * n)`` entries -- the convention of allenai/hidden-networks (``utils/conv_type.py``),
which zeroes the ``floor((1 - k) n)`` lowest scores. Global top-k applies the same formula to the
total count of all masked tensors. Ties are broken deterministically (lower flat index wins), so
the kept count is always exact.

Selection never sorts: :func:`topk_mask` uses ``kthvalue`` (linear-time selection), and a score
mask is recomputed only when its scores change (tracked through the tensor version counter), so
evaluation batches reuse the mask of the last optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError, NonFiniteError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def num_kept(n: int, sparsity: float) -> int:
    """Number of entries kept out of ``n`` at ``sparsity`` (fraction removed).

    Convention: ``n - floor(sparsity * n)`` (allenai/hidden-networks, ``GetSubnet``), computed exactly:
    ``sparsity`` is read as the decimal it prints as (``repr``), so ``num_kept(100, 0.29) == 71`` although
    ``0.29 * 100 == 28.999999999999996`` in floating point, and no slack ever removes one weight too many
    on large tensors.

    Args:
        n: number of entries (>= 0).
        sparsity: fraction removed, in [0, 1).

    Returns:
        The kept count, in ``[1, n]`` for ``n >= 1`` and ``sparsity < 1``.

    Raises:
        ConfigError: if ``sparsity`` is outside [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity={sparsity!r} must be in [0, 1) (fraction of weights removed).")
    removed = math.floor(Fraction(repr(float(sparsity))) * n)
    return n - min(removed, n)


def num_kept_percentile(n: int, sparsity: float) -> int:
    """Kept count of a percentile threshold: ``n - round(sparsity * (n - 1))`` (Python's round, half to even).

    IteRand's reference (dchiji-ntt/iterand ``models/networks/sparse_modules.py``, ``percentile``) keeps the
    scores at or above the ``1 + round(p (n - 1))``-th smallest; without ties that is this many. It differs
    from :func:`num_kept` by one in about a third of the ``(n, p)`` pairs.

    Raises:
        ConfigError: ``sparsity`` outside [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity={sparsity!r} must be in [0, 1) (fraction of weights removed).")
    return n - round(sparsity * (n - 1))


def kth_largest(flat: Tensor, k: int, nonnegative: bool = False) -> Tensor:
    """The ``k``-th largest entry of a 1-D tensor, by selection (never a full sort).

    On CUDA (and for non-float32 or small tensors) this is ``kthvalue``, a radix select. On the
    CPU, where ``kthvalue`` costs ~12 ns per element, one radix pass is done first: float32 bit
    patterns are mapped to integers of the same order, a ``bincount`` over their top 16 bits
    finds the bin holding the k-th largest value, and ``kthvalue`` runs on that bin only
    (about 4x faster on a 235k-entry layer).

    Args:
        flat: 1-D tensor of ``n`` entries.
        k: rank from the top, ``1 <= k <= n``.
        nonnegative: promise that no entry is negative (e.g. ``|S|``), which skips the mapping of
            negative floats to ordered integers. A wrong promise gives a wrong answer.

    Returns:
        0-dim tensor on ``flat``'s device.
    """
    n = flat.numel()
    if flat.device.type != "cpu" or flat.dtype != torch.float32 or n < 8192:
        return flat.kthvalue(n - k + 1).values
    bits = flat.view(torch.int32)
    if nonnegative:
        high, bins = bits >> 16, 32768  # non-negative floats order like their bit patterns
    else:
        ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # same order as the float values
        high, bins = (ordered >> 16) + 32768, 65536
    counts = torch.bincount(high, minlength=bins)
    from_top = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, k))  # first bin (from the top) reaching k entries
    b = bins - 1 - j
    above = int(from_top[j]) - int(counts[b])  # entries in higher bins
    cand = flat[high == b]
    return cand.kthvalue(cand.numel() - (k - above) + 1).values


def topk_mask(key: Tensor, k: int, nonnegative: bool = False) -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``key``, without sorting.

    The threshold is the k-th largest value (:func:`kth_largest`); every entry above it is kept,
    and entries equal to it are kept lowest flat index first until exactly ``k`` are kept, so the
    count is exact even with ties (e.g. scores clamped at 0). On CUDA there is no host
    synchronisation.

    Args:
        key: ranking key, any shape, floating point.
        k: number of entries to keep; clipped to ``[0, key.numel()]``.
        nonnegative: ``key`` has no negative entry (see :func:`kth_largest`).

    Returns:
        Bool tensor of ``key``'s shape with exactly ``min(max(k, 0), n)`` True entries.

    Raises:
        NonFiniteError: on the CPU, when NaN entries make an exact top-k impossible (NaN is not
            ordered). On CUDA the count is not checked (that would synchronise with the host);
            the training loop checks the scores for NaN every few steps instead
            (:func:`nonfinite_scores`).
    """
    flat = key.detach().reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(key, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(key, dtype=torch.bool)
    v = kth_largest(flat, k, nonnegative)
    if flat.device.type == "cpu":
        keep = flat >= v
        if int(keep.sum()) == k:  # no tie at the threshold: the common case
            return keep.view_as(key)
    above = flat > v
    ties = flat == v
    keep = above | (ties & (ties.cumsum(0) <= k - above.sum()))
    if flat.device.type == "cpu" and int(keep.sum()) != k:
        nans = int(torch.isnan(flat).sum())
        raise NonFiniteError("scores", f"a top-{k} of {n} entries found only {int(keep.sum())}: {nans} of them are "
                                       "NaN, which has no rank")
    return keep.view_as(key)


def nonfinite_scores(model: nn.Module) -> bool:
    """Whether any :class:`ScoreMask` of ``model`` has a NaN or infinite score (one host synchronisation)."""
    checks = [torch.isfinite(mt.mask.scores).all() for mt in masked_tensors(model) if isinstance(mt.mask, ScoreMask)]
    return bool(checks) and not bool(torch.stack(checks).all())


def _score_grad(grad: Tensor, weight: Tensor, scores: Tensor, signed: bool) -> Tensor:
    """Straight-through score gradient ``grad * W`` (times ``sign(S)`` for the ``|S|`` key)."""
    out = grad * weight
    return out * torch.sign(scores) if signed else out


class _ScoreSTE(torch.autograd.Function):
    """``W * m`` with a straight-through gradient to the scores.

    Forward: ``W_eff = W * m`` with ``m = TopK(key(S))`` precomputed. Backward (Ramanujan et al.
    2020, Eq. 2 / Sec. 3): the top-k is treated as the identity, so
    ``dL/dS = dL/dW_eff * W`` for the raw key, times ``sign(S)`` for the ``|S|`` key; the weight
    gets ``dL/dW_eff * m`` (only used when the weight is trainable).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor, signed: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight, scores, mask)
        ctx.signed = signed
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        weight, scores, mask = ctx.saved_tensors
        grad_w = grad * mask if ctx.needs_input_grad[0] else None
        grad_s = _score_grad(grad, weight, scores, ctx.signed) if ctx.needs_input_grad[1] else None
        return grad_w, grad_s, None, None


class _BipropSTE(torch.autograd.Function):
    """Binarised masked weight ``alpha * sign(W) * m`` with the biprop straight-through gradient.

    ``alpha`` is the mean ``|W|`` over the kept entries (a scalar per tensor, no gradient).
    Backward (Diffenderfer & Kailkhura 2021, Sec. 3; chrundle/biprop ``GetQuantnet_binary``): the
    gradient reaching the mask, ``dL/dW_eff * sign(W)``, is multiplied by ``|W|``, so
    ``dL/dS = dL/dW_eff * W`` (times ``sign(S)`` for the ``|S|`` key) -- the same form as
    edge-popup. The weights receive no gradient (biprop never trains them).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, scores: Tensor, mask: Tensor, signed: bool) -> Tensor:  # noqa: D102
        ctx.save_for_backward(weight, scores)
        ctx.signed = signed
        kept = mask.sum().clamp(min=1)
        alpha = (weight.abs() * mask).sum() / kept
        return alpha * torch.sign(weight) * mask

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        weight, scores = ctx.saved_tensors
        grad_s = _score_grad(grad, weight, scores, ctx.signed) if ctx.needs_input_grad[1] else None
        return None, grad_s, None, None


class MaskBase(nn.Module):
    """Common interface of the mask parametrizations.

    Attributes:
        mask: float buffer of the tensor's shape, 1 = kept, 0 = removed (saved in ``state_dict``).
    """

    mask: Tensor

    def current_mask(self) -> Tensor:
        """The mask in force (float 0/1, the masked tensor's shape)."""
        return self.mask


class FixedMask(MaskBase):
    """A fixed binary mask over a trainable tensor: ``W_eff = W * m``.

    Gradients reach only the kept entries of ``W`` (the product rule zeroes the rest).
    Source: the standard masked-training formulation of pruning at initialization (Lee et al.
    2019, SNIP, Eq. 1; Frankle & Carbin 2019, Sec. 2).

    Args:
        mask: bool or 0/1 tensor of the masked tensor's shape.
    """

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())

    def forward(self, weight: Tensor) -> Tensor:
        """``weight * mask``; shapes must match.

        Raises:
            RuntimeError: if the shapes do not broadcast (torch's own message).
        """
        return weight * self.mask.to(weight.dtype)


class ScoreMask(MaskBase):
    """Trainable scores selecting the top-k entries of a frozen tensor (edge-popup).

    ``W_eff = W * TopK(key(S), k)`` where ``key(S) = |S|`` (edge-popup, biprop) or ``S``
    (IteRand), ``k = num_kept(n, sparsity)`` per tensor, or a share of one global top-k when the
    mask belongs to a :class:`JointTopK` group. Gradient: :class:`_ScoreSTE`.
    Source: Ramanujan et al. 2020, Algorithm 1; reference code allenai/hidden-networks
    ``utils/conv_type.py`` (``GetSubnet``, ``SubnetConv``).

    Args:
        shape: shape of the masked tensor (the scores have the same shape).
        sparsity: fraction removed in [0, 1) (ignored inside a global group).
        rank: ``"abs"`` (rank by ``|S|``) or ``"raw"`` (rank by ``S``).

    Raises:
        ConfigError: for a sparsity outside [0, 1) or an unknown ``rank``.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...], sparsity: float, rank: str = "abs") -> None:
        super().__init__()
        if rank not in ("abs", "raw"):
            raise ConfigError(f"rank={rank!r} is not allowed; choose abs or raw.")
        self.scores = nn.Parameter(torch.zeros(shape))
        self.register_buffer("mask", torch.ones(shape))
        self.sparsity = float(sparsity)
        self.k = num_kept(self.scores.numel(), sparsity)
        self.rank = rank
        self.group: JointTopK | None = None
        self._seen: tuple[int, int] | None = None  # (data_ptr, version) of the scores behind `mask`

    def set_sparsity(self, sparsity: float) -> None:
        """Change the sparsity (density annealing); the mask follows at the next use.

        Raises:
            ConfigError: sparsity outside [0, 1).
        """
        self.sparsity = float(sparsity)
        self.k = num_kept(self.scores.numel(), sparsity)
        self._seen = None

    def key(self) -> Tensor:
        """The ranking key, ``|S|`` or ``S`` (no gradient)."""
        s = self.scores.detach()
        return s.abs() if self.rank == "abs" else s

    def _stamp(self) -> tuple[int, int]:
        return (self.scores.data_ptr(), self.scores._version)

    def current_mask(self) -> Tensor:
        """Recompute the mask if the scores changed since the last call, and return it."""
        if self.group is not None:
            self.group.refresh()
        elif self._seen != self._stamp():
            with torch.no_grad():
                self.mask.copy_(topk_mask(self.key(), self.k, self.rank == "abs"))
            self._seen = self._stamp()
        return self.mask

    def forward(self, weight: Tensor) -> Tensor:
        """Masked weight ``W * m`` (shape of ``weight``) with the straight-through gradient."""
        mask = self.current_mask()
        return _ScoreSTE.apply(weight, self.scores, mask.to(weight.dtype), self.rank == "abs")


class BipropMask(ScoreMask):
    """Biprop (multi-prize tickets, MPT-1/32): kept weights become ``alpha * sign(W)``.

    ``W_eff = alpha * sign(W) * TopK(key(S))`` with ``alpha`` = mean ``|W|`` of the kept weights of
    this tensor, so ``W_eff`` takes values in ``{-alpha, 0, alpha}``. Gradient:
    :class:`_BipropSTE`. Source: Diffenderfer & Kailkhura, "Multi-Prize Lottery Ticket
    Hypothesis", ICLR 2021, Sec. 3 (Algorithm 1); chrundle/biprop ``utils/conv_type.py``. The
    reference divides by ``int(k * n)`` instead of the kept count; they differ by at most one.
    """

    def forward(self, weight: Tensor) -> Tensor:
        """Binarised masked weight (shape of ``weight``)."""
        mask = self.current_mask()
        return _BipropSTE.apply(weight, self.scores, mask.to(weight.dtype), self.rank == "abs")


class JointTopK:
    """One top-k over the keys of several :class:`ScoreMask` s.

    Used for the global scope (all prunable tensors ranked together) and for joint weight+bias
    ranking within a layer (Fischer & Burkholz 2021: biases compete with the weights for the
    layer's budget). Keeps ``num_kept(N, sparsity)`` of the ``N`` entries of all members; the
    masks are recomputed once per change of any member's scores.
    Source: chrundle/biprop ``GetGlobalSubnet``; Synaptic-Flow ``_global_mask``;
    RelationalML/NonZeroBiases ``resnet_new.py`` (joint weight/bias scores).

    Args:
        members: the score masks to rank together (at least one).
        sparsity: fraction removed over all members, in [0, 1).
    """

    def __init__(self, members: list[ScoreMask], sparsity: float) -> None:
        self.members = members
        self._seen: list[tuple[int, int]] | None = None
        self.set_sparsity(sparsity)
        for m in members:
            m.group = self

    def set_sparsity(self, sparsity: float) -> None:
        """Change the joint sparsity (density annealing)."""
        self.sparsity = float(sparsity)
        self.k = num_kept(sum(m.scores.numel() for m in self.members), sparsity)
        self._seen = None

    def refresh(self) -> None:
        """Recompute every member's mask if any member's scores changed."""
        stamps = [m._stamp() for m in self.members]
        if stamps == self._seen:
            return
        with torch.no_grad():
            keys = torch.cat([m.key().reshape(-1) for m in self.members])
            keep = topk_mask(keys, self.k, all(m.rank == "abs" for m in self.members))
            for m, part in zip(self.members, keep.split([m.scores.numel() for m in self.members]), strict=True):
                m.mask.copy_(part.view_as(m.mask))
        self._seen = stamps


@dataclass
class MaskedTensor:
    """One masked tensor of a model.

    Attributes:
        name: fully qualified tensor name, e.g. ``"features.0.weight"``.
        module: the layer owning it.
        tensor_name: ``"weight"`` or ``"bias"``.
        mask: the parametrization holding the mask.
    """

    name: str
    module: nn.Module
    tensor_name: str
    mask: MaskBase

    @property
    def original(self) -> Tensor:
        """The unmasked tensor (``module.parametrizations.<tensor_name>.original``)."""
        return underlying(self.module, self.tensor_name)


def underlying(layer: nn.Module, name: str) -> Tensor | None:
    """The stored tensor behind ``layer.<name>``: the parametrization's original when masked.

    Args:
        layer: any module.
        name: ``"weight"`` or ``"bias"``.

    Returns:
        The parameter (same shape as ``layer.<name>``), or ``None`` when the layer has no such tensor.
    """
    if parametrize.is_parametrized(layer, name):
        return layer.parametrizations[name].original
    return getattr(layer, name, None)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv/Linear layer of ``model``, in ``named_modules`` order (input to output).

    Args:
        model: any module (TicketLab's or torchvision's).

    Returns:
        ``(qualified name, layer)`` pairs; the first is the input layer, the last the classifier
        for the feed-forward models TicketLab builds.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def select_layers(model: nn.Module, first_layer_dense: bool = False,
                  last_layer_dense: bool = False) -> list[tuple[str, nn.Module]]:
    """The prunable layers a pruner masks: all of them, optionally leaving the first/last dense.

    Raises:
        ConfigError: if nothing is left to prune.
    """
    layers = prunable_layers(model)
    if first_layer_dense:
        layers = layers[1:]
    if last_layer_dense:
        layers = layers[:-1]
    if not layers:
        raise ConfigError("no prunable layer is left to mask: the model has too few Conv/Linear layers for "
                          "first_layer_dense/last_layer_dense.")
    return layers


def attach(module: nn.Module, tensor_name: str, mask: MaskBase) -> None:
    """Register ``mask`` as a parametrization of ``module.<tensor_name>``.

    ``unsafe=True`` skips parametrize's consistency probe (a forward pass of the mask at
    registration); the masks preserve shape and dtype by construction.
    """
    parametrize.register_parametrization(module, tensor_name, mask, unsafe=True)


def attach_score_masks(model: nn.Module, layers: list[tuple[str, nn.Module]], sparsity: float,
                       scope: str = "layerwise", rank: str = "abs", include_bias: bool = False,
                       mask_class: type[ScoreMask] = ScoreMask) -> list[ScoreMask]:
    """Attach a :class:`ScoreMask` (or subclass) to the weight, and optionally the bias, of each layer.

    The scores start at zero; initialize them with :func:`ticketlab.init.init_scores`.

    Args:
        model: the model (only used for naming).
        layers: output of :func:`select_layers`.
        sparsity: fraction removed in [0, 1).
        scope: ``"layerwise"`` (one top-k per layer) or ``"global"`` (one over all layers).
        rank: ``"abs"`` or ``"raw"``.
        include_bias: also mask the biases. A bias is ranked jointly with its layer's weights (one
            top-k per layer over weights and bias, Fischer & Burkholz 2021), or with everything in
            global scope.
        mask_class: :class:`ScoreMask` (edge-popup) or :class:`BipropMask`.

    Returns:
        The score masks in layer order (weights first within a layer, then the bias).

    Raises:
        ConfigError: unknown ``scope``/``rank`` or bad ``sparsity``.
    """
    if scope not in ("layerwise", "global"):
        raise ConfigError(f"scope={scope!r} is not allowed; choose layerwise or global.")
    created: list[ScoreMask] = []
    for _, layer in layers:
        names = ["weight"] + (["bias"] if include_bias and getattr(layer, "bias", None) is not None else [])
        in_layer = []
        for tname in names:
            sm = mask_class(getattr(layer, tname).shape, sparsity, rank).to(getattr(layer, tname).device)
            attach(layer, tname, sm)
            in_layer.append(sm)
        if scope == "layerwise" and len(in_layer) > 1:
            JointTopK(in_layer, sparsity)
        created.extend(in_layer)
    if scope == "global":
        JointTopK(created, sparsity)
    return created


def score_groups(masks: list[ScoreMask]) -> list[ScoreMask | JointTopK]:
    """The independent top-k units among ``masks``: each joint group once, and ungrouped masks."""
    seen: dict[int, ScoreMask | JointTopK] = {}
    for m in masks:
        unit = m.group if m.group is not None else m
        seen.setdefault(id(unit), unit)
    return list(seen.values())


def attach_dense_masks(layers: list[tuple[str, nn.Module]], include_bias: bool = False) -> list[FixedMask]:
    """Attach an all-ones :class:`FixedMask` to the weight (and, with ``include_bias``, the bias) of each layer.

    The starting point of every method that chooses its mask after attaching it (pruning at
    initialization, IMP, dissipating gradients, K-starts, PHEW): the mask's values are then set in place.

    Args:
        layers: ``(name, layer)`` pairs, e.g. from :func:`select_layers`.
        include_bias: also mask the layers' biases (layers without one are skipped).

    Returns:
        The masks, in layer order (weight before bias).
    """
    out = []
    for _, layer in layers:
        for tname in ["weight"] + (["bias"] if include_bias and getattr(layer, "bias", None) is not None else []):
            fm = FixedMask(torch.ones_like(getattr(layer, tname), dtype=torch.bool))
            attach(layer, tname, fm)
            out.append(fm)
    return out


def attach_fixed_masks(model: nn.Module, masks: dict[str, Tensor]) -> list[FixedMask]:
    """Attach a :class:`FixedMask` to each named tensor.

    Args:
        model: the model.
        masks: ``{"<layer>.weight": bool tensor}``; names as in ``model.named_parameters()`` before
            any parametrization.

    Returns:
        The created masks, in the order of ``masks``.

    Raises:
        ConfigError: if a name is not a Conv/Linear weight/bias of ``model`` or a shape differs.
    """
    layers = dict(prunable_layers(model))
    out = []
    for name, m in masks.items():
        layer_name, _, tname = name.rpartition(".")
        layer = layers.get(layer_name)
        if layer is None or tname not in ("weight", "bias") or getattr(layer, tname, None) is None:
            raise ConfigError(f"mask entry {name!r} does not name a Conv/Linear weight or bias of the model; "
                              f"prunable layers: {', '.join(layers) or 'none'}.")
        if tuple(m.shape) != tuple(getattr(layer, tname).shape):
            raise ConfigError(f"mask entry {name!r} has shape {tuple(m.shape)} but the model's tensor has "
                              f"{tuple(getattr(layer, tname).shape)}.")
        fm = FixedMask(m).to(getattr(layer, tname).device)
        attach(layer, tname, fm)
        out.append(fm)
    return out


def masked_tensors(model: nn.Module) -> Iterator[MaskedTensor]:
    """Iterate over every masked tensor of ``model`` (any :class:`MaskBase` parametrization)."""
    for lname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, MaskBase):
                    yield MaskedTensor(f"{lname}.{tname}" if lname else tname, module, tname, p)


def mask_dict(model: nn.Module) -> dict[str, Tensor]:
    """Current masks as ``{"<layer>.<weight|bias>": bool tensor on CPU}`` (for saving/comparing)."""
    return {mt.name: mt.mask.current_mask().detach().bool().cpu() for mt in masked_tensors(model)}


@dataclass
class SparsityReport:
    """Measured sparsity of a model's prunable weights.

    Attributes:
        layers: ``{"<layer>.weight": {"numel", "kept", "density"}}`` for every prunable layer's
            weight (unmasked layers have density 1), plus masked biases.
        total: number of prunable weights (Conv/Linear weights; biases excluded).
        kept: how many of them the masks keep.
    """

    layers: dict[str, dict[str, float]]
    total: int
    kept: int

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept."""
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of prunable weights removed (1 - density)."""
        return 1.0 - self.density


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Measure per-layer densities and the overall sparsity from the masks in force.

    Prunable weights are the weights of every Conv/Linear layer; a layer without a mask counts as
    fully kept. Biases are reported per layer when masked but are not part of ``total``.
    """
    masks = {mt.name: mt.mask.current_mask() for mt in masked_tensors(model)}
    layers: dict[str, dict[str, float]] = {}
    total = kept = 0
    for lname, layer in prunable_layers(model):
        for tname in ("weight", "bias"):
            t = getattr(layer, tname, None)
            if t is None:
                continue
            name = f"{lname}.{tname}"
            if tname == "bias" and name not in masks:
                continue
            n = t.numel()
            k = int(masks[name].sum().item()) if name in masks else n
            layers[name] = {"numel": n, "kept": k, "density": k / n}
            if tname == "weight":
                total += n
                kept += k
    return SparsityReport(layers, total, kept)


def bake(model: nn.Module) -> nn.Module:
    """Remove every mask parametrization, leaving plain tensors equal to the masked ones.

    The result is an ordinary model (torchvision-compatible ``state_dict`` keys) whose removed
    weights are exact zeros. Works in place and returns ``model``.
    """
    for mt in list(masked_tensors(model)):
        if parametrize.is_parametrized(mt.module, mt.tensor_name):
            parametrize.remove_parametrizations(mt.module, mt.tensor_name, leave_parametrized=True)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` under the names of the unmasked model: each masked tensor's original
    values as ``<layer>.weight`` / ``<layer>.bias``, without the mask buffers (detached clones).

    Used to save and restore weights across runs whose masks differ (IMP's rewinding).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for mt in masked_tensors(model):
        state[mt.name] = mt.original.detach().clone()
    return state


@torch.no_grad()
def load_plain_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a :func:`plain_state_dict` into ``model`` (masked or not); the masks are left as they are.

    Raises:
        RuntimeError: a missing or unexpected name, or a shape mismatch.
    """
    masked = {mt.name: mt for mt in masked_tensors(model)}
    rest = {k: v for k, v in state.items() if k not in masked}
    for name, mt in masked.items():
        if name not in state:
            raise RuntimeError(f"the saved state has no {name}")
        mt.original.copy_(state[name])
    own = {k for k in model.state_dict() if ".parametrizations." not in k}
    missing, unexpected = own - set(rest), set(rest) - own
    if missing or unexpected:
        raise RuntimeError(f"saved state does not fit the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    current = model.state_dict()
    for k, v in rest.items():
        current[k].copy_(v)
