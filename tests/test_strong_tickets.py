"""Strong-ticket methods: each method's defining property on tiny networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketlab.config import InitConfig, ModelConfig
from ticketlab.errors import ConfigError
from ticketlab.init.weights import he_product_stds, init_weights
from ticketlab.models import build_model
from ticketlab.pruners import PruneContext, build_pruner
from ticketlab.pruners.biprop import BinaryActivation, BipropConfig, BipropMask
from ticketlab.pruners.edge_popup import EdgePopupConfig
from ticketlab.pruners.eps_perturbation import EpsPerturbationConfig
from ticketlab.pruners.iterand import IteRandConfig
from ticketlab.pruners.phases import TrainState
from ticketlab.pruners.weight_recycling import WeightRecyclingConfig
from ticketlab.runner.build import setup
from ticketlab.sparsity.masks import attach_score_masks, masked_tensors, prunable_layers, score_groups, select_layers
from ticketlab.sparsity.report import sparsity_report
from ticketlab.sparsity.selection import num_kept, num_kept_percentile
from ticketlab.sparsity.similarity import chance, compare_mask_sets, similarity

from .epoch_trace import trace_kept

CPU = torch.device("cpu")


def mlp(widths=(64, 32), bias=False, in_shape=(1, 6, 6)):
    return build_model(ModelConfig(name="mlp", widths=list(widths), bias=bias), in_shape, 10)


def prepared(cfg, model=None, init="kaiming_normal", seed=0, data=None, epochs=10, **init_kw):
    model = model if model is not None else mlp()
    pruner = build_pruner(cfg)
    icfg = InitConfig(name=init, **init_kw)
    init_weights(model, icfg, seed, pruner.densities(model))
    pruner.prepare(model, PruneContext(seed, icfg, CPU, data, epochs))
    return model, pruner


def hook_state(model, batch=None):
    """The training state pruner hooks receive (an SGD optimizer at lr 0.1 with a constant schedule)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    return TrainState(model=model, device=CPU, optimizer=opt,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0), batch=batch)


# --------------------------------------------------------------------------- joint top-k (bias pruning)
def test_joint_weight_bias_ranking_keeps_exact_count_per_layer():
    model = mlp(bias=True)
    masks = attach_score_masks(model, select_layers(model), 0.7, include_bias=True)
    with torch.no_grad():
        for m in masks:
            m.scores.normal_()
        masks[1].scores.abs_().add_(10)  # first layer's bias scores beat every weight score of its layer
    rep = sparsity_report(model)
    for name, layer in prunable_layers(model):
        n = layer.weight.numel() + layer.bias.numel()
        kept = rep.layers[f"{name}.weight"]["kept"] + rep.layers[f"{name}.bias"]["kept"]
        assert kept == num_kept(n, 0.7)
    assert rep.layers["net.1.bias"]["density"] == 1.0  # biases compete with, and here beat, the weights


# --------------------------------------------------------------------------- biprop
def test_biprop_weights_are_ternary_with_alpha_mean_kept_magnitude():
    model, _ = prepared(BipropConfig(sparsity=0.6))
    for mt in masked_tensors(model):
        w, m = mt.original, mt.mask.current_mask().bool()
        alpha = w.abs()[m].mean()
        eff = getattr(mt.module, mt.tensor_name)
        magnitudes = torch.unique(eff[m].abs())
        assert magnitudes.numel() == 1  # one alpha per tensor: values in {-alpha, 0, alpha}
        assert magnitudes.item() == pytest.approx(alpha.item(), rel=1e-6)
        assert torch.equal(torch.sign(eff[m]), torch.sign(w[m]))
        assert torch.all(eff[~m] == 0)


def test_biprop_score_gradient_has_edge_popup_form():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3, bias=False)
    w = layer.weight.detach().clone()
    layer.weight.requires_grad_(False)
    (sm,) = attach_score_masks(layer, [("", layer)], 0.5, mask_class=BipropMask)
    with torch.no_grad():
        sm.scores.normal_()
    x, up = torch.randn(4, 5), torch.randn(4, 3)
    (layer(x) * up).sum().backward()
    assert torch.allclose(sm.scores.grad, (up.T @ x) * w * torch.sign(sm.scores.detach()), atol=1e-6)


