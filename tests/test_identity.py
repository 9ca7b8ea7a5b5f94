"""Run identity: the same result-affecting config gives the same run id, and nothing else does."""

from __future__ import annotations

import pytest

from ticketlab.runner.identity import NOT_IDENTITY, compute, describe_difference
from ticketlab.sweeps.sweep import sweep_name

from .conftest import compose_cfg


def ident(*overrides):
    return compute(compose_cfg(*overrides))


def test_pinned_ids():
    """Regression (open_lth's test_desc.py): a changed id orphans every run made before the change.

    If this fails, a config default changed its value or a new key entered the id. Give new keys a
    default that reproduces the old behaviour (defaults are left out of the id) instead of editing
    these values, unless orphaning the old runs is intended.
    """
    assert ident().folder == "edge_popup-mlp-digits-s0.5-seed0-8e1959076a"
    assert ident("pruner=snip", "model=lenet300_100", "dataset=mnist", "pruner.sparsity=0.9",
                 "init=kaiming_normal").digest == "0d988b3cdc7acd95ee83f3154113d2a6b589880571bfdd28ea1d7893db54cd56"


@pytest.mark.parametrize("overrides", [
    ["logger=none"], ["logger.project=other", "logger.tags=[a,b]"], ["trainer.progress=false"],
    ["trainer.threads=1"], ["trainer.resume=fresh"], ["trainer.checkpoint_every_min=1"], ["trainer.strategy=ddp"],
    ["dataset.root=/somewhere/else"], ["dataset.num_workers=0"], ["dataset.eval_batch_size=17"],
    ["paths.output_dir=/tmp/x"], ["trainer.label_smoothing=0.0"],  # an explicit default
])
def test_keys_that_cannot_change_the_result_keep_the_id(overrides):
    assert ident(*overrides).digest == ident().digest


@pytest.mark.parametrize("overrides", [
    ["pruner.sparsity=0.6"], ["seed=1"], ["init.score_seed=3"], ["optimizer=adam"], ["optimizer.lr=0.01"],
    ["trainer.epochs=21"], ["trainer.limit_train_batches=5"], ["model.width_mult=2"], ["pruner=biprop"],
    ["dataset.batch_size=32"], ["trainer.device=cpu"], ["scheduler=step"],
])
def test_result_affecting_keys_change_the_id(overrides):
    assert ident(*overrides).digest != ident().digest


def test_the_excluded_keys_are_what_the_readme_lists():
    """The README's list of keys left out of a run's id is exactly :data:`NOT_IDENTITY`."""
    import re

    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("cannot change the result:")
    listed = set(re.findall(r"`([a-z_]+(?:\.[a-z_*]+)?)`", readme[start:readme.index("**minus every value", start)]))
    expected = {f"{group}.*" for group, keys in NOT_IDENTITY.items() if keys is None and group != "hydra"}
    expected |= {f"{group}.{key}" for group, keys in NOT_IDENTITY.items() if keys for key in keys}
    assert listed == expected


def test_stages_have_their_own_ids():
    parent = ident("pruner=imp")
    a, b = parent.child("level_00"), parent.child("level_01")
    assert len({parent.digest, a.digest, b.digest}) == 3
    assert a.folder.startswith("imp-mlp-digits-s0.8-seed0-level_00-")


def test_differences_are_named():
    lines = describe_difference(ident().values, ident("pruner.sparsity=0.7", "seed=2").values)
    assert lines == ["pruner.sparsity: (default) (there) vs 0.7 (here)", "seed: 0 (there) vs 2 (here)"]


def test_sweep_names_are_stable_and_readable():
    a = sweep_name(["pruner.sparsity=0.3,0.5", "seed=0,1", "trainer.epochs=3"])
    assert a == sweep_name(["seed=0,1", "trainer.epochs=3", "pruner.sparsity=0.3,0.5"])  # order-free
    assert a.startswith("seed+sparsity-") or a.startswith("sparsity+seed-")
    assert a != sweep_name(["pruner.sparsity=0.3,0.5", "seed=0,1,2", "trainer.epochs=3"])
