"""Pruning at initialization: score formulas by hand, schedules, allocation, structure metrics."""

from __future__ import annotations

import json
import math
import re
import shutil
from fractions import Fraction

import pytest
import torch
from torch import nn

from ticketlab.config import InitConfig
from ticketlab.data.loaders import DataBundle
from ticketlab.errors import ConfigError
from ticketlab.pruners import PruneContext, build_pruner
from ticketlab.pruners.from_file import FromFileConfig
from ticketlab.pruners.grasp import GraspConfig
from ticketlab.pruners.magnitude import MagnitudeConfig
from ticketlab.pruners.random import RandomConfig
from ticketlab.pruners.score_based import allocate
from ticketlab.pruners.snip import SnipConfig
from ticketlab.pruners.synflow import SynflowConfig
from ticketlab.runner.run import run
from ticketlab.sparsity.masks import FixedMask, attach, attach_fixed_masks, masked_tensors
from ticketlab.sparsity.report import mask_dict, sparsity_report
from ticketlab.sparsity.selection import num_kept
from ticketlab.sparsity.structure import mask_structure

CPU = torch.device("cpu")
W1 = torch.tensor([[0.5, -1.0, 0.2], [-0.3, 0.8, 1.5], [1.2, 0.1, -0.7], [-0.4, -0.9, 0.6]], dtype=torch.float64)
W2 = torch.tensor([[1.0, -0.5, 0.3, 0.7], [-0.2, 0.9, -1.1, 0.4]], dtype=torch.float64)
X = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.5, 2.0], [-1.0, 0.3, 0.8]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1])


def tiny() -> nn.Module:
    """The 2-layer MLP 3 -> 4 -> 2 with fixed weights (float64)."""
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[2].weight.copy_(W2)
    return net


def ctx_with(batches, input_shape=(3,)) -> PruneContext:
    bundle = DataBundle("fixed", batches, batches, input_shape, 2, 3, 3)
    return PruneContext(0, InitConfig(name="kaiming_normal"), CPU, bundle, 1)


def scores_of(cfg, net=None, batches=((X, Y),)):
    net = net if net is not None else tiny()
    pruner = build_pruner(cfg)
    for layer in (net[0], net[2]):
        attach(layer, "weight", FixedMask(torch.ones_like(layer.weight, dtype=torch.bool)))
    weights = [net[0].parametrizations.weight.original, net[2].parametrizations.weight.original]
    return pruner.score(net, weights, ctx_with(list(batches))), net


def manual_grads(w1, w2, x, y, temperature=1.0):
    """dL/dW1, dL/dW2 of mean CE(relu(x W1^T) W2^T / T) written out by hand."""
    z = x @ w1.T
    h = z.clamp(min=0)
    logits = h @ w2.T / temperature
    p = logits.softmax(dim=1)
    d_logits = (p - nn.functional.one_hot(y, 2).double()) / len(y) / temperature
    g2 = d_logits.T @ h
    d_h = d_logits @ w2
    g1 = (d_h * (z > 0)).T @ x
    return g1, g2


def test_magnitude_scores():
    (s1, s2), _ = scores_of(MagnitudeConfig())
    assert torch.equal(s1, W1.abs()) and torch.equal(s2, W2.abs())


def test_snip_scores_by_hand():
    (s1, s2), _ = scores_of(SnipConfig(data_batches=2), batches=[(X, Y), (X[:2], Y[:2])])
    g1a, g2a = manual_grads(W1, W2, X, Y)
    g1b, g2b = manual_grads(W1, W2, X[:2], Y[:2])
    assert torch.allclose(s1, ((g1a + g1b) * W1).abs())  # gradients summed over batches
    assert torch.allclose(s2, ((g2a + g2b) * W2).abs())