def test_binary_activations_use_bireal_surrogate():
    model, _ = prepared(BipropConfig(binary_activations=True), model=mlp(widths=(16, 16, 16)))
    acts = [m for m in model.modules() if isinstance(m, BinaryActivation | nn.ReLU)]
    assert [type(a) for a in acts] == [BinaryActivation, BinaryActivation, nn.ReLU]  # last ReLU kept
    x = torch.tensor([-2.0, -0.5, 0.25, 3.0], requires_grad=True)
    y = BinaryActivation()(x)
    y.sum().backward()
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.5, 0.0]


# --------------------------------------------------------------------------- IteRand
def iterand(period=5, rate=0.3, init="kaiming_uniform", **kw):
    return prepared(IteRandConfig(period=period, rate=rate, sparsity=0.5, **kw), model=mlp((200, 100)), init=init)


def test_iterand_redraws_only_pruned_weights_at_rate_r():
    model, pruner = iterand(rate=0.3)
    before = {mt.name: (mt.original.clone(), mt.mask.current_mask().bool().clone()) for mt in masked_tensors(model)}
    scores = {mt.name: mt.mask.scores.clone() for mt in masked_tensors(model)}
    pruner.rerandomize(model)
    changed = pruned = 0
    for mt in masked_tensors(model):
        w0, keep = before[mt.name]
        assert torch.equal(mt.original[keep], w0[keep])  # kept weights bit-identical
        assert torch.equal(mt.mask.scores, scores[mt.name])
        changed += int((mt.original[~keep] != w0[~keep]).sum())
        pruned += int((~keep).sum())
    # binomial: mean r * n, std sqrt(n r (1 - r)); 5 sigma
    assert abs(changed - 0.3 * pruned) < 5 * math.sqrt(pruned * 0.3 * 0.7)


def test_iterand_acts_exactly_every_period():
    model, pruner = iterand(period=4)
    state = hook_state(model)
    snapshots = []
    for step in range(1, 9):
        state.step = step
        pruner.on_step_end(state)
        snapshots.append(torch.cat([mt.original.reshape(-1) for mt in masked_tensors(model)]).clone())
    changed = [not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:], strict=False)]
    # redraws follow completed steps 3 and 7 ((t + 1) % 4 == 0): between snapshots 2->3 and 6->7
    assert changed == [False, True, False, False, False, True, False]
    assert pruner.rerandomizations == 2


def test_iterand_signed_constant_redraws_flip_half_the_signs():
    model, pruner = iterand(rate=1.0, init="signed_constant")
    before = {mt.name: (mt.original.clone(), mt.mask.current_mask().bool()) for mt in masked_tensors(model)}
    pruner.rerandomize(model)
    flips = sum(int((mt.original[~k] != w[~k]).sum()) for mt in masked_tensors(model)
                for w, k in [before[mt.name]])
    pruned = sum(int((~k).sum()) for _, k in before.values())
    assert abs(flips - pruned / 2) < 5 * math.sqrt(pruned / 4)
    assert all(torch.equal(mt.original.abs(), before[mt.name][0].abs()) for mt in masked_tensors(model))


def test_iterand_candidate_rate_limits_to_lowest_scores():
    model, pruner = iterand(rate=1.0, candidate_rate=0.5)
    before = {mt.name: mt.original.clone() for mt in masked_tensors(model)}
    pruner.rerandomize(model)
    for mt in masked_tensors(model):
        changed = mt.original != before[mt.name]
        n = mt.original.numel()
        lowest = torch.argsort(mt.mask.scores.reshape(-1))[: math.floor(0.25 * n)]
        allowed = torch.zeros(n, dtype=torch.bool)
        allowed[lowest] = True
        assert not torch.any(changed.reshape(-1) & ~allowed)
        assert int(changed.sum()) > 0.9 * allowed.sum()


