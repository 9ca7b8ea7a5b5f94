"""Initializers: weights, biases and scores, each drawn per layer from its own seeded generator.

* :mod:`~ticketlab.init.weights` -- the registries :data:`~ticketlab.init.weights.WEIGHT_INITS` and
  :data:`~ticketlab.init.weights.SCORE_INITS`, the standard distributions, density scaling, biases.
* :mod:`~ticketlab.init.looks_linear` -- looks-linear orthogonal weights and paired/dependent biases
  (Fischer & Burkholz 2021).

Every module of this package is imported here, so adding an initializer is one module that
registers itself (``@WEIGHT_INITS.register("name")``) and one ``conf/init/<name>.yaml``.
"""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