def test_snip_scores_the_mask_gradient_so_pruned_weights_keep_scores():
    """Iterative SNIP (Synaptic-Flow): |dL/dm| at the current mask, |dL/dW_eff * W|, non-zero where m = 0."""
    net = tiny()
    for layer in (net[0], net[2]):
        attach(layer, "weight", FixedMask(torch.ones_like(layer.weight, dtype=torch.bool)))
    m1 = torch.rand(W1.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    net[0].parametrizations.weight[0].mask.copy_(m1)
    weights = [net[0].parametrizations.weight.original, net[2].parametrizations.weight.original]
    s1, s2 = build_pruner(SnipConfig(data_batches=1)).score(net, weights, ctx_with([(X, Y)]))
    g1, g2 = manual_grads(W1 * m1, W2, X, Y)  # gradients with respect to the effective weights
    assert torch.allclose(s1, (g1 * W1).abs()) and torch.allclose(s2, (g2 * W2).abs())
    assert (s1[~m1] > 0).any()  # pruned weights keep a score and may come back
    assert not net[0].parametrizations.weight[0].mask.requires_grad  # left as found


def test_grasp_scores_by_finite_differences():
    t = 200.0
    (s1, s2), _ = scores_of(GraspConfig(data_batches=1))
    g1, g2 = manual_grads(W1, W2, X, Y, t)
    eps = 1e-4  # H g by central differences of the hand-written gradient
    p1, p2 = manual_grads(W1 + eps * g1, W2 + eps * g2, X, Y, t)
    m1, m2 = manual_grads(W1 - eps * g1, W2 - eps * g2, X, Y, t)
    hg1, hg2 = (p1 - m1) / (2 * eps), (p2 - m2) / (2 * eps)
    assert torch.allclose(s1, W1 * hg1, rtol=1e-4, atol=1e-12)
    assert torch.allclose(s2, W2 * hg2, rtol=1e-4, atol=1e-12)
    assert (s1 < 0).any() or (s2 < 0).any()  # signed: the paper's rule, not |W Hg|
    (a1, _), _ = scores_of(GraspConfig(data_batches=1, sign="abs"))
    assert torch.allclose(a1, s1.abs())


def test_synflow_scores_closed_form_and_conservation():
    (s1, s2), net = scores_of(SynflowConfig(double=True))
    # all-ones input, |W|: R = 1^T |W2| |W1| 1; dR/dW1[i,j] = sum_k |W2[k,i]|; dR/dW2[k,i] = sum_j |W1[i,j]|
    assert torch.allclose(s1.double(), W1.abs() * W2.abs().sum(0)[:, None])
    assert torch.allclose(s2.double(), W2.abs() * W1.abs().sum(1)[None, :])
    r = (W2.abs() @ W1.abs()).sum()
    assert float(s1.sum()) == pytest.approx(float(r)) and float(s2.sum()) == pytest.approx(float(r))
    assert torch.equal(net[0].parametrizations.weight.original, W1)  # signs restored


@pytest.mark.parametrize("double", [False, True])
def test_synflow_folded_masks_score_like_the_masked_product(double):
    """Scoring through the weights with the masks folded in gives the scores of ``W * m`` bit for bit, also
    when a mask grows back between rounds; weights and masks' products are as before afterwards."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(16, 12), (16,), (5, 16), (5,)]
    first = [torch.rand(sh, generator=gen) > 0.5 for sh in shapes]
    patterns = [first, [m | (torch.rand(m.shape, generator=gen) > 0.5) for m in first],  # some entries grow back
                [m & (torch.rand(m.shape, generator=gen) > 0.3) for m in first]]
    ctx = ctx_with([], input_shape=(12,))
    results = []
    for fold in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5)).eval()
        with torch.no_grad():
            net[1].weight.uniform_(-1, 1)
            net[1].running_mean.uniform_(-1, 1)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        pruner = build_pruner(SynflowConfig(double=double, prune_bias=True))
        pruner.fold_masks = fold
        pruner.attach(net, ctx)
        pruner.begin_scoring(net, ctx)
        assert all(fm.folded == fold for fm in pruner.masks)
        try:
            out = []
            for pattern in patterns:
                for fm, m in zip(pruner.masks, pattern, strict=True):
                    fm.mask.copy_(m)
                out.append(pruner.score(net, pruner.weights, ctx))
        finally:
            pruner.end_scoring(net)
        results.append(out)
        assert not any(fm.folded for fm in pruner.masks)
        after = {k.replace(".parametrizations.weight.original", ".weight")
                  .replace(".parametrizations.bias.original", ".bias"): v for k, v in net.state_dict().items()
                 if not k.endswith(".mask")}
        assert all(torch.equal(after[k], v) for k, v in before.items())  # values, signs and dtype restored
        x = torch.randn(3, 12, generator=gen)
        m0, w0 = pruner.masks[0].mask, before["0.weight"]
        assert torch.allclose(net[0](x), x @ (w0 * m0).T + before["0.bias"] * pruner.masks[1].mask)  # W * m again
    for pattern, folded, plain in zip(patterns, results[1], results[0], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(folded, plain, strict=True))
        assert all((s[~m] == 0).all() for s, m in zip(folded, pattern, strict=True))
        assert all((s[m] > 0).any() for s, m in zip(folded, pattern, strict=True))


def test_synflow_ignores_the_data():
    (a1, a2), _ = scores_of(SynflowConfig(), batches=[(X, Y)])
    (b1, b2), _ = scores_of(SynflowConfig(), batches=[(torch.randn(3, 3).double(), Y)])
    assert torch.equal(a1, b1) and torch.equal(a2, b2)


def chain(scale_last=1e-3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 50, bias=False), nn.ReLU(), nn.Linear(50, 50, bias=False), nn.ReLU(),
                        nn.Linear(50, 10, bias=False))
    with torch.no_grad():
        net[4].weight.mul_(scale_last)  # tiny classifier weights: global magnitude removes them all
    return net


def prune(cfg, net):
    pruner = build_pruner(cfg)
    bundle = DataBundle("x", [], [], (20,), 10, 1, 1)
    pruner.prepare(net, PruneContext(0, InitConfig(name="kaiming_normal"), CPU, bundle, 1))
    return sparsity_report(net)


def test_synflow_iterations_avoid_the_layer_collapse_of_magnitude():
    mag = prune(MagnitudeConfig(sparsity=0.99), chain())
    assert mag.layers["4.weight"]["kept"] == 0  # one-shot magnitude empties the classifier
    syn = prune(SynflowConfig(sparsity=0.99, iterations=100), chain())
    assert all(v["kept"] > 0 for v in syn.layers.values())
    assert syn.kept == mag.kept  # same exact budget


def test_exponential_schedule_reaches_exact_target():
    rep = prune(SynflowConfig(sparsity=0.95, iterations=7), chain(1.0))
    assert rep.kept == sum(v["numel"] for v in rep.layers.values()) - math.floor(0.95 * rep.total)


def test_allocate_global_layerwise_and_guard():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(100, generator=g), torch.rand(10, generator=g) * 1e-3]  # second layer always loses
    glob = allocate(scores, 0.9, "global")  # sparsity 0.9: 11 of 110 kept
    assert sum(int(m.sum()) for m in glob) == 11 and int(glob[1].sum()) == 0
    guarded = allocate(scores, 0.9, "global", min_per_layer=3)
    assert sum(int(m.sum()) for m in guarded) == 11 and int(guarded[1].sum()) == 3
    assert torch.equal(guarded[1], scores[1] >= scores[1].topk(3).values[-1])
    per_layer = allocate(scores, 0.9, "layerwise")
    assert [int(m.sum()) for m in per_layer] == [10, 1]
    with pytest.raises(ConfigError, match="min_weights_per_layer=6 reserves 12"):
        allocate(scores, 0.9, "global", min_per_layer=6)


def _synaptic_flow_kept(n_total: int, density: float, rounds: int, schedule: str) -> list[int]:
    """ganguli-lab/Synaptic-Flow ``prune.py`` 16-20 (round ``epoch`` keeps density ``D ** ((epoch + 1) / epochs)``
    or ``1.0 - (1.0 - D) * ((epoch + 1) / epochs)``) and ``Pruners/pruners.py`` 22 (``_global_mask`` removes the
    ``int((1.0 - sparse) * N)`` lowest scores): the kept count of every round, without ties."""
    out = []
    for epoch in range(rounds):
        sparse = density ** ((epoch + 1) / rounds) if schedule == "exponential" else \
            1.0 - (1.0 - density) * ((epoch + 1) / rounds)
        out.append(n_total - int((1.0 - sparse) * n_total))
    return out


def _round_counts(monkeypatch, cfg) -> tuple[list[int], int]:
    """The kept count of every score -> mask round of ``cfg`` on :func:`chain` (4,000 weights), and the final one."""
    from ticketlab.pruners import score_based

    counts = []

    def spy(*args, **kwargs):
        masks = allocate(*args, **kwargs)
        counts.append(sum(int(m.sum()) for m in masks))
        return masks

    monkeypatch.setattr(score_based, "allocate", spy)
    return counts, prune(cfg, chain(1.0)).kept


@pytest.mark.parametrize("sparsity, rounds, schedule", [(0.95, 3, "linear"), (0.99, 3, "linear"), (0.995, 10, "linear"),
                                                        (0.99, 2, "exponential"), (0.99, 2, "linear")])
def test_iterative_rounds_end_on_the_target_and_meet_synaptic_flow_at_round_densities(monkeypatch, sparsity, rounds,
                                                                                      schedule):
    """The last round keeps exactly ``num_kept(N, pruner.sparsity)`` (before: 201 of 4,000 at 0.95 over 3 linear
    rounds, 41 at 0.99, 21 at 0.995 over 10, one more than the target); a round whose Synaptic-Flow density
    prints as a round number (0.1 at 0.99 over 2 exponential rounds: 400, where the old target 0.010000000000000009
    kept 401) has that density, counted exactly (0.67 of 4,000: 2,680, where Synaptic-Flow's float count keeps
    2,681); ``kept_count=float`` keeps Synaptic-Flow's count in every round."""
    density = round(1 - sparsity, 6)
    counts, final = _round_counts(monkeypatch, RandomConfig(sparsity=sparsity, iterations=rounds, schedule=schedule))
    assert counts[-1] == final == num_kept(4000, sparsity)
    reference = _synaptic_flow_kept(4000, density, rounds, schedule)
    for k, ours in enumerate(counts, start=1):
        d = density ** (k / rounds) if schedule == "exponential" else 1.0 - (1.0 - density) * (k / rounds)
        if len(repr(d)) <= 6:  # a round number in Synaptic-Flow's own floats: the same density, counted exactly
            assert ours == 4000 - math.floor((1 - Fraction(repr(d))) * 4000), (k, d)
    counts, final = _round_counts(monkeypatch, RandomConfig(sparsity=sparsity, iterations=rounds, schedule=schedule,
                                                            kept_count="float"))
    assert counts == reference[:-1] + [4000 - int((1.0 - density) * 4000)]
    if schedule == "exponential" and rounds == 2:
        assert counts[0] == 400  # density 0.01 ** 0.5 = 0.1 of 4,000


def test_a_selection_that_breaks_a_tie_among_zero_scores_says_so(caplog):
    """Layer collapse leaves many scores exactly 0 at the threshold; Synaptic-Flow removes every score <= the
    threshold (``Pruners/pruners.py`` 22-29: ``torch.where(score <= threshold, zero, one)``), TicketLab keeps the
    exact count by lowest index and warns, naming how many tied and were kept."""
    net = chain(1.0)
    with torch.no_grad():
        net[0].weight[:, :4] = 0.0  # 200 zero magnitudes
    pruner = build_pruner(MagnitudeConfig(sparsity=0.025))  # keeps 3,900 of 4,000: 100 of the 200 zeros
    bundle = DataBundle("x", [], [], (20,), 10, 1, 1)
    with caplog.at_level("WARNING", logger="ticketlab.pruners.score_based"):
        pruner.prepare(net, PruneContext(0, InitConfig(name="kaiming_normal"), CPU, bundle, 1))
    assert pruner.summary()["zero_score_ties"] == [{"round": 1, "tied_at_zero": 200, "kept": 100}]
    assert "200 weights score exactly 0 at the threshold and 100 of them are kept" in caplog.text
    clean = build_pruner(MagnitudeConfig(sparsity=0.5))
    clean.prepare(chain(1.0), PruneContext(0, InitConfig(name="kaiming_normal"), CPU, bundle, 1))
    assert "zero_score_ties" not in clean.summary()


def test_random_layerwise_density_and_seed():
    a, b = chain(1.0), chain(1.0)
    rep = prune(RandomConfig(sparsity=0.8, scope="layerwise"), a)
    assert all(v["density"] == pytest.approx(0.2, abs=0.01) for v in rep.layers.values())
    prune(RandomConfig(sparsity=0.8, scope="layerwise"), b)
    assert all(torch.equal(x, y) for x, y in zip(mask_dict(a).values(), mask_dict(b).values(), strict=True))


def test_compression_key_is_synflow_convention():
    assert SynflowConfig(compression=2.0).sparsity == pytest.approx(0.99)
    assert RandomConfig(compression=0.0).sparsity == 0.0


def test_data_dependent_scores_need_batches():
    with pytest.raises(ConfigError, match=r"pruner=snip scores weights with training data but pruner.data_batches=0"):
        build_pruner(SnipConfig(data_batches=0))


def test_scoring_does_not_change_the_training_order(cfg_factory, tmp_path):
    from ticketlab.runner.build import setup

    plain = setup(cfg_factory("pruner=magnitude", "init=kaiming_normal"), run_dir=tmp_path / "a")
    snip = setup(cfg_factory("pruner=snip", "pruner.data_batches=3", "init=kaiming_normal"), run_dir=tmp_path / "b")
    xa, _ = next(iter(plain.trainer.data.train))
    xb, _ = next(iter(snip.trainer.data.train))
    assert torch.equal(xa, xb)


def test_pai_trains_kept_weights_only(cfg_factory, tmp_path):
    s = run(cfg_factory("pruner=snip", "init=kaiming_normal", "pruner.sparsity=0.8", "optimizer.lr=0.05",
                        "trainer.keep_checkpoint=true"), run_dir=tmp_path)
    masks = torch.load(tmp_path / "masks.pt", weights_only=False)["masks"]
    assert s["sparsity"] == pytest.approx(0.8, abs=1e-4) and s["test_acc"] > 0.5
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)["model"]
    for name in masks:
        layer = name.rsplit(".", 1)[0]
        assert f"{layer}.parametrizations.weight.original" in ckpt  # weights trained under a fixed mask
    assert "effective_sparsity" in s and s["effective_sparsity"] >= s["sparsity"] - 1e-9


