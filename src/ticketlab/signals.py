"""Graceful stops: SIGTERM, SIGUSR1, SIGUSR2 and SIGINT become "finish this step, checkpoint, stop".

Schedulers stop jobs with SIGTERM (Slurm at a time limit or preemption, ``timeout``, Kubernetes),
and Slurm sends a signal ahead of a time limit when asked (``--signal``: SIGUSR1 by convention,
SIGUSR2 under submitit, :mod:`ticketlab.runner.cluster`). While a run is active,
:class:`StopRequest` turns each of these signals into a flag; the training loop looks at the flag
after every optimizer step (and long set-up computations at their own safe points) and raises
:class:`~ticketlab.errors.Preempted` once the checkpoint is written. A second SIGINT while
stopping restores Python's default behaviour (an immediate ``KeyboardInterrupt``).

Handlers are installed only in the main thread and are restored when the run ends, so a Hydra
sweep or a test that runs several jobs in one process keeps its own handlers between jobs.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

from ticketlab.errors import Preempted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class StopRequest:
    """A stop flag set by signals (or by :meth:`request`), checked at safe points.

    Use as a context manager around a run: ``with StopRequest() as stop: ... stop.check(where)``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    # --------------------------------------------------------------- installing
    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):  # not settable here (e.g. embedded interpreters)
                    pass
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)  # type: ignore[arg-type]
            except (ValueError, OSError, TypeError):
                pass
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: finishing the current step, then checkpointing and stopping",
                        signal.Signals(signum).name)

    # --------------------------------------------------------------- querying
    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (for tools and tests)."""
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def check(self, where: str = "") -> None:
        """Raise :class:`~ticketlab.errors.Preempted` if a stop was asked for.

        Call this only at points where stopping loses nothing that is not in a checkpoint (or
        where the work done so far is cheap to redo).

        Raises:
            Preempted: carrying the signal number and ``where``.
        """
        if self.signum is not None:
            raise Preempted(self.signum, where)


class NoStop(StopRequest):
    """A :class:`StopRequest` that never installs handlers (pruners used outside the runner)."""

    def __enter__(self) -> NoStop:
        return self


__all__ = ["STOP_SIGNALS", "NoStop", "StopRequest"]
