"""ticketlab.sparsity.selection: every selection path gives the mask of a plain sort (lowest index first among ties),
on random, tied and clamped keys, on every available device."""

from __future__ import annotations

import pytest
import torch

from ticketlab.errors import NonFiniteError
from ticketlab.sparsity.selection import BandSelector, global_topk, num_kept, topk_mask

from .conftest import DEVICES


def sort_mask(key: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: a stable descending sort, the first k entries (ties: lowest flat index first)."""
    flat = key.reshape(-1).cpu()
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[torch.sort(-flat, stable=True).indices[:max(0, min(k, flat.numel()))]] = True
    return out.view(key.shape)


def keys(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=gen)
    if kind == "tied":  # few distinct values: ties at every threshold
        return torch.round(x * 4) / 4
    if kind == "clamped":  # scores clamped at 0 (Fischer & Burkholz): a block of exact zeros
        return x.clamp(min=0)
    if kind == "abs":
        return x.abs()
    return x


@pytest.mark.devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "tied", "clamped", "abs"])
@pytest.mark.parametrize("n", [100, 9_000, 300_000])
def test_topk_mask_equals_a_plain_sort(device, kind, n):
    gen = torch.Generator().manual_seed(n)
    key = keys(kind, n, gen)
    for k in (0, 1, n // 3, n // 2, n - 1, n):
        got = topk_mask(key.to(device), k, nonnegative=kind in ("clamped", "abs")).cpu()
        assert torch.equal(got, sort_mask(key, k)), (kind, n, k)


def drifting(kind: str, gen: torch.Generator, select: BandSelector):
    """Training-like scores for a selector: small drifts each step (the band hits), a jump at step 30 (it
    misses), a new kept count at step 45 (``select`` is reset). Yields ``(step, scores, k)`` for 60 steps."""
    s = keys(kind, 50_000, gen)
    k = num_kept(s.numel(), 0.5)
    for step in range(60):
        if step == 30:
            s = s * 10 + 3  # a jump: the old band holds nothing
        if step == 45:
            k = num_kept(s.numel(), 0.9)
            select.reset()
        s = s + 1e-3 * torch.randn(s.shape, generator=gen)
        if kind == "clamped":
            s = s.clamp(min=0)
        yield step, s, k


@pytest.mark.devices
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "tied", "clamped"])
def test_band_selector_follows_training_like_updates_exactly(device, kind):
    """Scores that drift a little each step (the band hits), sometimes jump (it misses), change k."""
    select = BandSelector()
    for step, s, k in drifting(kind, torch.Generator().manual_seed(1), select):
        key = s.abs()
        assert torch.equal(select(key.to(device), k, nonnegative=True).cpu(), sort_mask(key, k)), step
    if device == "cpu":
        assert select.hits > 40 and select.misses >= 2  # the band answers most steps


def test_band_selector_refuses_nan():
    select = BandSelector()
    key = torch.rand(10_000)
    select(key, 5_000)
    key[::7] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        select(key, 5_000)


@pytest.mark.devices
@pytest.mark.parametrize("device", DEVICES)
def test_global_topk_equals_a_sort_of_the_concatenation(device):
    gen = torch.Generator().manual_seed(2)
    parts = [torch.round(torch.randn(shape, generator=gen) * 8) / 8 for shape in [(30, 20), (7,), (5, 4, 3, 3)]]
    cat = torch.cat([p.reshape(-1) for p in parts])
    for k in (1, 100, cat.numel() // 2, cat.numel()):
        got = global_topk([p.to(device) for p in parts], k)
        ref = sort_mask(cat, k).split([p.numel() for p in parts])
        assert all(torch.equal(g.cpu(), r.view_as(g)) for g, r in zip(got, ref, strict=True))
        assert [g.shape for g in got] == [p.shape for p in parts]