# --------------------------------------------------------------------------- structure metrics
def test_effective_sparsity_and_paths_by_hand():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    attach_fixed_masks(net, {"1.weight": torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool),
                             "3.weight": torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    st = mask_structure(net, (1, 1, 3))
    # paths x0->u0->o0 and x1->u0->o0; the kept edge x2->u1 leads nowhere
    assert st.log_paths == pytest.approx(math.log(2))
    assert st.effective_density == pytest.approx(3 / 10) and st.disconnected_fraction == pytest.approx(1 / 4)
    assert st.layers["1"]["active_width"] == 1 and st.layers["3"]["active_width"] == 1
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched
    assert sparsity_report(net).kept == 4


def test_path_count_of_a_dense_conv_net():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * 2 * 2, 3, bias=False))
    st = mask_structure(net, (1, 4, 4))
    # paths: output (3) x flattened unit (8) x pool window (4 pixels) x 3x3 taps inside the 4x4 image
    taps = torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), padding=1)
    expected = 3 * 2 * float(taps.sum())  # each of the 2 channels: sum over all pixels of in-image taps
    assert st.log_paths == pytest.approx(math.log(expected))
    assert st.effective_density == 1.0


def test_structure_of_a_strong_ticket_mask(cfg_factory, tmp_path):
    s = run(cfg_factory("pruner=biprop", "pruner.sparsity=0.9"), run_dir=tmp_path)
    assert 0.9 <= s["effective_sparsity"] <= 1.0 and math.isfinite(s["log_paths"])
    assert set(s["structure"]) == {"net.1", "net.3", "net.5"}


