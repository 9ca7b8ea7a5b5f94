"""Config groups: every option composes and validates; bad input fails before training."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from ticketlab.config import TrainerConfig
from ticketlab.errors import ConfigError
from ticketlab.pruners import PRUNERS
from ticketlab.runner.run import run
from ticketlab.runner.validate import resolve

from .conftest import CONF, compose_cfg

GROUPS = ["dataset", "model", "init", "pruner", "optimizer", "scheduler", "trainer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    extra = ["pruner.path=/nonexistent"] if option == "from_file" else []  # a mandatory key (???)
    rc = resolve(compose_cfg(f"{group}={option}", *extra))
    node = getattr(rc, group)
    assert type(node).__name__.endswith("Config")  # the group's schema, not a plain dict
    if group in ("dataset", "model", "init", "pruner", "optimizer", "scheduler", "logger"):
        assert node.name == option  # the option's YAML names itself


def test_mandatory_mask_path_is_reported():
    with pytest.raises(ConfigError, match=r"pruner.path is mandatory here and has no value"):
        resolve(compose_cfg("pruner=from_file"))


def test_defaults_are_the_documented_default_job():
    rc = resolve(compose_cfg())
    assert (rc.dataset.name, rc.model.name, rc.pruner.name, rc.pruner.sparsity) == ("digits", "mlp", "edge_popup", 0.5)
    assert rc.dataset.root  # ${tl.env:DATA_DIR,data}
    assert rc.trainer.device == "auto"
    assert rc.logger.mode in ("offline", "online", "disabled")


@pytest.mark.parametrize("value, root", [(None, "data"), ("", "data"), ("/somewhere/else", "/somewhere/else")])
def test_the_data_root_is_data_unless_data_dir_names_another(monkeypatch, value, root):
    # `make data` fills data/, so no command needs DATA_DIR; an empty DATA_DIR (as a Makefile passes it) is unset
    if value is None:
        monkeypatch.delenv("DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("DATA_DIR", value)
    assert resolve(compose_cfg("dataset=mnist")).dataset.root == root


def test_every_registered_pruner_has_a_yaml_and_vice_versa():
    assert {p.stem for p in (CONF / "pruner").glob("*.yaml")} == set(PRUNERS.names())


def test_misspelled_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("pruner.sparsty=0.3")
    assert isinstance(e.value.__cause__, ConfigKeyError) or "sparsty" in str(e.value.__cause__)


def test_key_of_another_method_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("pruner=dense", "pruner.scope=global")


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as e:
        compose_cfg("trainer.epochs=ten")
    assert isinstance(e.value.__cause__, ValidationError)


@pytest.mark.parametrize("group", ["model", "dataset", "pruner"])
def test_unknown_option_lists_the_available_ones(group):
    with pytest.raises(MissingConfigException) as e:
        compose_cfg(f"{group}=nonexistent")
    assert "Available options" in str(e.value)


@pytest.mark.parametrize("overrides,pattern", [
    (["pruner.sparsity=1.0"], r"pruner.sparsity=1.0 is out of range; allowed: \[0.0, 1.0\)"),
    (["pruner.sparsity=-0.2"], r"pruner.sparsity=-0.2 is out of range"),
    (["trainer.epochs=-1"], r"trainer.epochs=-1 is negative"),
    (["trainer.device=gpu"], r"trainer.device='gpu' is not allowed"),
    (["pruner.scope=per_channel"], r"pruner.scope='per_channel' is not allowed; choose one of: layerwise, global"),
    (["pruner=dense", "pruner.sparsity=0.5"], r"pruner=dense.*sparsity must be 0"),
    (["seed=-3"], r"seed=-3 is not a valid seed; allowed: an integer in \[0, 2\^63 - 1\]"),
    (["logger.mode=sometimes"], r"logger.mode='sometimes' is not allowed"),
    (["optimizer.lr=0"], r"optimizer.lr=0.0 is out of range"),
])
def test_range_errors_name_key_value_and_allowed(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve(compose_cfg(*overrides))


def test_bad_input_is_rejected_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    for overrides in (["pruner.sparsity=1.5"], ["dataset=mnist", f"dataset.root={tmp_path}/nothing",
                                                  "dataset.download=false"], ["model=conv8"]):
        with pytest.raises(ConfigError):
            run(compose_cfg("logger=none", *overrides), run_dir=run_dir)
    assert not run_dir.exists()


def test_missing_dataset_names_root_and_files(tmp_path):
    with pytest.raises(ConfigError) as e:
        run(compose_cfg("logger=none", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false"),
            run_dir=tmp_path / "run")
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg
    with pytest.raises(ConfigError, match=r"cifar10.*ImageFolder copy"):
        run(compose_cfg("logger=none", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false"),
            run_dir=tmp_path / "run")


def test_model_not_fitting_dataset_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"model.name='conv8' does not fit digits"):
        run(compose_cfg("logger=none", "model=conv8"), run_dir=tmp_path)


def test_incompatible_pruner_options_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="prune_bias=true but the model has no layer biases"):
        run(compose_cfg("logger=none", "pruner.prune_bias=true"), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="train_bn=true but the model has no affine batch norm"):
        run(compose_cfg("logger=none", "pruner.train_bn=true"), run_dir=tmp_path)


def test_trainer_limits_validated():
    with pytest.raises(ConfigError, match="limit_train_batches=0"):
        TrainerConfig(limit_train_batches=0)


@pytest.mark.parametrize("overrides,cpus", [
    ([], 1), (["trainer.threads=4"], 4), (["trainer.threads=4", "dataset=imagenet", "dataset.num_workers=8"], 12),
    (["dataset=tiny_imagenet"], 1 + 4),  # the dataset's default workers
])
def test_slurm_launcher_asks_for_threads_plus_loader_workers(overrides, cpus):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["cpus_per_task"] == cpus
    assert launcher["max_num_timeout"] > 0 and launcher["additional_parameters"]["requeue"] is True
    assert launcher["gpus_per_node"] == 1 and launcher["partition"] is None  # nothing cluster-specific by default


def test_strategy_and_sync_bn_are_validated():
    with pytest.raises(ConfigError, match=r"trainer.strategy='fsdp' is not allowed; choose one of: single, ddp"):
        TrainerConfig(strategy="fsdp")
    with pytest.raises(ConfigError, match=r"sync_bn=true .* needs trainer.strategy=ddp"):
        TrainerConfig(sync_bn=True)


def test_a_bad_wandb_mode_names_the_environment_variable_it_came_from(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "foo")
    with pytest.raises(ConfigError, match=r"environment variable WANDB_MODE='foo'.*online, offline, disabled"):
        resolve(compose_cfg("logger=wandb"))
    with pytest.raises(ConfigError, match=r"^logger.mode='bar' is not allowed"):  # given on the command line
        resolve(compose_cfg("logger=wandb", "logger.mode=bar"))
