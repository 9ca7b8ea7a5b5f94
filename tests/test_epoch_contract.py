"""The loop's epoch contract, through real runs: an epoch is evaluated with the masks it trained with, and a
run's final model is the one its last evaluation saw (chrundle/biprop ``main.py`` 155-163 sets the density at
the top of epoch e; training and ``validate()`` of epoch e both use it, ``trainers/default.py`` 91 and 221)."""

from __future__ import annotations

import pytest

from ticketlab.runner.build import setup
from ticketlab.sparsity.report import sparsity_report

from .epoch_trace import kept_now, trace_kept

#: Every method that changes masks or weights between or at the ends of epochs.
CASES = {
    "biprop_ramp": ["pruner=biprop", "pruner.scope=global", "pruner.sparsity=0.9", "pruner.ramp_epochs=3",
                    "init=kaiming_normal"],
    "annealing": ["pruner=edge_popup", "pruner.sparsity=0.9", "pruner.anneal_levels=2"],
    "dissipating": ["pruner=dissipating_gradients", "pruner.epochs_to_prune=2", "pruner.sparsity=0.8",
                    "init=kaiming_normal"],
    "kstarts_dissipating": ["pruner=kstarts", "pruner.dissipating=true", "pruner.k=2", "pruner.epochs_to_prune=2",
                            "init=kaiming_normal"],
    "recycling": ["pruner=weight_recycling", "pruner.every=1", "pruner.sparsity=0.5"],
    "recycling_steps": ["pruner=weight_recycling", "pruner.every_steps=3", "pruner.sparsity=0.5"],
    "iterand": ["pruner=iterand", "pruner.period=3", "init=kaiming_normal"],
    "scaled": ["pruner=edge_popup", "pruner.scaling=true", "model.bias=true", "init=kaiming_normal"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_epoch_is_evaluated_with_what_it_trained_with(cfg_factory, tmp_path, case):
    job = setup(cfg_factory(*CASES[case], "trainer.epochs=4", "trainer.limit_train_batches=6"), run_dir=tmp_path)
    trained, evaluated = trace_kept(job)
    history = job.trainer.fit()
    assert len(evaluated) == len(history) == 4
    for e in range(4):
        assert trained[e] == {evaluated[e]}, (e, trained[e], evaluated[e])
        assert history[e]["sparsity"] == pytest.approx(1 - evaluated[e] / sparsity_report(job.trainer.model).total)
    # the final model is the one the last epoch was evaluated with: its masks, and its weights
    assert kept_now(job.trainer.model) == evaluated[-1]
    assert job.trainer.evaluate() == pytest.approx((history[-1]["test_loss"], history[-1]["test_acc"]), rel=1e-6)