# --------------------------------------------------------------------------- weight recycling
@pytest.mark.parametrize("source", ["top", "next_lowest"])
def test_recycling_copies_paired_values_and_touches_nothing_else(source):
    model, pruner = prepared(WeightRecyclingConfig(rate=0.2, source=source), model=mlp((50, 30)))
    before = {mt.name: mt.original.clone() for mt in masked_tensors(model)}
    scores = {mt.name: mt.mask.scores.clone() for mt in masked_tensors(model)}
    pruner.recycle(model)
    for mt in masked_tensors(model):
        w0, w = before[mt.name].reshape(-1), mt.original.reshape(-1)
        n = w.numel()
        q = math.floor(0.2 * n)
        order = torch.argsort(scores[mt.name].abs().reshape(-1), stable=True)
        low = order[:q]
        src = order[n - q:] if source == "top" else order[q:2 * q]
        assert torch.equal(w[low], w0[src])
        untouched = torch.ones(n, dtype=torch.bool)
        untouched[low] = False
        assert torch.equal(w[untouched], w0[untouched])
        assert torch.equal(mt.mask.scores, scores[mt.name])


def test_recycling_schedule_follows_reference():
    _, pruner = prepared(WeightRecyclingConfig(every=3, warmup=4), epochs=14)
    assert [e for e in range(1, 15) if pruner.due(e)] == [7, 10, 13]  # 0-based 6, 9, 12; never the last
    _, pruner = prepared(WeightRecyclingConfig(every=3, warmup=6), epochs=14)
    assert [e for e in range(1, 15) if pruner.due(e)] == [10, 13]  # reference: epoch > warmup, so not 0-based 6


def test_recycling_happens_after_the_epochs_evaluation(cfg_factory, tmp_path):
    job = setup(cfg_factory("pruner=weight_recycling", "pruner.every=1", "trainer.epochs=4"), run_dir=tmp_path)
    calls = []
    original = job.pruner.recycle

    def spy(model):
        calls.append((job.trainer.state.epoch, len(job.trainer.history)))
        original(model)

    job.pruner.recycle = spy
    job.trainer.fit()
    # after 0-based epochs 1 and 2 (never after the last), each time with that epoch's metric row written
    assert calls == [(2, 2), (3, 3)]
    assert job.pruner.recycled_at == [2, 3]


@pytest.mark.parametrize("every_steps, warmup, epochs", [(4, 0, 3), (7, 0, 2), (3, 1, 3)])
def test_recycling_every_steps_follows_the_in_epoch_batch_index(cfg_factory, tmp_path, every_steps, warmup, epochs):
    """mattgorb/parameter_tiling_and_recycling ``trainers/default.py`` 70-72: recycle after the step of batch
    ``i`` (0-based, within the epoch) when ``i % rerand_iter_freq == 0 and epoch > 0``; ``default_parallel.py``
    adds ``epoch > rerand_warmup``. 10 batches, F = 4, 3 epochs: steps 11, 15, 19, 21, 25, 29 (the global-step
    rule gave 12, 16, 20, 24, 28)."""
    job = setup(cfg_factory("pruner=weight_recycling", f"pruner.every_steps={every_steps}", f"pruner.warmup={warmup}",
                            f"trainer.epochs={epochs}", "trainer.limit_train_batches=10"), run_dir=tmp_path)
    steps = []
    job.pruner.recycle = (lambda f: lambda model: (f(model), steps.append(job.trainer.state.step)))(job.pruner.recycle)
    job.trainer.fit()
    expected = [10 * epoch + i + 1 for epoch in range(epochs) for i in range(10)
                if i % every_steps == 0 and epoch > 0 and epoch > warmup]
    assert job.pruner.recycled_at == steps == expected
    if (every_steps, warmup, epochs) == (4, 0, 3):
        assert expected == [11, 15, 19, 21, 25, 29]


def test_recycling_on_biprop():
    model, pruner = prepared(WeightRecyclingConfig(base="biprop"))
    assert all(isinstance(mt.mask, BipropMask) for mt in masked_tensors(model))