# --------------------------------------------------------------------------- from_file
def test_from_file_applies_a_saved_mask_and_checks_names(cfg_factory, tmp_path):
    run(cfg_factory("pruner=synflow", "init=kaiming_normal", "pruner.sparsity=0.95", "pruner.iterations=10"),
        run_dir=tmp_path / "src")
    saved = torch.load(tmp_path / "src" / "masks.pt", weights_only=False)["masks"]
    s = run(cfg_factory("pruner=from_file", f"pruner.path={tmp_path / 'src'}", "init=kaiming_normal"),
            run_dir=tmp_path / "dst")
    assert s["sparsity"] == pytest.approx(0.95, abs=1e-4)
    assert all(torch.equal(saved[k], v) for k, v in torch.load(tmp_path / "dst" / "masks.pt",
                                                                 weights_only=False)["masks"].items())
    with pytest.raises(ConfigError, match="does not name a Conv/Linear weight|has shape"):
        run(cfg_factory("pruner=from_file", f"pruner.path={tmp_path / 'src'}", "model.widths=[128,128]"),
            run_dir=tmp_path / "bad")
    with pytest.raises(ConfigError, match="no masks.pt"):
        build_pruner(FromFileConfig(path=str(tmp_path / "nothing"))).load()
    assert list(masked_tensors(nn.Linear(2, 2))) == []


