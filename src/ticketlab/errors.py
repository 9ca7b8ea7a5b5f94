"""Errors and outcomes of a run: bad input, divergence, preemption, a busy run folder.

Each has one meaning for the runner (:mod:`ticketlab.runner.run`), the status it writes to
``summary.json`` and the exit code of ``train.py``:

=====================  ==============  =========  ===================================================
exception              status          exit code  when
=====================  ==============  =========  ===================================================
:class:`ConfigError`   (none written)  2          bad input, found before anything is written
:class:`Diverged`      ``diverged``    3          a non-finite loss or non-finite scores
:class:`Preempted`     ``preempted``   143 / 138  SIGTERM / SIGUSR1 or SIGUSR2 (140) (schedulers,
                                                  ``timeout``, Slurm's warning before a time limit)
:class:`Preempted`     ``interrupted`` 130        SIGINT (Ctrl-C)
:class:`RunBusy`       (none written)  75         another live process holds the run folder
any other exception    ``failed``      1          a crash
=====================  ==============  =========  ===================================================
"""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A configuration value or an input file is not allowed.

    Raised during validation (config dataclasses' ``__post_init__``, cross-group checks, model and
    dataset checks), always before training starts and before anything is written to the run
    folder. The message is one paragraph naming the key (or file), the bad value, and what is
    allowed, so ``train.py`` prints it without a traceback.
    """


class NonFiniteError(FloatingPointError):
    """A tensor that must be finite is not (a top-k over NaN scores, a NaN loss).

    Args:
        what: ``"loss"`` or ``"scores"`` (what became non-finite).
        message: one-line description.
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


class Diverged(RuntimeError):
    """Training produced a non-finite loss or non-finite scores; the run stops at once.

    Args:
        what: ``"loss"`` or ``"scores"``.
        phase: training phase (``"main"``, or a method's pre-training phase).
        epoch: the epoch being trained (1-based) in that phase.
        step: the optimizer step (1-based, within the phase) whose result was non-finite.
        lr: the learning rate in force.
    """

    def __init__(self, what: str, phase: str, epoch: int, step: int, lr: float | None) -> None:
        self.what, self.phase, self.epoch, self.step, self.lr = what, phase, epoch, step, lr
        hint = ("lower optimizer.lr, add scheduler.warmup_epochs, or check the data" if what == "loss" else
                "lower optimizer.lr or add optimizer.weight_decay; a top-k over non-finite scores has no answer")
        lr_txt = f" at lr {lr:g}" if lr is not None else ""
        where = f"epoch {epoch}, step {step}" + (f" of phase {phase}" if phase != "main" else "")
        super().__init__(f"non-finite {what} at {where}{lr_txt}; {hint}.")

    def record(self) -> dict:
        """The facts for ``summary.json``."""
        return {"what": self.what, "phase": self.phase, "epoch": self.epoch, "step": self.step, "lr": self.lr,
                "message": str(self)}


class Preempted(BaseException):  # noqa: N818  (an outcome, like KeyboardInterrupt, not an error)
    """The run was asked to stop by a signal; its checkpoint and summary are written.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except Exception`` in method code
    never swallows it and a Hydra sweep stops instead of starting the next job.

    Args:
        signum: the signal number (``SIGTERM``, ``SIGUSR1`` or ``SIGINT``).
        where: human-readable position, e.g. ``"epoch 3, step 41"``.
    """

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum = signum
        self.where = where
        super().__init__(f"stopped by {self.signal_name}" + (f" at {where}" if where else ""))

    @property
    def signal_name(self) -> str:
        """``"SIGTERM"``, ``"SIGUSR1"``, ``"SIGINT"``..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def status(self) -> str:
        """``interrupted`` for SIGINT (a person pressed Ctrl-C), else ``preempted``."""
        return "interrupted" if self.signum == signal.SIGINT else "preempted"

    @property
    def exit_code(self) -> int:
        """The shell convention ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(self.signum)


class RunBusy(RuntimeError):
    """Another live process holds the run folder's lock (the same run is already running).

    Args:
        run_dir: the folder.
        holder: what the lock file says about its holder (host, pid, start time).
    """

    def __init__(self, run_dir: str, holder: str) -> None:
        super().__init__(f"{run_dir} is in use by another process ({holder or 'holder unknown'}); the same run is "
                         "already running. Wait for it, or stop it; a stale lock from a dead process is released "
                         "by the operating system.")


def describe(exc: BaseException, limit: int = 300) -> str:
    """``"<Type>: <first line of the message>"`` (at most ``limit`` characters of message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}".rstrip(": ")


EXIT_CODES = {"completed": 0, "skipped": 0, "failed": 1, "invalid": 2, "diverged": 3, "busy": 75}


def check_choice(key: str, value: object, allowed: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``.

    Args:
        key: full config key, e.g. ``"pruner.scope"`` (used in the message).
        value: the value given.
        allowed: the permitted values.

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed values.
    """
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}.")


def check_range(key: str, value: float, lo: float, hi: float, *, hi_open: bool = False,
                lo_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (bounds optionally open).

    Args:
        key: full config key (used in the message).
        value: the number given.
        lo, hi: the bounds; ``hi=float('inf')`` for no upper bound.
        hi_open, lo_open: exclude the bound itself.

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed interval.
    """
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {interval}.")


SEED_MAX = 2**63 - 1


def check_seed(key: str, value: int | None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is ``None`` or an integer in ``[0, 2^63 - 1]``.

    Seeds key ``torch.Generator.manual_seed`` (which rejects larger values) and the per-layer
    generators of :func:`ticketlab.init.weights.layer_generator`.

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed range.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{key}={value!r} is not a valid seed; allowed: an integer in [0, 2^63 - 1].")