# --------------------------------------------------------------------------- epsilon perturbation
@pytest.mark.parametrize("norm,scale", [("linf", "absolute"), ("linf", "init_std"), ("linf", "relative"),
                                        ("l2", "absolute"), ("l2", "init_std"), ("l2", "relative")])
def test_eps_perturbation_respects_the_ball_and_freezes_weights(cfg_factory, tmp_path, norm, scale):
    eps = 0.05
    common = ("pruner=eps_perturbation", f"pruner.eps={eps}", f"pruner.norm={norm}", f"pruner.eps_scale={scale}",
              "pruner.phase_a_steps=30", "pruner.phase_a_lr=0.5", "init=kaiming_normal", "seed=3")
    after_a = setup(cfg_factory(*common, "trainer.epochs=0"), run_dir=tmp_path / "a")  # phase A only
    after_a.trainer.fit()
    model = after_a.trainer.model
    ref = mlp((256, 256), in_shape=(1, 8, 8))
    init_weights(ref, after_a.rc.init, 3, after_a.pruner.densities(ref))
    w0 = {f"{n}.weight": layer.weight.detach() for n, layer in prunable_layers(ref)}
    std = {f"{n}.weight": math.sqrt(2.0 / layer.in_features) for n, layer in prunable_layers(ref)}
    moved = 0.0
    for mt in masked_tensors(model):
        d = mt.original - w0[mt.name]
        moved = max(moved, float(d.abs().max()))
        if norm == "linf":
            bound = {"absolute": eps, "init_std": eps * std[mt.name]}.get(scale)
            limit = eps * w0[mt.name].abs() if scale == "relative" else torch.full_like(d, bound)
            assert torch.all(d.abs() <= limit * (1 + 1e-5) + 1e-7)
        else:
            radius = {"absolute": eps, "init_std": eps * std[mt.name] * math.sqrt(d.numel()),
                      "relative": eps * float(w0[mt.name].norm())}[scale]
            assert float(d.norm()) <= radius * (1 + 1e-5)
    assert moved > 0  # phase A did move the weights
    assert after_a.pruner.phase_a_steps_done == 30
    full = setup(cfg_factory(*common, "trainer.epochs=2"), run_dir=tmp_path / "b")
    full.trainer.fit()
    for a, b in zip(masked_tensors(model), masked_tensors(full.trainer.model), strict=True):
        assert torch.equal(a.original, b.original)  # the same phase A, and phase B never moved the weights
        assert not torch.equal(a.mask.scores, b.mask.scores)  # phase B trained the scores
    assert full.pruner.state_dict()["phase"] == "B"


def test_eps_random_control_has_the_same_size(cfg_factory, tmp_path):
    common = ["pruner=eps_perturbation", "pruner.eps=0.5", "pruner.norm=l2", "pruner.phase_a_steps=10",
              "init=kaiming_normal", "trainer.epochs=0"]
    sgd = setup(cfg_factory(*common), run_dir=tmp_path / "a")
    rnd = setup(cfg_factory(*common, "pruner.perturbation=random"), run_dir=tmp_path / "b")
    sgd.trainer.fit()
    rnd.trainer.fit()
    for name, stats in rnd.pruner.perturbation_stats.items():
        assert stats["l2"] == pytest.approx(sgd.pruner.perturbation_stats[name]["l2"], rel=1e-4)


# --------------------------------------------------------------------------- Fischer & Burkholz options
def test_clamped_scores_stay_nonnegative(cfg_factory, tmp_path):
    job = setup(cfg_factory("pruner.clamp_scores=true", "pruner.score_init=constant"), run_dir=tmp_path)
    job.trainer.fit()
    assert all(float(mt.mask.scores.detach().min()) >= 0 for mt in masked_tensors(job.trainer.model))


