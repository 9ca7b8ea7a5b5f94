"""Checks that span several config groups, or need the built model: errors and warnings.

Single-field ranges live in each schema's ``__post_init__`` (:mod:`ticketlab.config`, each
pruner's config). What needs two groups at once (a schedule's floor against the learning rate),
or the model itself (a stem that does not suit the input, a mask that leaves no input-output
path), is here. Errors raise :class:`~ticketlab.errors.ConfigError` before anything is written;
warnings are legal-but-degenerate settings: logged at the start of the run and listed under
``warnings`` in ``summary.json``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketlab.errors import ConfigError
from ticketlab.pruners.base import require_layer_biases


def cross_checks(rc: Any) -> list[str]:
    """Rules between groups of a :class:`ticketlab.runner.validate.RunConfig`; returns warnings.

    Raises:
        ConfigError: ``scheduler.min_lr`` above ``optimizer.lr`` (the cosine would raise the rate).
    """
    warnings = []
    sched, lr, epochs = rc.scheduler, rc.optimizer.lr, rc.trainer.epochs
    if sched.name == "cosine" and sched.min_lr > lr:
        raise ConfigError(f"scheduler.min_lr={sched.min_lr:g} is above optimizer.lr={lr:g}: the cosine schedule "
                          "would raise the learning rate over the run; allowed: 0 <= scheduler.min_lr <= "
                          "optimizer.lr.")
    if sched.warmup_epochs and sched.warmup_epochs >= epochs > 0:
        warnings.append(f"scheduler.warmup_epochs={sched.warmup_epochs} covers all trainer.epochs={epochs}: the "
                        "learning rate never reaches optimizer.lr's schedule.")
    if sched.name == "step" and sched.milestones and max(sched.milestones) >= epochs:
        late = [m for m in sched.milestones if m >= epochs]
        warnings.append(f"scheduler.milestones {late} are at or after the last epoch (trainer.epochs={epochs}); "
                        "they never take effect.")
    return warnings


#: A validation split smaller than this is warned about: its accuracy moves in steps of more than 5 %.
SMALL_VAL = 20


def split_checks(rc: Any, num_train: int, num_val: int) -> list[str]:
    """The training and validation splits against what the run asks of them; returns warnings.

    Args:
        rc: the resolved run config (``dataset.val_fraction``, ``dataset.batch_size``,
            ``trainer.limit_train_batches``).
        num_train, num_val: images in the training split and the held-out validation split.

    Raises:
        ConfigError: no training image left (e.g. ``dataset.val_fraction`` near 1), or a validation split
            asked for that holds no image: nothing to learn from, or nothing to select with.
    """
    ds, limit = rc.dataset, rc.trainer.limit_train_batches
    total = num_train + num_val
    if num_train == 0:
        raise ConfigError(f"dataset.val_fraction={ds.val_fraction:g} holds out {num_val} of the {total} training "
                          f"images of {ds.name}, which leaves none to train on; allowed: a fraction that leaves "
                          "at least one batch (e.g. 0.1).")
    if ds.val_fraction > 0 and num_val == 0:
        raise ConfigError(f"dataset.val_fraction={ds.val_fraction:g} of {total} training images of {ds.name} holds "
                          "out no image, so there is no validation set; use a larger fraction (e.g. 0.1) or 0 "
                          "for none.")
    warnings = []
    if num_train < ds.batch_size:
        warnings.append(f"the training split holds {num_train} images, fewer than one batch "
                        f"(dataset.batch_size={ds.batch_size}): each epoch is a single step of {num_train}.")
    if 0 < num_val < SMALL_VAL:
        warnings.append(f"the validation split holds {num_val} images (dataset.val_fraction={ds.val_fraction:g}): "
                        f"its accuracy moves in steps of {1 / num_val:.0%}, too coarse to select epochs or "
                        "settings with.")
    batches = -(-num_train // ds.batch_size)
    if limit and limit > batches:
        warnings.append(f"trainer.limit_train_batches={limit} is more than the {batches} batches of an epoch "
                        f"({num_train} images at dataset.batch_size={ds.batch_size}): it limits nothing.")
    return warnings


def check_model(rc: Any, model: nn.Module) -> None:
    """Rules between the config and the built model that no method owns (a method's own are its
    :meth:`~ticketlab.pruners.base.Pruner.check`).

    Raises:
        ConfigError: ``init.bias_init`` other than ``zero``/``default`` on a model without layer biases.
    """
    if rc.init.bias_init not in ("zero", "default"):
        require_layer_biases(model, f"init.bias_init={rc.init.bias_init}")


def model_warnings(model: nn.Module, input_shape: tuple[int, ...], model_name: str) -> list[str]:
    """Warn when a convolution or pooling window is larger than the feature map it receives.

    Such a layer sees mostly zero padding: the model's stem downsamples too much for this input
    (e.g. ImageNet's ResNet-50 on 8x8 images).
    """
    small: list[str] = []

    def hook(name: str, kernel: tuple[int, int]):
        def fn(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            h, w = inputs[0].shape[-2:]
            if h < kernel[0] or w < kernel[1]:
                small.append(f"{name} ({kernel[0]}x{kernel[1]} on {h}x{w})")
        return fn

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
            handles.append(m.register_forward_hook(hook(name, k)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not small:
        return []
    shape = "x".join(map(str, input_shape))
    return [f"model.name={model_name!r} downsamples its {shape} input below the size of "
            f"{len(small)} window(s), which then see mostly zero padding: {', '.join(small[:4])}"
            f"{' ...' if len(small) > 4 else ''}. Its stem was designed for larger images; a model built for "
            "this input size (e.g. mlp, or a CIFAR-style model for 32x32) is likely what you want."]


__all__ = ["check_model", "cross_checks", "model_warnings"]