# --------------------------------------------------------------------------- PHEW
def phew_model(name="conv4", shape=(3, 32, 32)):
    from ticketlab.config import ModelConfig
    from ticketlab.init.weights import init_weights
    from ticketlab.models import build_model

    m = build_model(ModelConfig(name=name, widths=[300, 100]), shape, 10)
    init_weights(m, InitConfig(name="kaiming_normal"), 0)
    return m


@pytest.mark.parametrize("name,shape,kernel_conserved", [("lenet300_100", (1, 28, 28), False),
                                                         ("conv4", (3, 32, 32), False),
                                                         ("conv4", (3, 32, 32), True)])
def test_phew_density_paths_and_reproducibility(name, shape, kernel_conserved):
    from ticketlab.pruners.phew import phew_masks
    from ticketlab.sparsity.masks import prunable_layers

    model = phew_model(name, shape)
    weights = [layer.weight for _, layer in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    masks, walks = phew_masks(weights, 0.05, seed=3, kernel_conserved=kernel_conserved)
    kept = sum(int(m.sum()) for m in masks)
    one_walk = len(weights) * (9 if kernel_conserved else 1)  # at most one edge (or kernel) per layer
    assert int(0.05 * total) <= kept <= int(0.05 * total) + one_walk
    assert all(int(m.sum()) > 0 for m in masks)  # no layer collapse
    again, walks2 = phew_masks(weights, 0.05, seed=3, kernel_conserved=kernel_conserved)
    assert walks == walks2 and all(torch.equal(a, b) for a, b in zip(masks, again, strict=True))
    attach_fixed_masks(model, {f"{n}.weight": m for (n, _), m in zip(prunable_layers(model), masks, strict=True)})
    st = mask_structure(model, shape)
    assert st.disconnected_fraction == 0.0  # every kept weight lies on an input-output path
    assert st.effective_sparsity == pytest.approx(1 - kept / total)


def test_phew_steps_follow_weight_magnitudes():
    from ticketlab.pruners.phew import _Layer, _transitions, _walks, chain_route

    w = torch.tensor([[1.0, 0.0], [3.0, 2.0], [6.0, 0.5]])  # 3 outputs x 2 inputs
    fwd, bwd = _transitions(w, "magnitude")
    layer = _Layer(w, fwd, bwd, 1)
    route = chain_route([w])
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    (idx,) = _walks([layer], route, torch.zeros(n, dtype=torch.long), True, gen)  # from input unit 0
    freq = torch.bincount(idx // 2, minlength=3).double() / n  # chosen output unit
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64), atol=0.01)
    (idx,) = _walks([layer], route, torch.full((n,), 2, dtype=torch.long), False, gen)  # back from output 2
    freq = torch.bincount(idx % 2, minlength=2).double() / n
    assert torch.allclose(freq, torch.tensor([6 / 6.5, 0.5 / 6.5], dtype=torch.float64), atol=0.01)


def test_phew_nested_masks_contain_the_sparser_one():
    from ticketlab.pruners.phew import phew_masks
    from ticketlab.sparsity.masks import prunable_layers

    weights = [layer.weight for _, layer in prunable_layers(phew_model("lenet300_100", (1, 28, 28)))]
    sparse, _ = phew_masks(weights, 0.02, seed=0)
    dense, _ = phew_masks(weights, 0.1, seed=0, start=sparse)
    assert all(torch.equal(s & d, s) for s, d in zip(sparse, dense, strict=True))


@pytest.mark.parametrize("shortcuts", ["faithful", "clean"])
def test_phew_on_resnets(shortcuts):
    from ticketlab.config import ModelConfig
    from ticketlab.init.weights import init_weights
    from ticketlab.models import build_model
    from ticketlab.pruners.phew import model_route, phew_masks
    from ticketlab.sparsity.masks import prunable_layers

    model = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 10)
    init_weights(model, InitConfig(name="kaiming_normal"), 0)
    layers = prunable_layers(model)
    weights = [layer.weight for _, layer in layers]
    route = model_route(model, shortcuts)
    assert len(route.fwd_jumps) == 2 and len(route.bwd_jumps) == 2  # two 1x1 downsampling shortcuts
    masks, _ = phew_masks(weights, 0.05, seed=0, route=route)
    total = sum(w.numel() for w in weights)
    kept = sum(int(m.sum()) for m in masks)
    assert int(0.05 * total) <= kept <= int(0.05 * total) + len(weights)
    assert all(int(m.sum()) > 0 for m in masks)  # shortcuts included: walks take them half the time
    if shortcuts == "clean":  # topologically exact: every kept weight is on an input-output path
        attach_fixed_masks(model, {f"{n}.weight": m for (n, _), m in zip(layers, masks, strict=True)})
        model.eval()
        assert mask_structure(model, (3, 32, 32)).disconnected_fraction == 0.0


def test_phew_rejects_other_residual_networks():
    from torchvision.models import resnet50

    from ticketlab.pruners.phew import model_route

    with pytest.raises(ConfigError, match="PHEW walks feed-forward chains and residual networks built from"):
        model_route(resnet50(num_classes=10))