def test_density_annealing_levels(cfg_factory, tmp_path):
    """Three levels over 6 epochs (level ends 2, 4, 6): epochs 0-1 train and are evaluated at level 0, 2-3 at
    level 1, 4-5 at the target; a resumed pruner restores the level it was at."""
    job = setup(cfg_factory("pruner=edge_popup", "pruner.sparsity=0.9", "pruner.anneal_levels=3",
                            "pruner.anneal_start_density=0.6", "trainer.epochs=6"), run_dir=tmp_path)
    trained, evaluated = trace_kept(job)
    job.trainer.fit()
    total = sum(m.scores.numel() for m in job.pruner.masks)
    f = (0.1 / 0.6) ** (1 / 3)
    density = [0.6 * f, 0.6 * f, 0.6 * f * f, 0.6 * f * f, 0.1, 0.1]
    assert [len(trained[e]) for e in range(6)] == [1] * 6
    assert [next(iter(trained[e])) / total for e in range(6)] == [pytest.approx(d, abs=2e-3) for d in density]
    assert evaluated == [next(iter(trained[e])) for e in range(6)]
    model2, pruner2 = prepared(EdgePopupConfig(sparsity=0.9, anneal_levels=3, anneal_start_density=0.6), epochs=6)
    pruner2.load_state_dict(job.pruner.state_dict())
    assert sparsity_report(model2).density == pytest.approx(0.1, abs=1e-3)


def test_scaled_edge_popup_multiplies_the_logits_by_the_fitted_scale():
    model, pruner = prepared(EdgePopupConfig(scaling=True), model=mlp(bias=True), init="kaiming_normal",
                             bias_init="he_product")
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 10, (32,))
    with torch.no_grad():
        before = model(x)
    state = hook_state(model, (x, y))
    pruner.on_epoch_end(state)
    s = pruner.scale
    assert s != 1.0
    with torch.no_grad():
        assert torch.allclose(model(x), s * before, rtol=1e-4, atol=1e-5)
    assert state.scheduler.base_lrs[0] == pytest.approx(0.1 / s)  # declared through TrainState.scale_lr
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / s)


# --------------------------------------------------------------------------- initializers
def ll_net(widths=(8, 8, 8), bias_init="zero", in_shape=(1, 2, 3)):
    m = mlp(widths, bias=bias_init != "zero", in_shape=in_shape)
    init_weights(m, InitConfig(name="ortho_ll", bias_init=bias_init), seed=1)
    return m


def assert_linear(f, x):
    with torch.no_grad():
        assert torch.allclose(f(x) + f(-x), torch.zeros_like(f(x)), atol=1e-5)
        assert torch.allclose(f(2.5 * x), 2.5 * f(x), atol=1e-4)
        assert torch.allclose(f(x[:1] + x[1:2]), f(x[:1]) + f(x[1:2]), atol=1e-5)


def test_looks_linear_mlp_is_linear_at_init():
    assert_linear(ll_net(), torch.randn(4, 1, 2, 3))
    relu_net = mlp((8, 8, 8), in_shape=(1, 2, 3))
    init_weights(relu_net, InitConfig(name="kaiming_normal"), seed=1)
    with torch.no_grad():
        x = torch.randn(4, 1, 2, 3)
        assert not torch.allclose(relu_net(x) + relu_net(-x), torch.zeros(4, 10), atol=1e-3)


def test_looks_linear_conv_net_is_linear_at_init():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 10, bias=False))
    init_weights(net, InitConfig(name="ortho_ll"), seed=0)
    assert_linear(net, torch.randn(3, 3, 5, 5))


def test_orthogonal_looks_linear_layers_preserve_norms():
    net = ll_net(widths=(16, 16))
    hidden = prunable_layers(net)[1][1]  # 16 -> 16: [[W0, -W0], [-W0, W0]] with W0 8x8 orthogonal
    u = torch.randn(5, 8)
    x = torch.cat([u.relu(), (-u).relu()], dim=1)
    with torch.no_grad():
        z = hidden(x)
    assert torch.allclose(z[:, :8], -z[:, 8:], atol=1e-6)
    assert torch.allclose(z[:, :8].norm(dim=1), u.norm(dim=1), atol=1e-5)


