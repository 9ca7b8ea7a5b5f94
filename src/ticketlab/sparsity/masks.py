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

Which entries a mask keeps is :mod:`ticketlab.sparsity.selection` (exact top-k, kept counts); what the masks
of a model keep is :mod:`ticketlab.sparsity.report`; biprop's binarised mask lives beside biprop
(:mod:`ticketlab.pruners.biprop`). A score mask is recomputed only when its scores change (tracked
through the tensor version counter), so evaluation batches reuse the mask of the last optimizer
step, and each recomputation starts from the last threshold (:class:`ticketlab.sparsity.selection.BandSelector`).
On the CPU a score mask's step is one C++ call when the kernels are built
(:func:`ticketlab.sparsity.kernels.masked_weight`:
selection, the kept masked weight updated where the mask changes, and the straight-through node); the Python
path below takes the steps it declines (first selection, band misses, NaN, other devices and dtypes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ticketlab.errors import ConfigError
from ticketlab.sparsity import kernels
from ticketlab.sparsity.selection import BandSelector, num_kept
from ticketlab.sparsity.straight_through import straight_through

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def nonfinite_scores(model: nn.Module) -> bool:
    """Whether any :class:`ScoreMask` of ``model`` has a NaN or infinite score (one host synchronisation)."""
    checks = [torch.isfinite(mt.mask.scores).all() for mt in masked_tensors(model) if isinstance(mt.mask, ScoreMask)]
    return bool(checks) and not bool(torch.stack(checks).all())


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

    Attribute ``folded`` (default ``False``, not saved): the mask is already folded into the weight (the
    weight is 0 wherever the mask is), so the forward passes the weight through: the same values without the
    product, and gradients that reach the weight unmasked. A scoring loop that keeps that invariant may set
    it for its duration (SynFlow's rounds do).
    """

    folded = False

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())

    def forward(self, weight: Tensor) -> Tensor:
        """``weight * mask`` (``weight`` itself when ``folded``); shapes must match.

        Raises:
            RuntimeError: if the shapes do not broadcast (torch's own message).
        """
        if self.folded:
            return weight
        return weight * self.mask.to(weight.dtype)


class ScoreMask(MaskBase):
    """Trainable scores selecting the top-k entries of a frozen tensor (edge-popup).

    ``W_eff = W * TopK(key(S), k)`` where ``key(S) = |S|`` (edge-popup, biprop) or ``S``
    (IteRand), ``k = num_kept(n, sparsity)`` per tensor, or a share of one global top-k when the
    mask belongs to a :class:`JointTopK` group. Gradient: :func:`straight_through`.
    Source: Ramanujan et al. 2020, Algorithm 1; reference code allenai/hidden-networks
    ``utils/conv_type.py`` (``GetSubnet``, ``SubnetConv``).

    Args:
        shape: shape of the masked tensor (the scores have the same shape).
        sparsity: fraction removed in [0, 1) (ignored inside a global group).
        rank: ``"abs"`` (rank by ``|S|``) or ``"raw"`` (rank by ``S``).
        count: the kept-count rule ``count(n, sparsity) -> k`` (:data:`~ticketlab.sparsity.selection.KEPT_COUNTS`).

    Raises:
        ConfigError: for a sparsity outside [0, 1) or an unknown ``rank``.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...], sparsity: float, rank: str = "abs",
                 count: Callable[[int, float], int] = num_kept) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(shape))
        self.register_buffer("mask", torch.ones(shape))
        self.sparsity = float(sparsity)
        self.count = count
        self.k = count(self.scores.numel(), sparsity)
        self.group: JointTopK | None = None
        self._seen: tuple[int, int] | None = None  # (data_ptr, version) of the scores behind `mask`
        self.select = BandSelector()
        self.rank = rank

    @property
    def rank(self) -> str:
        """``"abs"`` (rank by ``|S|``) or ``"raw"`` (by ``S``); setting it makes the mask follow at the next use.

        Raises:
            ConfigError: (on setting) another value.
        """
        return self._rank

    @rank.setter
    def rank(self, value: str) -> None:
        if value not in ("abs", "raw"):
            raise ConfigError(f"rank={value!r} is not allowed; choose abs or raw.")
        self._rank = value
        self._seen = None
        self.select.reset()
        # the fused CPU step (selection, kept W * m and the straight-through node in one C++ call), or None
        self._fused = kernels.masked_weight(value == "abs")

    def set_sparsity(self, sparsity: float) -> None:
        """Change the sparsity (density annealing); the mask follows at the next use.

        Raises:
            ConfigError: sparsity outside [0, 1).
        """
        self.sparsity = float(sparsity)
        self.k = self.count(self.scores.numel(), sparsity)
        self._seen = None
        if self._fused is not None:
            self._fused.forget()
        self.select.reset()

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
            return self.mask
        if self._seen == self._stamp() or (self._fused is not None and self._fused.selected(self.scores, self.k)):
            return self.mask
        with torch.no_grad():
            if isinstance(self.select, BandSelector):
                self.select.fill(self.scores, self.k, self.rank == "abs", self.mask)
            else:
                self.mask.copy_(self.select(self.key(), self.k, self.rank == "abs"))
        torch.autograd.graph.increment_version(self.mask)  # the fused step's kept product is stale now
        self._seen = self._stamp()
        if self._fused is not None:
            self._fused.adopt(self.scores, self.k)
        return self.mask

    def forward(self, weight: Tensor) -> Tensor:
        """Masked weight ``W * m`` (shape of ``weight``) with the straight-through gradient.

        On the CPU the fused step takes it (:func:`ticketlab.sparsity.kernels.masked_weight`); the steps it declines
        (first selection, band misses, NaN, other devices, dtypes and layouts) take :meth:`current_mask` and
        :func:`straight_through`.
        """
        fused = self._fused
        if fused is not None and weight.is_cpu and self.group is None and type(self.select) is BandSelector:
            out = fused.forward(self.select.state, weight, self.scores, self.mask, self.k)
            if out is not None:
                return out
        mask = self.current_mask()
        return straight_through(weight, self.scores, mask.to(weight.dtype), self.rank == "abs")