@pytest.mark.parametrize("reinit", ["none", "kaiming", "liu", "evci"])
def test_phew_runs_and_trains(cfg_factory, tmp_path, reinit):
    s = run(cfg_factory("pruner=phew", "init=kaiming_normal", f"pruner.reinit={reinit}", "optimizer.lr=0.05"),
            run_dir=tmp_path)
    assert s["status"] == "completed" and s["disconnected_fraction"] == 0.0
    assert abs(s["sparsity"] - 0.9) < 1e-3 and s["phew_walks"] > 0


# --------------------------------------------------------------------------- IMP
def imp_run(cfg_factory, run_dir, *extra):
    return run(cfg_factory("pruner=imp", "pruner.levels=3", "init=kaiming_normal", "optimizer.lr=0.05", *extra),
               run_dir=run_dir)


def test_imp_levels_density_and_exact_rewind(cfg_factory, tmp_path):
    from ticketlab.sparsity.selection import num_kept as nk

    s = imp_run(cfg_factory, tmp_path)
    total = s["params_total"]
    expected, kept = [], total
    for _ in range(4):
        expected.append(kept)
        kept = nk(kept, 0.2)
    assert [lv["params_remaining"] for lv in s["stages"]] == expected  # 0.8^L with the kept-count convention
    assert s["density"] == pytest.approx(0.8 ** 3, abs=1e-4) and s["stages_total"] == 4
    assert [lv["stage"] for lv in s["stages"]] == ["level_00", "level_01", "level_02", "level_03"]
    rewind = torch.load(tmp_path / "rewind.pt", weights_only=False)
    from ticketlab.runner.build import setup
    from ticketlab.runner.stages import StageContext

    stage = setup(cfg_factory("pruner=imp", "pruner.levels=3", "init=kaiming_normal"), run_dir=tmp_path / "probe",
                  stage=StageContext(2, "level_02", tmp_path, tmp_path / "level_01"))
    for mt in masked_tensors(stage.trainer.model):  # rewound weights are the saved ones, bit for bit
        assert torch.equal(mt.original, rewind[mt.name])
    prev_mask = torch.load(tmp_path / "level_01" / "next_mask.pt", weights_only=False)
    assert all(torch.equal(v, mask_dict(stage.trainer.model)[k]) for k, v in prev_mask.items())


def test_imp_skips_completed_levels(cfg_factory, tmp_path):
    imp_run(cfg_factory, tmp_path)
    stamps = {p.name: (p / "summary.json").stat().st_mtime_ns for p in tmp_path.glob("level_*")}
    (tmp_path / "level_03" / "summary.json").unlink()  # as if killed during the last level
    (tmp_path / "summary.json").unlink()
    s = imp_run(cfg_factory, tmp_path)
    after = {p.name: (p / "summary.json").stat().st_mtime_ns for p in tmp_path.glob("level_*")}
    assert all(after[k] == stamps[k] for k in ("level_00", "level_01", "level_02"))
    assert s["stages"][-1]["status"] == "completed" and s["status"] == "completed"


def test_imp_late_rewinding_saves_step_k(cfg_factory, tmp_path):
    imp_run(cfg_factory, tmp_path, "pruner.rewind_step=5", "pruner.levels=1", "trainer.keep_checkpoint=true")
    rewind = torch.load(tmp_path / "rewind.pt", weights_only=False)
    init = torch.load(tmp_path / "level_00" / "last.ckpt", weights_only=False)["model"]
    name = next(k for k in rewind if k.endswith(".weight"))
    assert not torch.equal(rewind[name], init[name.replace(".weight", ".parametrizations.weight.original")])


def test_imp_target_sparsity_sets_levels():
    from ticketlab.pruners.imp import ImpConfig

    assert ImpConfig(sparsity=0.9).n_levels == 11  # 0.8^10 = 0.107 > 0.1 >= 0.8^11
    assert ImpConfig(sparsity=0.98).n_levels == 18
    assert ImpConfig(sparsity=0.2).n_levels == 1


# --------------------------------------------------------------------------- K-starts / dissipating gradients
def test_dissipating_removes_the_least_moved_weights(cfg_factory, tmp_path):
    """Pruning after epochs 1 and 2 (epochs_to_prune=2) is applied when epochs 2 and 3 begin: every epoch trains
    and is evaluated with one mask (epoch 1 dense, epoch 2 at 0.6, epoch 3 at the target 0.2)."""
    from ticketlab.runner.build import setup

    from .epoch_trace import trace_kept

    job = setup(cfg_factory("pruner=dissipating_gradients", "pruner.epochs_to_prune=2", "pruner.sparsity=0.8",
                            "init=kaiming_normal", "optimizer.lr=0.05", "trainer.epochs=3"), run_dir=tmp_path)
    pruner, trainer = job.pruner, job.trainer
    after_epoch_1 = {}
    hook = pruner.begin_epoch

    def spy(state):  # the state right after the pruning step that follows epoch 1
        hook(state)
        if state.epoch == 1 and "masks" not in after_epoch_1:
            after_epoch_1["masks"] = [fm.mask.bool().clone() for fm in pruner.masks]
            after_epoch_1["weights"] = [w.detach().clone() for w in pruner.weights]
            after_epoch_1["report"] = sparsity_report(state.model)

    pruner.begin_epoch = spy
    trained, evaluated = trace_kept(job)
    trainer.fit()
    rep, masks1 = after_epoch_1["report"], after_epoch_1["masks"]
    assert rep.density == pytest.approx(0.6, abs=1e-3)  # halfway from 1.0 to 0.2
    total = rep.total
    assert [trained[e] for e in range(3)] == [{total}, {rep.kept}, {num_kept(total, 0.8)}]
    assert evaluated == [total, rep.kept, num_kept(total, 0.8)]
    assert [row["sparsity"] for row in trainer.history] == [0.0, pytest.approx(0.4, abs=1e-3),
                                                            pytest.approx(0.8, abs=1e-3)]
    # the pruning step saw the weights after epoch 1: every removed weight moved (relative to its init) no
    # more than any kept one, globally
    moved = torch.cat([((w - w0).abs() / (w0.abs() + 1e-12)).reshape(-1)
                       for w, w0 in zip(after_epoch_1["weights"], pruner.theta0, strict=True)])
    kept = torch.cat([m.reshape(-1) for m in masks1])
    assert int(kept.sum()) == rep.kept
    assert float(moved[~kept].max()) <= float(moved[kept].min())
    masks3 = [fm.mask.bool() for fm in pruner.masks]
    assert all(torch.equal(m3 & m1, m3) for m1, m3 in zip(masks1, masks3, strict=True))  # removed stay removed
    assert sparsity_report(trainer.model).density == pytest.approx(0.2, abs=1e-3)
    assert pruner.history == pytest.approx([0.6, 0.2], abs=1e-3)
    short = setup(cfg_factory("pruner=dissipating_gradients", "pruner.epochs_to_prune=2", "trainer.epochs=2"),
                  run_dir=tmp_path / "short")
    assert any("trainer.epochs > 2" in w for w in short.warnings)