def test_dependent_biases_cancel_in_layer_pairs_and_paired_do_not():
    x = torch.randn(4, 1, 2, 3)
    assert_linear(ll_net(widths=(8, 8, 8), bias_init="ll_dependent"), x)  # 4 layers: 2 cancelling pairs
    paired = ll_net(widths=(8, 8, 8), bias_init="ll_paired")
    with torch.no_grad():
        assert not torch.allclose(paired(x) + paired(-x), torch.zeros(4, 10), atol=1e-4)


def test_looks_linear_rejects_odd_widths():
    with pytest.raises(ConfigError, match=r"init.name=ortho_ll needs an even output width.*'net.1' has 7 outputs"):
        init_weights(mlp((7, 8)), InitConfig(name="ortho_ll"), seed=0)


def test_he_product_bias_std_chain():
    m = mlp((400, 400, 400), bias=True, in_shape=(1, 20, 20))
    cfg = InitConfig(name="kaiming_normal", bias_init="he_product", bias_factor=1.0)
    init_weights(m, cfg, seed=0)
    stds = he_product_stds(prunable_layers(m), cfg, {})
    assert stds[0] == pytest.approx(math.sqrt(2 / 400))
    assert stds[1] == pytest.approx(stds[0] * math.sqrt(2 / 400))
    layer = prunable_layers(m)[2][1]
    assert float(layer.bias.detach().std()) == pytest.approx(stds[2], rel=0.2)


@pytest.mark.parametrize("name,expected", [("unsigned_constant", None), ("xavier_normal", math.sqrt(2 / (64 + 32)))])
def test_unsigned_constant_and_xavier(name, expected):
    m = mlp((64, 32), in_shape=(1, 8, 8))
    init_weights(m, InitConfig(name=name), seed=0)
    w = prunable_layers(m)[1][1].weight
    if expected is None:
        assert torch.all(w == math.sqrt(2 / 64))
    else:
        assert float(w.detach().std()) == pytest.approx(expected, rel=0.1)


def test_weight_and_score_seeds_are_independent():
    a, _ = prepared(EdgePopupConfig(), init="kaiming_normal", seed=0)
    b, _ = prepared(EdgePopupConfig(), init="kaiming_normal", seed=0, score_seed=5)
    for ma, mb in zip(masked_tensors(a), masked_tensors(b), strict=True):
        assert torch.equal(ma.original, mb.original)
        assert not torch.equal(ma.mask.scores, mb.mask.scores)


# --------------------------------------------------------------------------- mask metrics
def test_random_masks_reproduce_chance_values():
    g = torch.Generator().manual_seed(0)
    for k in (0.5, 0.25, 0.1):
        a = torch.rand(200_000, generator=g) < k
        b = torch.rand(200_000, generator=g) < k
        s = similarity(a, b)
        assert s.percent_same == pytest.approx(k * k + (1 - k) ** 2, abs=0.005)
        assert s.jaccard == pytest.approx(k / (2 - k), abs=0.005)
        assert chance(k, k) == pytest.approx((k * k + (1 - k) ** 2, k / (2 - k)))