class JointTopK:
    """One top-k over the keys of several :class:`ScoreMask` s.

    Used for the global scope (all prunable tensors ranked together) and for joint weight+bias
    ranking within a layer (Fischer & Burkholz 2021: biases compete with the weights for the
    layer's budget). Keeps ``count(N, sparsity)`` of the ``N`` entries of all members; the
    masks are recomputed once per change of any member's scores.
    Source: chrundle/biprop ``GetGlobalSubnet``; Synaptic-Flow ``_global_mask``;
    RelationalML/NonZeroBiases ``resnet_new.py`` (joint weight/bias scores).

    Args:
        members: the score masks to rank together (at least one).
        sparsity: fraction removed over all members, in [0, 1).
        count: the kept-count rule (default :func:`~ticketlab.sparsity.selection.num_kept`), applied to ``N``.
    """

    def __init__(self, members: list[ScoreMask], sparsity: float,
                 count: Callable[[int, float], int] = num_kept) -> None:
        self.members = members
        self.count = count
        self._seen: list[tuple[int, int]] | None = None
        self.select = BandSelector()
        self.set_sparsity(sparsity)
        for m in members:
            m.group = self

    def set_sparsity(self, sparsity: float) -> None:
        """Change the joint sparsity (density annealing)."""
        self.sparsity = float(sparsity)
        self.k = self.count(sum(m.scores.numel() for m in self.members), sparsity)
        self._seen = None
        self.select.reset()

    def refresh(self) -> None:
        """Recompute every member's mask if any member's scores changed."""
        stamps = [m._stamp() for m in self.members]
        if stamps == self._seen:
            return
        with torch.no_grad():
            ranks = {m.rank for m in self.members}
            if len(ranks) == 1:  # one rule for all: select on the raw scores, straight into one buffer
                scores = torch.cat([m.scores.detach().reshape(-1) for m in self.members])
                keep = torch.empty_like(scores)
                self.select.fill(scores, self.k, ranks == {"abs"}, keep)
            else:
                keys = torch.cat([m.key().reshape(-1) for m in self.members])
                keep = self.select(keys, self.k, ranks == {"abs"})
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
                       mask_class: type[ScoreMask] = ScoreMask,
                       count: Callable[[int, float], int] = num_kept) -> list[ScoreMask]:
    """Attach a :class:`ScoreMask` (or subclass) to the weight, and optionally the bias, of each layer.

    The scores start at zero; initialize them with :func:`ticketlab.init.weights.init_scores`.

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
        count: the kept-count rule of every top-k, a joint group's included.

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
            tensor = getattr(layer, tname)
            sm = mask_class(tensor.shape, sparsity, rank, count).to(tensor.device)
            if not tensor.is_contiguous() and tensor.dim() == 4 and tensor.is_contiguous(
                    memory_format=torch.channels_last):
                sm.to(memory_format=torch.channels_last)  # scores and mask in the weight's layout (the fused step)
            attach(layer, tname, sm)
            in_layer.append(sm)
        if scope == "layerwise" and len(in_layer) > 1:
            JointTopK(in_layer, sparsity, count)
        created.extend(in_layer)
    if scope == "global":
        JointTopK(created, sparsity, count)
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


@dataclass
class DenseMasks:
    """What :func:`attach_dense` attached, in one place.

    Attributes:
        layers: the masked ``(name, layer)`` pairs.
        masks: one all-ones :class:`FixedMask` per masked tensor (weight before bias, layer order).
        tensors: the stored tensor behind each mask (:func:`underlying`), same order and shapes.
    """

    layers: list[tuple[str, nn.Module]]
    masks: list[FixedMask]
    tensors: list[Tensor]


def attach_dense(model: nn.Module, first_layer_dense: bool = False, last_layer_dense: bool = False,
                 include_bias: bool = False, layers: list[tuple[str, nn.Module]] | None = None) -> DenseMasks:
    """Select the prunable layers, attach all-ones masks, and return layers, masks and underlying tensors.

    The one set-up of every method that fills its mask in after attaching it (pruning at
    initialization, IMP, dissipating gradients, K-starts, PHEW).

    Args:
        model: the model.
        first_layer_dense, last_layer_dense: leave the input / output layer unmasked (:func:`select_layers`).
        include_bias: also mask the layers' biases.
        layers: mask these ``(name, layer)`` pairs instead of selecting them.

    Returns:
        The :class:`DenseMasks`.

    Raises:
        ConfigError: nothing is left to mask.
    """
    layers = layers if layers is not None else select_layers(model, first_layer_dense, last_layer_dense)
    masks = attach_dense_masks(layers, include_bias)
    names = ["weight"] + (["bias"] if include_bias else [])
    tensors = [underlying(layer, t) for _, layer in layers for t in names if parametrize.is_parametrized(layer, t)]
    return DenseMasks(layers, masks, tensors)


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
