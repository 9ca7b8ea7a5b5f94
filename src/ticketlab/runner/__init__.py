"""What happens to a run: validate, place, build, train, summarize, and keep its folder honest.

* :mod:`~ticketlab.runner.validate` -- resolve and check the config once (:class:`RunConfig`).
* :mod:`~ticketlab.runner.placement` -- device, threads, seeds, autocast: chosen once per run.
* :mod:`~ticketlab.runner.build` -- data, model, masks, phases and the loop of one run (:class:`Job`).
* :mod:`~ticketlab.runner.summary` -- the typed ``summary.json`` record.
* :mod:`~ticketlab.runner.attempt` -- one attempt in a ready folder: train, report whatever happens.
* :mod:`~ticketlab.runner.run` -- :func:`run`: find the folder, skip, continue or start, stages.
* :mod:`~ticketlab.runner.identity`, :mod:`~ticketlab.runner.rundir` -- a run's id and its folder's life cycle.
* :mod:`~ticketlab.runner.stages` -- multi-stage runs (IMP levels) and their folders.
* :mod:`~ticketlab.runner.checks` -- rules between config groups and warnings about the built model.
* :mod:`~ticketlab.runner.callbacks`, :mod:`~ticketlab.runner.tracking` -- metrics file, log line, W&B.
* :mod:`~ticketlab.runner.cluster` -- Slurm and parallel local jobs.
"""