def test_kstarts_selects_by_fitness_rank_sum():
    from ticketlab.pruners.kstarts import KStarts, KStartsConfig

    results = [{"magnitude": 3.0, "grad_accum": 1.0}, {"magnitude": 2.0, "grad_accum": 5.0},
               {"magnitude": 1.0, "grad_accum": 2.0}]
    pick = lambda fitness: KStarts(KStartsConfig(fitness=fitness))._select(results)  # noqa: E731
    assert pick("magnitude") == 0 and pick("grad_accum") == 1
    assert pick("both") == 1  # rank sums: magnitude (0, 1, 2) + grad_accum (2, 0, 1) = (2, 1, 3)
    tie = [{"magnitude": 2.0, "grad_accum": 1.0}, {"magnitude": 1.0, "grad_accum": 2.0}]
    assert KStarts(KStartsConfig(fitness="both"))._select(tie) == 0  # equal rank sums: lower index


def test_kstarts_candidates_share_the_init_and_winner_continues(cfg_factory, tmp_path):
    from ticketlab.runner.build import setup

    job = setup(cfg_factory("pruner=kstarts", "pruner.k=3", "pruner.sparsity=0.8", "init=kaiming_normal",
                            "trainer.epochs=0"), run_dir=tmp_path)
    job.trainer.fit()  # the three candidates train, the fittest is chosen
    pruner = job.pruner
    assert len(pruner.fitness) == 3 and 0 <= pruner.winner < 3
    assert all(f["grad_accum"] > 0 and f["magnitude"] > 0 for f in pruner.fitness)
    assert sparsity_report(job.trainer.model).density == pytest.approx(0.2, abs=1e-3)
    rewound = setup(cfg_factory("pruner=kstarts", "pruner.k=3", "pruner.sparsity=0.8", "init=kaiming_normal",
                                "pruner.rewind=true", "trainer.epochs=0"), run_dir=tmp_path / "r")
    rewound.trainer.fit()
    fresh = setup(cfg_factory("pruner=magnitude", "pruner.sparsity=0.8", "init=kaiming_normal"),
                  run_dir=tmp_path / "m")
    for a, b in zip(masked_tensors(rewound.trainer.model), masked_tensors(fresh.trainer.model), strict=True):
        assert torch.equal(a.original, b.original)  # rewind: the shared initialization