def test_identical_and_complementary_masks():
    a = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    sims = compare_mask_sets({"l": a}, {"l": ~a})
    assert sims["l"].percent_same == 0.0 and sims["l"].jaccard == 0.0
    assert similarity(a, a).percent_same == 1.0 and similarity(a, a).jaccard == 1.0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,pattern", [
    (lambda: IteRandConfig(period=0), r"pruner.period=0 is out of range"),
    (lambda: IteRandConfig(rate=1.5), r"pruner.rate=1.5 is out of range"),
    (lambda: WeightRecyclingConfig(rate=-0.1), r"pruner.rate=-0.1 is out of range"),
    (lambda: EpsPerturbationConfig(eps=-1.0), r"pruner.eps=-1.0 is out of range"),
    (lambda: EdgePopupConfig(sparsity=0.9, anneal_levels=2, anneal_start_density=0.05),
     r"pruner.anneal_start_density=0.05 is out of range"),
    (lambda: InitConfig(name="kaiming_normal", bias_init="ll_paired"), r"needs init.name=ortho_ll"),
])
def test_method_options_are_validated(make, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make()


def test_annealing_needs_enough_epochs():
    model, pruner = prepared(EdgePopupConfig(anneal_levels=5), epochs=3)
    with pytest.raises(ConfigError, match="anneal_levels=5 needs at least as many epochs"):
        pruner.check(model, PruneContext(0, InitConfig(name="kaiming_normal"), CPU, None, 3))


# --------------------------------------------------------------------------- IteRand reference options
def _reference_percentile_kept(scores: torch.Tensor, sparsity: float) -> int:
    """dchiji-ntt/iterand ``models/networks/sparse_modules.py`` 11 and 20: ``GetSubnet`` calls
    ``percentile(scores, sparsity * 100)``, whose threshold is the ``1 + round(.01 * float(q) * (n - 1))``-th
    smallest score (Python floats and ``round``); scores ``>=`` it are kept."""
    q = sparsity * 100
    k = 1 + round(.01 * float(q) * (scores.numel() - 1))
    return int((scores >= scores.view(-1).kthvalue(k).values).sum())


def test_percentile_kept_count_matches_the_reference_rule():
    gen = torch.Generator().manual_seed(0)
    half_even = 0
    for n in range(2, 300):
        for p in (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95):
            scores = torch.rand(n, generator=gen)  # no ties
            assert num_kept_percentile(n, p) == _reference_percentile_kept(scores, p), (n, p)
            half_even += num_kept_percentile(n, p) != n - round(p * (n - 1))  # the exact half-to-even rule
    assert half_even == 19  # e.g. (16, 0.7): 0.01 * 70.0 * 15 = 10.500000000000002 rounds up, 0.7 * 15 = 10.5 to even
    # Conv-4 at width 0.25, its 32 -> 32 3x3 layer (n = 9216) at sparsity 0.7: 2,765 kept, not 2,766
    assert num_kept_percentile(9216, 0.7) == _reference_percentile_kept(torch.rand(9216, generator=gen), 0.7) == 2765


def test_edge_popup_percentile_kept_count(cfg_factory, tmp_path):
    job = setup(cfg_factory("pruner=iterand", "pruner.kept_count=percentile", "pruner.sparsity=0.3",
                            "trainer.epochs=0"), run_dir=tmp_path)
    x, _ = next(iter(job.trainer.data.test))
    job.trainer.model(x)  # the masks follow the scores at the next forward
    for mt in masked_tensors(job.trainer.model):
        n = mt.original.numel()
        assert int(mt.mask.mask.sum()) == num_kept_percentile(n, 0.3)
    with pytest.raises(ConfigError, match="kept_count=percentile is a per-layer rule"):
        setup(cfg_factory("pruner=edge_popup", "pruner.kept_count=percentile", "pruner.scope=global"),
              run_dir=tmp_path / "b")


def test_percentile_kept_count_applies_to_a_joint_weight_and_bias_group(cfg_factory, tmp_path):
    """With ``prune_bias`` the layer's weights and bias share one top-k; its count follows ``kept_count`` (before:
    the floor rule, silently)."""
    job = setup(cfg_factory("pruner=edge_popup", "pruner.kept_count=percentile", "pruner.prune_bias=true",
                            "model.bias=true", "pruner.sparsity=0.7", "trainer.epochs=0"), run_dir=tmp_path)
    x, _ = next(iter(job.trainer.data.test))
    job.trainer.model(x)
    groups = score_groups(job.pruner.masks)
    assert groups and all(len(g.members) == 2 for g in groups)
    for g in groups:
        n = sum(m.scores.numel() for m in g.members)
        assert sum(int(m.mask.sum()) for m in g.members) == num_kept_percentile(n, 0.7)
    assert any(num_kept_percentile(sum(m.scores.numel() for m in g.members), 0.7) !=
               num_kept(sum(m.scores.numel() for m in g.members), 0.7) for g in groups)


@pytest.mark.parametrize("kept_count", ["percentile", "floor"])
def test_iterand_candidates_follow_the_masks_count_rule(cfg_factory, tmp_path, kept_count):
    """dchiji-ntt/iterand ``sparse_modules.py`` ``rerandomize``: the candidates are the weights
    ``GetSubnet(score, sparsity * rate)`` removes, i.e. the masks' own count rule at sparsity p * rho
    (p = 0.9, rho = 0.3, n = 4,096: 1,106 by the percentile rule; the old slack formula gave 1,105)."""
    job = setup(cfg_factory("pruner=iterand", f"pruner.kept_count={kept_count}", "pruner.sparsity=0.9",
                            "pruner.candidate_rate=0.3", "pruner.rate=1.0", "pruner.period=1", "init=kaiming_normal",
                            "trainer.epochs=1",
                            "trainer.limit_train_batches=1"), run_dir=tmp_path)
    before = {mt.name: mt.original.detach().clone() for mt in masked_tensors(job.trainer.model)}
    job.trainer.fit()  # one step, then one re-randomization of every candidate (rate 1)
    count = num_kept_percentile if kept_count == "percentile" else num_kept
    for mt in masked_tensors(job.trainer.model):
        n = mt.original.numel()
        changed = int((mt.original.detach() != before[mt.name]).sum())
        assert changed == n - count(n, 0.9 * 0.3), mt.name
    assert 4096 - num_kept_percentile(4096, 0.9 * 0.3) == 1106


def test_biprop_global_density_ramp_is_cubic(cfg_factory, tmp_path):
    """chrundle/biprop ``main.py`` 155-163: global scope, the density of epoch e is set at the top of epoch e,
    0.5 -> target over ramp_epochs on a cubic; training and ``validate()`` of epoch e both threshold with it
    (``trainers/default.py`` 91 and 221). Checked through the loop: every forward of epoch e, training and
    evaluation alike, sees the same kept count."""
    job = setup(cfg_factory("pruner=biprop", "pruner.scope=global", "pruner.sparsity=0.9", "pruner.ramp_epochs=4",
                            "init=kaiming_normal", "trainer.epochs=6"), run_dir=tmp_path)
    trained, evaluated = trace_kept(job)
    job.trainer.fit()
    total = sum(m.scores.numel() for m in job.pruner.masks)
    expected = [num_kept(total, 1 - (0.1 + 0.4 * (1 - e / 4) ** 3)) for e in range(4)] + [num_kept(total, 0.9)] * 2
    assert [trained[e] for e in range(6)] == [{k} for k in expected]
    assert evaluated == expected  # before: each epoch was evaluated at the next epoch's density
    assert [row["sparsity"] for row in job.trainer.history] == [pytest.approx(1 - k / total) for k in expected]
    assert [job.pruner.ramp_density(e) for e in (0, 4)] == [0.5, pytest.approx(0.1)]
    assert sparsity_report(job.trainer.model).kept == num_kept(total, 0.9)
    layerwise = setup(cfg_factory("pruner=biprop", "pruner.sparsity=0.9", "init=kaiming_normal"),
                      run_dir=tmp_path / "b")
    assert not layerwise.pruner.ramps


def test_biprop_run_shorter_than_its_ramp_ends_with_the_mask_it_trained(cfg_factory, tmp_path):
    """k = 0.05, ramp 6, 4 epochs: the last epoch trains at density 0.05 + 0.45 (1 - 3/6)^3 = 0.10625, which the
    warning names; the final mask is that one (before: 0.0667, the next epoch's, never trained)."""
    cfg = cfg_factory("pruner=biprop", "pruner.scope=global", "pruner.sparsity=0.95", "pruner.ramp_epochs=6",
                      "init=kaiming_normal", "trainer.epochs=4")
    job = setup(cfg, run_dir=tmp_path)
    trained, evaluated = trace_kept(job)
    job.trainer.fit()
    total = sum(m.scores.numel() for m in job.pruner.masks)
    last = num_kept(total, 1 - 0.10625)
    assert trained[3] == {last} and evaluated[-1] == last
    assert sparsity_report(job.trainer.model).kept == last
    assert any("ends at density 0.1062" in w or "ends at density 0.1063" in w
               for w in job.pruner.check(job.trainer.model, job.ctx))
