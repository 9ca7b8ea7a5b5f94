"""How to get a paper's table: sweeps that never lose a job, tidy rows from run folders, tables and plots.

* :mod:`~ticketlab.sweeps.sweep` -- the Hydra callback of ``-m`` sweeps: one folder per sweep, one record
  per job, the end-of-sweep report and exit code.
* :mod:`~ticketlab.sweeps.experiments` -- ``conf/experiment/<paper>/<table>.yaml``: collect the runs of an
  experiment into tidy rows, and lay them out as the paper's table.
* :mod:`~ticketlab.sweeps.plots` -- the experiment's figures.
"""
