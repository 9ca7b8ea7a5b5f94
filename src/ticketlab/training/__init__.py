"""How training goes: the loop over a run's phases, one epoch's position, evaluation, checkpoint state, optimizers.

* :mod:`~ticketlab.training.loop` -- :class:`~ticketlab.training.loop.Trainer` (phase sequencing,
  epochs, checkpoints) and :func:`~ticketlab.training.loop.train_step`, the one optimizer step.
* :mod:`~ticketlab.training.position` -- where an epoch stands (its order, next batch, running sums).
* :mod:`~ticketlab.training.evaluation` -- mean loss and accuracy on a split.
* :mod:`~ticketlab.training.checkpoint` -- RNG states and what ``last.ckpt`` holds.
* :mod:`~ticketlab.training.optim` -- optimizers and learning-rate schedules from the config.

The loop depends on the method contract (:mod:`ticketlab.pruners.phases`) only, never on a method.
"""
