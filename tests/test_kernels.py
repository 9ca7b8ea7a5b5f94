"""ticketlab.sparsity.kernels: the fused CPU kernels give bit-identical results to the torch formulation they replace
(selection, masked weight, straight-through score gradient, SynFlow's rounds), and TicketLab falls back to
the torch ops when they cannot be built or are turned off."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ticketlab.errors import ConfigError, NonFiniteError
from ticketlab.pruners.score_based import shrink_global
from ticketlab.runner.build import setup
from ticketlab.sparsity import kernels
from ticketlab.sparsity.masks import ScoreMask, attach, masked_tensors
from ticketlab.sparsity.selection import BandSelector, num_kept, topk_mask
from ticketlab.sparsity.straight_through import score_gradient
from ticketlab.training.loop import train_step

from .conftest import IN_CI, ROOT
from .test_selection import drifting, keys, sort_mask


@pytest.fixture
def ext():
    """The built kernels (mandatory in CI, where a compiler and ninja are installed)."""
    e = kernels.native()
    if e is None and os.environ.get("TICKETLAB_KERNELS", "native") == "native":
        kernels._tried = False  # another worker may have been building: wait for it this time
        e = kernels.native(wait=True)
    if e is None:
        if IN_CI:
            pytest.fail("the fused CPU kernels did not build in CI (see the warning above)")
        pytest.skip("the fused CPU kernels are not built here")
    return e


@pytest.mark.parametrize("kind", ["random", "tied", "clamped"])
@pytest.mark.parametrize("absval", [True, False])
def test_band_select_is_the_exact_top_k_and_writes_the_masked_weight(ext, kind, absval):
    gen = torch.Generator().manual_seed(3)
    s = keys(kind, 40_000, gen)
    w = torch.randn(s.shape, generator=gen)
    key = s.abs() if absval else s
    for k in (1, 7_000, 20_000, 39_999):
        v = float(key.kthvalue(key.numel() - k + 1).values)
        for lo, hi in ((v - 0.05, v + 0.05), (v, v), (v - 1.0, v + 1e-6)):
            mask, product = torch.full_like(s, 7.0), torch.full_like(s, 7.0)  # poisoned: every entry must be written
            status, _, _, got_v = kernels.band_select(s, absval, lo, hi, k, mask, w, product)
            assert status == 0 and got_v == v
            assert torch.equal(mask, sort_mask(key, k).float()), (k, lo, hi)
            assert torch.equal(product, w * mask)


@pytest.mark.parametrize("incremental", [False, True])
def test_band_select_on_channels_last_tensors_keeps_the_flat_order_of_ties(isa, incremental):
    """Channels-last scores, mask and weight are walked in memory order; ties at the threshold are still kept
    lowest (row-major) flat index first, the mask of the contiguous tensor."""
    gen = torch.Generator().manual_seed(10)
    shape = (64, 32, 3, 3)
    s = keys("tied", 64 * 32 * 9, gen).view(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    key = s.abs()
    for k in (1_000, 9_216, 15_000):
        v = float(key.reshape(-1).kthvalue(key.numel() - k + 1).values)
        mask, product = torch.empty_like(s), torch.empty_like(s)
        if incremental:  # start from another selection, as the step before would have left it
            assert kernels.band_select(s, True, -1.0, float(key.max()) + 1, k // 2, mask, w, product)[0] == 0
        status = kernels.band_select(s, True, v - 0.05, v + 0.05, k, mask, w, product, incremental=incremental)[0]
        assert status == 0 and mask.stride() == s.stride()
        assert torch.equal(mask, sort_mask(key, k).float()), k
        assert torch.equal(product, w * mask)


def test_band_select_reports_a_miss_nan_and_unfit_tensors(ext):
    s = torch.randn(10_000)
    out = torch.empty_like(s)
    v = float(s.abs().kthvalue(5_001).values)
    assert kernels.band_select(s, True, v + 0.1, v + 0.2, 5_000, out)[0] == 1  # the k-th largest is below the band
    assert kernels.band_select(s, True, v - 0.2, v - 0.1, 5_000, out)[0] == 1  # above it
    bad = s.clone()
    bad[::13] = float("nan")
    assert kernels.band_select(bad, True, v - 0.1, v + 0.1, 5_000, out)[0] == 2
    assert kernels.band_select(s.double(), True, v - 0.1, v + 0.1, 5_000, out)[0] == 3
    assert kernels.band_select(s[::2], True, v - 0.1, v + 0.1, 2_000, out[:5_000])[0] == 3  # not contiguous
    assert kernels.band_select(s, True, v - 0.1, v + 0.1, 10_000, out)[0] == 3  # k must be below n


@pytest.mark.parametrize("kind", ["random", "tied", "clamped"])
def test_full_select_is_the_exact_top_k(ext, kind):
    gen = torch.Generator().manual_seed(4)
    s = keys(kind, 3_000, gen)
    for absval in (True, False):
        key = s.abs() if absval else s
        for k in (1, 999, 1_500, 3_000):
            out = torch.full_like(s, 7.0)
            status, _ = kernels.full_select(s, absval, k, out)
            assert status == 0 and torch.equal(out, sort_mask(key, k).float())
    s[5] = float("nan")
    assert kernels.full_select(s, True, 10, torch.empty_like(s))[0] == 2


@pytest.mark.parametrize("signed", [True, False])
def test_score_grad_equals_the_torch_formula(ext, signed):
    gen = torch.Generator().manual_seed(5)
    g, w, s = (torch.randn(300, 784, generator=gen) for _ in range(3))
    s[::9] = 0.0  # sign(0) = 0
    ref = g * w * torch.sign(s) if signed else g * w
    assert torch.equal(kernels.score_grad(g, w, s, signed), ref)
    assert torch.equal(kernels.score_grad(g.t(), w.t(), s.t(), signed), ref.t())  # dense, other strides
    assert kernels.score_grad(g[:, ::2], w[:, ::2], s[:, ::2], signed) is None  # gaps: the torch ops take it
    assert torch.equal(score_gradient(g[:, ::2], w[:, ::2], s[:, ::2], signed), ref[:, ::2])


@pytest.fixture(params=["avx512", "avx2", "default"])
def isa(request, ext):
    """Each implementation of the incremental band pass this CPU can run (the best one is restored after)."""
    if not ext.use_isa(request.param):
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    ext.use_isa("best")


@pytest.mark.parametrize("kind", ["random", "tied", "clamped"])
def test_fused_step_follows_training_like_updates_exactly(isa, kind):
    """The fused step (:func:`kernels.masked_weight`, updating the mask and the kept masked weight in place from
    the last step's whenever the band holds) with the Python path taking the steps it declines, as
    :class:`ScoreMask` does, over drifting, jumping and re-sized selections: always a plain sort's mask, and
    W * m."""
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(50_000, generator=gen)
    select, fused = BandSelector(), kernels.masked_weight(True)
    mask = torch.empty_like(w)
    for step, s, k in drifting(kind, gen, select):
        product = fused.forward(select.state, w, s, mask, k)
        if product is None:  # declined (no band yet, a miss): the Python path selects, the fused step adopts
            select.fill(s, k, True, mask)
            fused.adopt(s, k)
            product = fused.forward(select.state, w, s, mask, k)  # the mask stands: only W * m is redone
        assert torch.equal(mask, sort_mask(s.abs(), k).float()), step
        assert torch.equal(product, w * mask), step
    assert select.hits > 40 and select.misses >= 2


@pytest.mark.parametrize("kind", ["random", "tied", "clamped"])
@pytest.mark.parametrize("absval", [True, False])
def test_incremental_band_select_writes_only_what_changes(isa, kind, absval):
    gen = torch.Generator().manual_seed(9)
    s = keys(kind, 40_003, gen)  # not a multiple of the vector width: the tail runs too
    w = torch.randn(s.shape, generator=gen)
    k = 20_000
    key = s.abs() if absval else s
    v = float(key.kthvalue(key.numel() - k + 1).values)
    mask, product = torch.empty_like(s), torch.empty_like(s)
    assert kernels.band_select(s, absval, v - 0.05, v + 0.05, k, mask, w, product)[0] == 0
    s2 = s + 0.02 * torch.randn(s.shape, generator=gen)
    if kind == "clamped":
        s2 = s2.clamp(min=0)
    key2 = s2.abs() if absval else s2
    ref = sort_mask(key2, k).float()
    v2 = float(key2.kthvalue(key2.numel() - k + 1).values)
    lo, hi = v2 - 0.01, v2 + 0.01
    touched = (ref != mask) | ((key2 >= lo) & (key2 <= hi))  # what the pass may write: changes, the band
    assert 0 < int(touched.sum()) < s.numel() // 4
    product.masked_fill_(~touched, 7.0)  # poisoned where nothing may be written
    status, above, in_band, got_v = kernels.band_select(s2, absval, lo, hi, k, mask, w, product, incremental=True)
    assert status == 0 and got_v == v2 and above == int((key2 > hi).sum())
    assert in_band == int(((key2 >= lo) & (key2 <= hi)).sum())
    assert torch.equal(mask, ref)
    assert torch.equal(product[touched], (w * ref)[touched]) and bool((product[~touched] == 7.0).all())
    bad = s2.clone()
    bad[::11] = float("nan")
    assert kernels.band_select(bad, absval, lo, hi, k, mask, w, product, incremental=True)[0] == 2


def test_band_selector_fill_refuses_nan(ext):
    select, mask = BandSelector(), torch.empty(10_000)
    s = torch.randn(10_000)
    select.fill(s, 5_000, True, mask)
    s[::7] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        select.fill(s, 5_000, True, mask)


def _masked_linear(shape: tuple[int, int], fused: bool, seed: int = 0) -> torch.nn.Linear:
    """A bias-free Linear with a frozen random weight and a ScoreMask at sparsity 0.5, on the fused C++ step
    (``fused``) or on the Python path."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(shape[1], shape[0], bias=False)
    lin.weight.requires_grad_(False)
    sm = ScoreMask(lin.weight.shape, 0.5)
    with torch.no_grad():
        sm.scores.normal_()
    if not fused:
        sm._fused = None
    attach(lin, "weight", sm)
    return lin


@pytest.mark.parametrize("shape", [(300, 784), (30, 100)])  # the band path, and small tensors (nth_element)
def test_the_fused_step_equals_the_python_path(ext, shape):
    """Outputs, masks and score gradients of the fused step are bit-identical to the Python path's, through
    weight changes (IteRand, recycling) and a mask loaded without a score change (which stands)."""
    a, b = _masked_linear(shape, True), _masked_linear(shape, False)
    ma, mb = a.parametrizations.weight[0], b.parametrizations.weight[0]
    opts = [torch.optim.SGD([m.scores], lr=0.5, momentum=0.9) for m in (ma, mb)]
    gen = torch.Generator().manual_seed(1)
    for step in range(40):
        x = torch.randn(16, shape[1], generator=gen)
        if step == 15:  # the frozen weight is redrawn in place
            fresh = torch.randn(shape, generator=gen)
            with torch.no_grad():
                for lin in (a, b):
                    lin.parametrizations.weight.original.copy_(fresh)
        if step == 25:  # a mask loaded while the scores stay: it is used as it is
            a(x), b(x)
            edited = ma.mask.clone()
            edited.view(-1)[:50] = 1 - edited.view(-1)[:50]
            for m in (ma, mb):
                m.load_state_dict({"mask": edited}, strict=False)
            assert torch.equal(a(x), x @ (a.parametrizations.weight.original * edited).t())
        outs = [lin(x) for lin in (a, b)]
        assert torch.equal(outs[0], outs[1]), step
        assert torch.equal(ma.mask, mb.mask), step
        for o, opt in zip(outs, opts, strict=True):
            opt.zero_grad()
            o.square().sum().backward()
            opt.step()
        assert torch.equal(ma.scores.grad, mb.scores.grad), step
    assert torch.equal(ma.current_mask(), mb.current_mask())
    if shape[0] * shape[1] >= 4096:
        assert ma.select.hits > 30  # the fused step took most steps inside the band


def test_the_fused_step_on_a_channels_last_conv_equals_the_python_path(ext):
    convs = []
    for fused in (True, False):
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(32, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        conv.weight.requires_grad_(False)
        sm = ScoreMask(conv.weight.shape, 0.5)
        with torch.no_grad():
            sm.scores.copy_(torch.round(torch.randn(sm.scores.shape) * 4) / 4)  # ties at the threshold
        sm.to(memory_format=torch.channels_last)
        if not fused:
            sm._fused = None
        attach(conv, "weight", sm)
        convs.append(conv)
    masks_ = [c.parametrizations.weight[0] for c in convs]
    opts = [torch.optim.SGD([m.scores], lr=0.05, momentum=0.9) for m in masks_]
    gen = torch.Generator().manual_seed(2)
    for step in range(12):
        x = torch.randn(4, 32, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
        outs = [c(x) for c in convs]
        assert torch.equal(outs[0], outs[1]) and torch.equal(masks_[0].mask, masks_[1].mask), step
        for o, opt in zip(outs, opts, strict=True):
            opt.zero_grad()
            o.square().sum().backward()
            opt.step()
        assert torch.equal(masks_[0].scores.grad, masks_[1].scores.grad), step
    assert masks_[0].select.hits > 5  # the fused step took the steps after the first


def test_a_mask_set_after_the_first_selection_stands_until_the_scores_change(ext):
    """The first selection is the Python path's; the fused step then keeps a mask edited in between, as the
    Python path does, and selects again once the scores move."""
    lin = _masked_linear((300, 784), True)
    sm = lin.parametrizations.weight[0]
    x = torch.randn(4, 784)
    lin(x)
    edited = 1 - sm.mask
    sm.load_state_dict({"mask": edited}, strict=False)
    weight = lin.parametrizations.weight.original
    assert torch.equal(lin(x), x @ (weight * edited).t())
    with torch.no_grad():
        sm.scores.add_(1e-4)
    lin(x)
    assert torch.equal(sm.mask, sort_mask(sm.scores.detach().abs(), sm.k).float())


def test_a_graph_that_saved_the_masked_weight_fails_after_the_scores_change(ext):
    lin = _masked_linear((300, 784), True)
    sm = lin.parametrizations.weight[0]
    x = torch.randn(4, 784, requires_grad=True)
    lin(x)  # first selection (Python path), then the fused step takes over
    with torch.no_grad():
        sm.scores.add_(1e-4)
    old = lin(x).sum()  # its backward to x needs this step's masked weight
    with torch.no_grad():
        sm.scores.mul_(-1.0)
    lin(x)  # the next step rewrites the kept masked weight in place
    with pytest.raises(RuntimeError, match="modified inplace|modified by an inplace operation"):
        torch.autograd.grad(old, x)


def test_the_score_gradient_leaves_gradients_others_hold_untouched(ext):
    """The fused backward writes the score gradient over the incoming gradient only when nothing else holds
    it: a hook that keeps it sees dL/dW_eff, and the scores still get dL/dW_eff * W * sign(S)."""
    lin = _masked_linear((300, 784), True)
    sm = lin.parametrizations.weight[0]
    x = torch.randn(8, 784)
    lin(x)
    w_eff = lin.weight
    kept = []
    w_eff.register_hook(kept.append)
    (x @ w_eff.t()).square().sum().backward()
    plain = w_eff.detach().clone().requires_grad_(True)
    (x @ plain.t()).square().sum().backward()
    weight = lin.parametrizations.weight.original
    assert torch.equal(kept[0], plain.grad)
    assert torch.equal(sm.scores.grad, plain.grad * weight * torch.sign(sm.scores.detach()))
    sm.scores.grad = None
    (x @ lin.weight.t()).square().sum().backward()  # no hook: the gradient is reused in place, same values
    assert torch.equal(sm.scores.grad, plain.grad * weight * torch.sign(sm.scores.detach()))


def test_a_copied_fused_mask_starts_afresh_and_stays_apart(ext):
    lin = _masked_linear((300, 784), True)
    sm = lin.parametrizations.weight[0]
    x = torch.randn(4, 784)
    lin(x)
    with torch.no_grad():
        sm.scores.add_(1e-4)
    before = lin(x)
    twin = copy.deepcopy(lin)
    assert torch.equal(twin(x), before)
    with torch.no_grad():
        twin.parametrizations.weight[0].scores.mul_(-1.0).add_(0.3)
    twin(x)
    assert torch.equal(lin(x), before) and not torch.equal(twin.parametrizations.weight[0].mask, sm.mask)


def _shrink_case(seed: int, tied: bool):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(64, 3, 3, 3), (10, 640), (10,)]
    ws = [torch.randn(sh, generator=gen).abs() for sh in shapes]
    gs = [torch.randn(sh, generator=gen) for sh in shapes]
    if tied:
        gs = [torch.round(g * 2) / 2 + 0.5 for g in gs]
        ws = [torch.ones_like(w) for w in ws]
    kept = [torch.randperm(w.numel(), generator=gen)[: w.numel() // 2].sort().values for w in ws]
    return ws, gs, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tied", [False, True])
def test_shrink_kept_equals_shrink_global(ext, tied, dtype):
    ws, gs, kept = _shrink_case(7, tied)
    ws, gs = [w.to(dtype) for w in ws], [g.to(dtype) for g in gs]
    n_kept = sum(len(i) for i in kept)
    for total in (1, n_kept // 3, n_kept // 2, n_kept):
        masks = [torch.zeros(w.numel()) for w in ws]
        for m, i in zip(masks, kept, strict=True):
            m[i] = 1.0
        ref = shrink_global([(g.reshape(-1)[i] * w.reshape(-1)[i]).abs().float()
                             for w, g, i in zip(ws, gs, kept, strict=True)], kept, total)
        folded = [w * m.view_as(w).to(dtype) for w, m in zip(ws, masks, strict=True)]  # the masks folded in
        status, new = kernels.shrink_kept(folded, gs, [i.clone() for i in kept], masks, total,
                                          zero_weights=True)
        if ref is None:  # the torch path declines (zero scores at the threshold): so must the kernel
            assert status == 1
            continue
        assert status == 0
        for (ref_kept, _), got, m, w, f in zip(ref, new, masks, ws, folded, strict=True):
            assert torch.equal(got, ref_kept)
            expect = torch.zeros_like(m)
            expect[ref_kept] = 1.0
            assert torch.equal(m, expect)
            assert torch.equal(f, w * m.view_as(w).to(dtype))  # zeroed exactly where the mask was


def test_shrink_kept_declines_zero_thresholds_and_nan(ext):
    ws, gs, kept = _shrink_case(8, False)
    gs[0].reshape(-1)[kept[0]] = 0.0  # a third of the kept entries score 0
    masks = [torch.ones(w.numel()) for w in ws]
    n_kept = sum(len(i) for i in kept)
    assert kernels.shrink_kept(ws, gs, kept, masks, n_kept - 1)[0] == 1
    assert kernels.shrink_kept(ws, gs, kept, masks, n_kept + 1)[0] == 1
    gs[1].reshape(-1)[kept[1][0]] = float("nan")
    assert kernels.shrink_kept(ws, gs, kept, masks, 10)[0] == 2
    assert all(torch.equal(m, torch.ones_like(m)) for m in masks)  # nothing written when declining


def _train_edge_popup(cfg_factory, tmp_path, *extra):
    job = setup(cfg_factory("model=mlp", "model.widths=[96,64]", "dataset=digits", "trainer.device=cpu", *extra),
                run_dir=tmp_path)
    model = job.trainer.model
    opt = torch.optim.SGD(job.pruner.trainable_parameters(model), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        x = torch.randn(32, *job.trainer.data.input_shape, generator=gen)
        y = torch.randint(0, 10, (32,), generator=gen)
        train_step(model, (x, y), torch.nn.CrossEntropyLoss(), opt, contextlib.nullcontext)
    return {mt.name: (mt.mask.current_mask().clone(), mt.mask.scores.detach().clone()) for mt in masked_tensors(model)}


@pytest.mark.parametrize("pruner", [[], ["pruner=iterand", "pruner.period=1000"], ["pruner.scope=global"]])
def test_edge_popup_training_is_the_same_with_and_without_kernels(ext, cfg_factory, tmp_path, monkeypatch, pruner):
    native = _train_edge_popup(cfg_factory, tmp_path / "a", *pruner)
    monkeypatch.setattr(kernels, "_ext", None)
    monkeypatch.setattr(kernels, "_tried", True)
    plain = _train_edge_popup(cfg_factory, tmp_path / "b", *pruner)
    assert native.keys() == plain.keys()
    for name, (mask, scores) in native.items():
        assert torch.equal(mask, plain[name][0]) and torch.equal(scores, plain[name][1]), name


def test_synflow_masks_are_the_same_with_and_without_kernels(ext, cfg_factory, tmp_path, monkeypatch):
    over = ["model=conv2", "model.width_mult=0.25", "pruner=synflow", "pruner.sparsity=0.98", "pruner.iterations=20",
            "init=kaiming_normal", "trainer.device=cpu"]
    a = setup(cfg_factory(*over), run_dir=tmp_path / "a")
    monkeypatch.setattr(kernels, "_ext", None)
    monkeypatch.setattr(kernels, "_tried", True)
    b = setup(cfg_factory(*over), run_dir=tmp_path / "b")
    ma = {mt.name: mt.mask.mask for mt in masked_tensors(a.trainer.model)}
    mb = {mt.name: mt.mask.mask for mt in masked_tensors(b.trainer.model)}
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    kept = sum(int(m.sum()) for m in ma.values())
    assert kept == num_kept(sum(m.numel() for m in ma.values()), 0.98)


def test_a_failed_build_falls_back_to_torch_with_a_warning(monkeypatch, caplog, tmp_path):
    import torch.utils.cpp_extension as cpp

    def broken(*a, **k):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setenv("TICKETLAB_KERNELS_DIR", str(tmp_path))  # nothing built there
    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setattr(kernels, "_ext", None)
    monkeypatch.setattr(kernels, "_tried", False)
    stale = kernels.kernels_dir() / "build" / "lock"  # torch's baton, as a killed build leaves it
    stale.parent.mkdir(parents=True)
    stale.touch()
    with caplog.at_level("WARNING"):
        assert kernels.native() is None
    assert f"removing a stale build lock {stale}" in caplog.text and not stale.exists()
    assert "building the fused CPU mask kernels" in caplog.text  # announced before it starts
    assert "Ninja is required" in caplog.text and "TICKETLAB_KERNELS=torch" in caplog.text
    s, mask = torch.randn(20_000), torch.empty(20_000)
    select = BandSelector()
    for _ in range(3):  # first call and band calls, all on the torch ops
        s = s + 1e-3
        select.fill(s, 10_000, True, mask)
        assert torch.equal(mask, topk_mask(s.abs(), 10_000).float())


def test_a_build_in_progress_elsewhere_is_named_and_not_waited_for(tmp_path):
    """Another process holds the build lock: a run says who and uses the torch ops at once."""
    env = {**os.environ, "TICKETLAB_KERNELS_DIR": str(tmp_path)}
    code = "from ticketlab.sparsity import kernels; print(kernels.kernels_dir())"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    folder = r.stdout.strip()
    Path(folder).mkdir(parents=True)
    with open(Path(folder) / "build.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("pid 4242 on builder")
        lock.flush()
        r = subprocess.run([sys.executable, "-c", "from ticketlab.sparsity import kernels; "
                            "import sys; sys.exit(kernels.native() is not None)"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"being built by pid 4242 on builder in {folder}" in r.stderr and "torch ops" in r.stderr
    assert not list(Path(folder).glob("*.so"))


def test_a_built_library_is_imported_without_the_build_machinery(ext):
    """Once built for this source and torch, another process (any checkout) imports it: no ninja, no rebuild."""
    code = ("import sys; from ticketlab.sparsity import kernels; assert kernels.native() is not None; "
            "print('torch.utils.cpp_extension' in sys.modules, kernels.native().__file__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded, path = r.stdout.split()
    assert loaded == "False" and Path(path).parent == kernels.kernels_dir()
    assert "building" not in r.stderr


@pytest.mark.slow
def test_without_a_compiler_a_run_falls_back_with_one_warning(tmp_path):
    """PATH without a C++ compiler (ninja kept): train.py completes on the torch ops with a single warning."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    (bin_dir / "ninja").symlink_to(ninja)
    env = {**os.environ, "PATH": str(bin_dir), "TICKETLAB_KERNELS_DIR": str(tmp_path / "kernels"),
           "CXX": "", "CC": ""}
    env.pop("TICKETLAB_KERNELS", None)
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer.epochs=1", "logger=none",
                        "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert out.count("fused CPU mask kernels unavailable") == 1 and "no C++ compiler" in out, out[-3000:]
    assert "Traceback" not in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_kernels_setting_is_checked(monkeypatch):
    monkeypatch.setenv("TICKETLAB_KERNELS", "fast")
    monkeypatch.setattr(kernels, "_tried", False)
    with pytest.raises(ConfigError, match="TICKETLAB_KERNELS='fast'.*native.*torch"):
        kernels.native()
    monkeypatch.setenv("TICKETLAB_KERNELS", "torch")
    monkeypatch.setattr(kernels, "_tried", False)
    assert kernels.native() is None