def test_kstarts_with_dissipating_reaches_the_target(cfg_factory, tmp_path):
    s = run(cfg_factory("pruner=kstarts", "pruner.dissipating=true", "pruner.k=2", "pruner.sparsity=0.9",
                        "init=kaiming_normal", "trainer.epochs=3", "optimizer.lr=0.05"), run_dir=tmp_path)
    assert s["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert s["density_history"][0] == pytest.approx(0.15, abs=1e-3)  # from 0.2 halfway to 0.1


def test_phew_nested_from_a_sparser_run(cfg_factory, tmp_path):
    run(cfg_factory("pruner=phew", "pruner.sparsity=0.98", "init=kaiming_normal", "trainer.epochs=0"),
        run_dir=tmp_path / "sparse")
    run(cfg_factory("pruner=phew", "pruner.sparsity=0.9", "init=kaiming_normal", "trainer.epochs=0",
                    f"pruner.nested_from={tmp_path / 'sparse'}"), run_dir=tmp_path / "dense")
    a = torch.load(tmp_path / "sparse" / "masks.pt", weights_only=False)["masks"]
    b = torch.load(tmp_path / "dense" / "masks.pt", weights_only=False)["masks"]
    assert all(torch.equal(a[k] & b[k], a[k]) for k in a)
    assert sum(int(m.sum()) for m in b.values()) > sum(int(m.sum()) for m in a.values())



@pytest.mark.parametrize("method", ["magnitude", "snip", "synflow"])
def test_pai_bias_pruning_ranks_biases_with_weights(cfg_factory, tmp_path, method):
    s = run(cfg_factory(f"pruner={method}", "pruner.prune_bias=true", "model.bias=true", "init=kaiming_normal",
                        "init.bias_init=he_product", "pruner.sparsity=0.9", "trainer.epochs=1"), run_dir=tmp_path)
    masks = torch.load(tmp_path / "masks.pt", weights_only=False)["masks"]
    assert any(k.endswith(".bias") for k in masks)
    n = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == n - math.floor(0.9 * n)  # one ranking over both
    assert s["status"] == "completed"


def test_pai_bias_pruning_needs_biases(cfg_factory, tmp_path):
    with pytest.raises(ConfigError, match="prune_bias=true but the model has no layer biases"):
        run(cfg_factory("pruner=magnitude", "pruner.prune_bias=true"), run_dir=tmp_path)


def test_synflow_fast_rounds_give_the_masks_of_full_selection(monkeypatch):
    """Selecting among the kept entries only (pruned ones score exactly 0) changes no mask."""
    from ticketlab.pruners.synflow import Synflow

    fast_rounds = []
    real = Synflow.kept_round
    monkeypatch.setattr(Synflow, "kept_round", lambda *a: fast_rounds.append(real(*a)) or fast_rounds[-1])
    from ticketlab.config import InitConfig, ModelConfig
    from ticketlab.data import DataBundle
    from ticketlab.init.weights import init_weights
    from ticketlab.models import build_model

    results, sparsity = [], 0.999
    for fast, fold in ((True, True), (False, True), (True, False)):
        model = build_model(ModelConfig(name="vgg11", width_mult=0.125, batch_norm=True, bn_affine=True),
                            (3, 32, 32), 10)
        init_weights(model, InitConfig(name="kaiming_normal"), 0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        pruner = build_pruner(SynflowConfig(sparsity=sparsity, iterations=20))
        pruner.zero_outside_mask = fast
        pruner.fold_masks = fold
        pruner.prepare(model, PruneContext(0, InitConfig(name="kaiming_normal"), CPU,
                                           DataBundle("shape", [], [], (3, 32, 32), 10, 0, 0), 0))
        results.append([fm.mask.clone() for fm in pruner.masks])
        restored = {k.replace(".parametrizations.weight.original", ".weight"): v
                    for k, v in model.state_dict().items() if not k.endswith(".mask")}
        assert all(torch.equal(restored[k], v) for k, v in before.items())  # signs and values restored
    assert all(torch.equal(a, b) for r in results[1:] for a, b in zip(results[0], r, strict=True))
    assert len(fast_rounds) == 38 and all(r is not None for r in fast_rounds)  # rounds 2..20 took the fast path
    total = sum(m.numel() for m in results[0])
    assert sum(int(m.sum()) for m in results[0]) == nk_total(total, sparsity)


def nk_total(n: int, sparsity: float) -> int:
    from ticketlab.sparsity.selection import num_kept

    return num_kept(n, sparsity)


@pytest.mark.slow
def test_imp_with_levels_reports_the_sparsity_it_applied(tmp_path):
    """pruner.levels=2 ends at sparsity 0.36 = 1 - 0.8^2: the folder, log lines and summaries say so per level,
    and the default pruner.sparsity=0.8 appears nowhere."""
    import subprocess
    import sys

    from .conftest import ROOT

    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "pruner=imp", "pruner.levels=2", "trainer.epochs=1",
                        "logger=none", "trainer.progress=false", f"paths.output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("imp-mlp-digits-s0.36-seed0-")
    logged = [float(x) for x in re.findall(r"pruner imp at sparsity ([0-9.]+)", r.stdout + r.stderr)]
    assert logged == [0.0, 0.2, 0.36]
    for level, target in enumerate([0.0, 0.2, 0.36]):
        s = json.loads((folder / f"level_{level:02d}" / "summary.json").read_text())
        assert s["target_sparsity"] == target and s["sparsity"] == pytest.approx(target, abs=1e-3)
    parent = json.loads((folder / "summary.json").read_text())
    assert parent["target_sparsity"] == 0.36 and "0.8" not in parent["run_name"]


def test_from_file_is_identified_by_the_masks_content_and_reports_their_sparsity(cfg_factory, tmp_path):
    from ticketlab.runner.identity import compute

    for name, sparsity in (("a", 0.9), ("b", 0.7)):
        run(cfg_factory("pruner=random", f"pruner.sparsity={sparsity}", "trainer.epochs=0"), run_dir=tmp_path / name)
    path = tmp_path / "ticket.pt"
    shutil.copy(tmp_path / "a" / "masks.pt", path)
    first = compute(cfg_factory("pruner=from_file", f"pruner.path={path}"))
    moved = tmp_path / "elsewhere" / "masks.pt"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert compute(cfg_factory("pruner=from_file", f"pruner.path={moved}")).digest == first.digest  # same mask
    shutil.copy(tmp_path / "b" / "masks.pt", path)  # another mask at the same path: another run
    second = compute(cfg_factory("pruner=from_file", f"pruner.path={path}"))
    assert second.digest != first.digest and "path" not in second.values["pruner"]
    assert re.fullmatch(r"from_file-mlp-digits-m[0-9a-f]{8}-seed0", second.name)
    s = run(cfg_factory("pruner=from_file", f"pruner.path={path}"), run_dir=tmp_path / "dst")
    assert s["target_sparsity"] == pytest.approx(0.7, abs=1e-4) and s["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert s["mask_sha256"] == second.values["pruner"]["mask_sha256"]
