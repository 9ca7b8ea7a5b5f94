"""Exact top-k selection: which entries of a score tensor a mask keeps.

Kept-count convention (pinned by the tests): a tensor of ``n`` entries at sparsity ``p`` keeps
``n - floor(p * n)`` entries (:func:`num_kept`) -- the convention of allenai/hidden-networks
(``utils/conv_type.py``), which zeroes the ``floor((1 - k) n)`` lowest scores. A global top-k
applies the same formula to the total count of all tensors (:func:`global_topk`). Ties are broken
deterministically (lower flat index wins), so the kept count is always exact. Two reference rules are
offered beside it (:data:`KEPT_COUNTS`): IteRand's percentile threshold and Synaptic-Flow's float count.

Ties among zero scores: when layers collapse (iterative SNIP, SynFlow), many scores can be exactly 0 at
the threshold. Synaptic-Flow removes every score ``<= threshold`` and so keeps fewer than its count;
the exact count keeps the lowest-index zero-scored entries, an arbitrary choice among equals, so the
pruning-at-initialization methods warn when it happens and say how many (:func:`zero_ties`).

Selection never sorts: :func:`topk_mask` finds the k-th largest value by selection
(:func:`kth_largest`: ``kthvalue``, after a radix pass on the CPU). :class:`BandSelector` makes a
repeated selection over slowly moving scores (edge-popup's every step) cheaper still: last step's
threshold is a good guess, so only the entries in a narrow band around it are selected among,
with a full selection when the band misses. Every path returns the same mask as a full sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from ticketlab.errors import ConfigError, NonFiniteError
from ticketlab.sparsity import kernels


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
    """Kept count of IteRand's percentile threshold: ``n - round(0.01 * float(100 p) * (n - 1))`` in floats.

    dchiji-ntt/iterand (``models/networks/sparse_modules.py``: ``GetSubnet`` calls ``percentile(scores,
    sparsity * 100)``, which takes the ``1 + round(.01 * float(q) * (n - 1))``-th smallest score as the
    threshold and keeps the scores at or above it); without ties that keeps this many. The product is
    evaluated as the reference evaluates it, in float64 with Python's ``round``: ``0.01 * 70.0`` is
    ``0.7000000000000001``, so a product that would be an exact half rounds up there. It differs from
    :func:`num_kept` by one in about a third of the ``(n, p)`` pairs.

    Raises:
        ConfigError: ``sparsity`` outside [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity={sparsity!r} must be in [0, 1) (fraction of weights removed).")
    return n - round(0.01 * float(sparsity * 100) * (n - 1))


def num_kept_float(n: int, sparsity: float) -> int:
    """Kept count of Synaptic-Flow's masks: ``n - int(sparsity * n)`` in float64.

    ganguli-lab/Synaptic-Flow ``Pruners/pruners.py`` (``_global_mask``, ``_local_mask``) removes the
    ``int((1.0 - density) * n)`` lowest scores, the product taken in floats (``pruner.kept_count=float``
    of the pruning-at-initialization methods; pass ``1.0 - density`` as that code does). It can keep one
    more than :func:`num_kept` where the product lands just below an integer.

    Raises:
        ConfigError: ``sparsity`` outside [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity={sparsity!r} must be in [0, 1) (fraction of weights removed).")
    return n - min(int(sparsity * n), n)


#: The kept-count rules by their config name (``pruner.kept_count``): ``floor`` (the convention),
#: ``percentile`` (IteRand's reference), ``float`` (Synaptic-Flow's reference).
KEPT_COUNTS = {"floor": num_kept, "percentile": num_kept_percentile, "float": num_kept_float}


def density_of(sparsity: float) -> float:
    """Density ``1 - sparsity`` computed on the decimal ``sparsity`` prints as, then rounded once.

    ``density_of(0.8) == 0.2`` where ``1 - 0.8 == 0.19999999999999996``; ``density_of(0.99) == 0.01``.
    The one derivation of a density from a configured sparsity (the summary's ``target_density``, the
    density-scaled initializations, the schedules of iterative pruning).
    """
    return float(1 - Fraction(repr(float(sparsity))))


def sparsity_of(density: float) -> float:
    """Sparsity ``1 - density`` on the decimal ``density`` prints as (the inverse of :func:`density_of`, and
    the same arithmetic: ``sparsity_of(0.05) == 0.95``)."""
    return density_of(density)


def zero_ties(scores: list[Tensor], masks: list[Tensor]) -> tuple[int, int]:
    """Whether a selection broke a tie among zero scores: ``(tied, kept)``.

    Args:
        scores: the scores the selection ranked, any shapes.
        masks: the selection's bool masks, shapes of ``scores``.

    Returns:
        ``(entries scored exactly 0, how many of them were kept)`` when some but not all zero-scored
        entries were kept (the lowest-index rule chose among equals); ``(0, 0)`` otherwise.
    """
    zeros = kept = 0
    for s, m in zip(scores, masks, strict=True):
        z = s.detach() == 0
        zeros += int(torch.count_nonzero(z))
        kept += int(torch.count_nonzero(z & m))
    return (zeros, kept) if 0 < kept < zeros else (0, 0)


def kth_largest(flat: Tensor, k: int, nonnegative: bool = False) -> Tensor:
    """The ``k``-th largest entry of a 1-D tensor, by selection (never a full sort).

    On CUDA this is the smallest of ``topk(k)`` (a multi-block radix select; ``kthvalue`` on one long
    row runs in a single thread block). On the CPU, for non-float32 or small tensors, it is
    ``kthvalue``; for larger ones one radix pass is done first: float32 bit patterns are mapped to
    integers of the same order, a ``bincount`` over their top 16 bits finds the bin holding the k-th
    largest value, and ``kthvalue`` runs on that bin only.

    Args:
        flat: 1-D tensor of ``n`` entries.
        k: rank from the top, ``1 <= k <= n``.
        nonnegative: promise that no entry is negative (e.g. ``|S|``), which skips the mapping of
            negative floats to ordered integers. A wrong promise gives a wrong answer.

    Returns:
        0-dim tensor on ``flat``'s device.
    """
    n = flat.numel()
    if flat.device.type != "cpu":
        # CUDA's kthvalue on one long row runs in a single thread block (4.9 ms for 1M entries on an H100);
        # topk's multi-block radix select takes ~0.15 ms at any size up to millions
        if k > n // 2:  # the same value as the (n - k + 1)-th smallest: fewer entries to gather
            return torch.topk(flat, n - k + 1, largest=False, sorted=False).values.max()
        return torch.topk(flat, k, sorted=False).values.min()
    if flat.dtype != torch.float32 or n < 8192:
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
    return _keep_from(flat, kth_largest(flat, k, nonnegative), k).view_as(key)


def _keep_from(flat: Tensor, v: Tensor, k: int) -> Tensor:
    """Entries above the k-th largest value ``v`` plus the lowest-index entries equal to it, ``k`` in all
    (1-D bool, shape of ``flat``).

    Raises:
        NonFiniteError: on the CPU, when NaN entries leave fewer than ``k`` (not checked on CUDA: no host sync).
    """
    cpu = flat.device.type == "cpu"
    if cpu:
        keep = flat >= v
        if int(torch.count_nonzero(keep)) == k:  # no tie at the threshold: the common case
            return keep
    above = flat > v
    ties = flat == v
    keep = above | (ties & (ties.cumsum(0) <= k - above.sum()))
    if cpu and int(torch.count_nonzero(keep)) != k:
        raise NonFiniteError("scores", f"a top-{k} of {flat.numel()} entries found only "
                                       f"{int(torch.count_nonzero(keep))}: {int(torch.isnan(flat).sum())} of them "
                                       "are NaN, which has no rank")
    return keep


def global_topk(keys: list[Tensor], k: int, nonnegative: bool = False) -> list[Tensor]:
    """One exact top-``k`` over several tensors, as if they were concatenated (global pruning).

    Used by every global method alike: :class:`ticketlab.sparsity.masks.JointTopK` (edge-popup's global scope),
    pruning-at-init allocation and IMP's global magnitude pruning.

    Args:
        keys: ranking keys, any shapes, floating point.
        k: entries kept in all; clipped to ``[0, N]``.
        nonnegative: no key has a negative entry (see :func:`kth_largest`).

    Returns:
        Bool masks of the keys' shapes with exactly ``min(max(k, 0), N)`` True entries in all.

    Raises:
        NonFiniteError: on the CPU, NaN entries make an exact top-k impossible.
    """
    flat = torch.cat([t.detach().reshape(-1) for t in keys])
    keep = topk_mask(flat, k, nonnegative)
    return [part.view_as(t) for part, t in zip(keep.split([t.numel() for t in keys]), keys, strict=True)]


def _nan_error(flat: Tensor, k: int) -> NonFiniteError:
    return NonFiniteError("scores", f"a top-{k} of {flat.numel()} entries is impossible: "
                                    f"{int(torch.isnan(flat).sum())} of them are NaN, which has no rank")


@dataclass
class BandState:
    """The band of a :class:`BandSelector` (the torch twin of the C++ ``BandState`` of :mod:`.kernels`).

    Attributes:
        t: centre (the last threshold), NaN before the first selection.
        w: half-width.
        hits, misses: calls answered inside the band, and full selections.
    """

    t: float = math.nan
    w: float = 0.0
    hits: int = 0
    misses: int = 0


def _state_field(name: str, kind: type, doc: str) -> property:
    """A :class:`BandSelector` attribute kept in its ``state`` (the C++ object when the kernels are built)."""
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, kind(v)),
                    doc=doc)


class BandSelector:
    """Exact top-k of a key that changes a little between calls (a trained score tensor).

    Keeps the last threshold ``t`` (the k-th largest value) and a band half-width ``w``. A call counts
    the entries above ``t + w`` and selects the k-th largest among the few entries inside
    ``[t - w, t + w]`` only; when the band does not hold the k-th entry (the scores moved further), it
    falls back to :func:`topk_mask` and widens the band. The result is always the exact top-k with
    lowest-index tie breaking, the same mask as :func:`topk_mask` and as a full sort. CPU only (on
    CUDA :func:`topk_mask` is already one kernel without host synchronisation).

    Attributes:
        hits, misses: calls answered inside the band, and full selections (for benchmarks).
    """

    def __init__(self) -> None:
        ext = kernels.native()
        # the band lives in `state`: with the kernels built, a C++ object the fused forward of a score mask
        # (ticketlab.sparsity.kernels.masked_weight) updates too, so either path can take the next step
        self.state = ext.BandState() if ext is not None else BandState()

    @property
    def t(self) -> float | None:
        """Centre of the band (last threshold), ``None`` before the first selection."""
        return None if math.isnan(self.state.t) else self.state.t

    @t.setter
    def t(self, value: float | None) -> None:
        self.state.t = math.nan if value is None else float(value)

    w = _state_field("w", float, "Half-width of the band.")
    hits = _state_field("hits", int, "Calls answered inside the band.")
    misses = _state_field("misses", int, "Full selections (first call, band missed).")

    def reset(self) -> None:
        """Forget the last threshold (e.g. after the kept count changes a lot)."""
        self.t = None

    def __call__(self, key: Tensor, k: int, nonnegative: bool = False) -> Tensor:
        """Bool mask of the ``k`` largest entries of ``key`` (shape of ``key``).

        Raises:
            NonFiniteError: NaN entries make an exact top-k impossible.
        """
        flat = key.detach().reshape(-1)
        n = flat.numel()
        if k <= 0 or k >= n or flat.device.type != "cpu" or n < 4096:
            return topk_mask(key, k, nonnegative)
        if self.t is not None and self.w > 0:
            n_above = int(torch.count_nonzero(flat > self.t + self.w))
            if n_above < k:
                band = flat[torch.sub(flat, self.t).abs_() <= self.w]
                need = k - n_above
                if need <= band.numel():
                    v = band.kthvalue(band.numel() - need + 1).values
                    keep = _keep_from(flat, v, k)
                    self._update(float(v), band.numel(), n)
                    self.hits += 1
                    return keep.view_as(key)
        return self._full(flat, k, nonnegative).view_as(key)

    def fill(self, scores: Tensor, k: int, absval: bool, out: Tensor) -> None:
        """Write the 0/1 mask of the ``k`` largest keys (``|scores|`` if ``absval``, else ``scores``) into ``out``.

        The same mask as ``self(key, k)``. On the CPU the fused kernels (:mod:`ticketlab.sparsity.kernels`) do it in
        one pass over the scores instead of about eight.

        Args:
            scores: any shape, ``n`` entries.
            k: entries kept.
            absval: rank by ``|scores|``.
            out: float tensor of ``n`` entries (the mask buffer), written in place.

        Raises:
            NonFiniteError: NaN scores make an exact top-k impossible.
        """
        s = scores.detach()
        n = s.numel()
        if 0 < k < n:
            if n < 4096:
                r = kernels.full_select(s, absval, k, out)
                if r is not None and r[0] != 3:
                    if r[0] == 2:
                        raise _nan_error(s, k)
                    return
            elif self.t is not None and self.w > 0:
                r = kernels.band_select(s, absval, self.t - self.w, self.t + self.w, k, out)
                if r is not None and r[0] != 3:
                    status, _, in_band, v = r
                    if status == 0:
                        self._update(v, in_band, n)
                        self.hits += 1
                        return
                    if status == 2:
                        raise _nan_error(s, k)
                    key = s.abs() if absval else s
                    out.copy_(self._full(key.reshape(-1), k, absval).view_as(out))
                    return
        key = s.abs() if absval else s
        out.copy_(self(key, k, absval).view_as(out))

    def _full(self, flat: Tensor, k: int, nonnegative: bool) -> Tensor:
        """Full selection (first call, or the band missed); re-centres the band on the new threshold."""
        self.misses += 1
        v = kth_largest(flat, k, nonnegative)
        keep = _keep_from(flat, v, k)
        t = float(v)
        # first call or a miss: start from a band holding about 1/64 of the entries around the threshold
        spread = float(flat.std()) if self.t is None else max(self.w * 4, abs(t - self.t) * 2)
        self.w = max(spread * (1 / 64 if self.t is None else 1.0), abs(t) * 1e-6, 1e-30)
        self.t = t
        return keep

    def _update(self, t: float, in_band: int, n: int) -> None:
        """Track the threshold; keep the band at about 1/2048 to 1/256 of the entries."""
        moved = abs(t - self.t)
        self.t = t
        if in_band > n // 256:
            self.w *= 0.5
        elif in_band < n // 2048:
            self.w *= 2.0
        self.w = max(self.w, 2.0 * moved, abs(t) * 1e-6, 1e-30)


__all__ = ["KEPT_COUNTS", "BandSelector", "density_of", "global_topk", "kth_largest", "num_kept", "num_kept_float",
           "num_kept_percentile", "sparsity_of", "topk_mask", "zero_ties"]
