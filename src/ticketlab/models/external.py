"""Models from outside TicketLab: any torchvision constructor (``model=torchvision``) and a user's own
``nn.Module`` (``model=custom``).

Masks attach through ``torch.nn.utils.parametrize`` to any ``nn.Conv2d``/``nn.Linear``
(:mod:`ticketlab.sparsity.masks`), so these models work with every method whose layers they have; a method
that needs more (PHEW's walks, biases for the Fischer & Burkholz inits) names what it cannot handle in a
:class:`~ticketlab.errors.ConfigError` before training.

* ``model=torchvision model.arch=resnet18``: ``torchvision.models.get_model(arch, weights=None,
  num_classes=<dataset's>, **model.kwargs)``; randomly initialized (the run's ``init`` then sets the masked
  layers' weights). torchvision's ImageNet models take 3-channel input.
* ``model=custom model.target=mypkg.nets.MyNet``: the class (or function) at that dotted path, called with
  ``model.kwargs`` plus ``num_classes`` and ``in_channels`` where its signature has them and ``kwargs`` does
  not set them. A model of your own is one file with the module and one ``conf/model/<name>.yaml``:

  .. code-block:: yaml

     defaults: [custom]       # conf/model/my_net.yaml
     target: mypkg.nets.MyNet
     kwargs: {hidden: 128}

  (``python train.py model=my_net``; a config folder outside the repository is added with
  ``hydra.searchpath=[file:///path/to/conf]``).
"""

from __future__ import annotations

import inspect
import logging

from torch import nn

from ticketlab.config import ModelConfig
from ticketlab.errors import ConfigError, describe
from ticketlab.models.registry import MODELS


@MODELS.register("torchvision")
def torchvision_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes, **cfg.kwargs)``.

    Raises:
        ConfigError: no ``model.arch``, a name torchvision does not have (listing what it has), or a
            constructor that rejects the keyword arguments.
    """
    import torchvision  # here: importing it costs about a second of start-up

    names = torchvision.models.list_models()
    if not cfg.arch:
        raise ConfigError("model=torchvision needs model.arch, a torchvision model name (e.g. resnet18); "
                          f"torchvision has: {', '.join(names)}.")
    if cfg.arch not in names:
        raise ConfigError(f"model.arch={cfg.arch!r} is not a torchvision model; torchvision has: {', '.join(names)}.")
    try:
        return torchvision.models.get_model(cfg.arch, weights=None, **{"num_classes": num_classes, **cfg.kwargs})
    except TypeError as e:
        raise ConfigError(f"model.arch={cfg.arch!r} rejects model.kwargs={dict(cfg.kwargs)!r}: {describe(e)}") from e


@MODELS.register("custom")
def custom_model(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The user's ``cfg.target`` called with ``cfg.kwargs`` (and ``num_classes``, ``in_channels`` when its
    signature takes them).

    Raises:
        ConfigError: no ``model.target``, a path that does not import, a target that is not callable or does
            not return an ``nn.Module``, or one that rejects the arguments.
    """
    from hydra.utils import get_object

    if not cfg.target:
        raise ConfigError("model=custom needs model.target, the dotted path of your nn.Module class "
                          "(e.g. model.target=mypkg.nets.MyNet), importable from where train.py runs.")
    hydra_log = logging.getLogger("hydra.utils")
    level = hydra_log.level
    hydra_log.setLevel(logging.CRITICAL)  # it logs the import error itself; ours below says what to do
    try:
        target = get_object(cfg.target)
    except Exception as e:  # noqa: BLE001 -- any import problem is the user's path
        raise ConfigError(f"model.target={cfg.target!r} cannot be imported ({describe(e)}); give a dotted path "
                          "to a class or function importable from where train.py runs (PYTHONPATH).") from e
    finally:
        hydra_log.setLevel(level)
    if not callable(target):
        raise ConfigError(f"model.target={cfg.target!r} is a {type(target).__name__}, not a class or function.")
    kwargs = dict(cfg.kwargs)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in (("num_classes", num_classes), ("in_channels", input_shape[0])):
        if key in params and key not in kwargs:
            kwargs[key] = value
    try:
        model = target(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model.target={cfg.target!r} rejects model.kwargs={dict(cfg.kwargs)!r}: "
                          f"{describe(e)}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target={cfg.target!r} returned a {type(model).__name__}, not an nn.Module.")
    return model
