"""Why a training run stops early on purpose, and the signal watch behind preemption.

SIGTERM is what Cloud TPU maintenance, spot / preemptible VMs and SLURM send before they kill a job (SIGINT is
Ctrl-C). ``StopSignals`` turns the first one into a request that the loop reads after each step: the run then saves
that step, waits for every save and raises ``Preempted``. A second signal of either kind acts at once (the handlers
in place before the run are restored and the signal re-raised), so a stuck run can still be killed.

Multi-process runs agree on the step with a host all-gather of each process's flag after every step (a few bytes;
every process reaches it at the same step because the training step is one collective program): whichever process
was signalled, all of them save the same step. Python's handler replaces the C-level SIGTERM notifier that
``jax.distributed.initialize`` installs, so JAX's own preemption sync point would never fire here.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(RuntimeError):
    """A run ended before ``train.steps`` on purpose; ``main`` prints the message and exits with ``exit_code``."""
    exit_code = 1


class Preempted(RunStopped):
    """SIGTERM / SIGINT: the current step was saved (unless its update was skipped); rerun the command to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum   # the shell's convention for "ended by signal N"


class Diverged(RunStopped):
    """``train.max_consecutive_skips`` updates in a row were skipped (non-finite loss, gradient or update)."""
    exit_code = 3


class StopSignals:
    """A context that catches SIGTERM and SIGINT in the main thread (elsewhere Python allows no handlers, and
    the run keeps the process's own behaviour)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python (not restorable from here); the default is the safe choice
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:   # asked twice: stop now, the way the process would have without us
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning("%s received: stopping after the current step with a checkpoint (send it again to stop at "
                    "once)", signal.Signals(signum).name)

    def agreed(self) -> int | None:
        """The signal number any process received so far, or None; the same answer on every process."""
        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.received or 0))
        return int(np.max(flags)) or None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
