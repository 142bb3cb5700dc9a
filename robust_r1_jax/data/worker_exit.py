"""Data worker processes that end with the process that started them, however it ends (kill -9 included).

grain's ``mp_prefetch`` workers are ``multiprocessing`` daemons: they are stopped when the parent exits through
Python, but a parent killed by SIGKILL (the kernel's out-of-memory killer, ``kill -9``) leaves them running as
orphans, each holding its memory, the shell's output pipe and the write end of ``multiprocessing``'s resource
tracker pipe. While any of them lives, the tracker never sees end-of-file, so it never unlinks the batches' shared
memory blocks (``/dev/shm/psm_*``) that were in flight.

``die_with_parent`` runs in each worker (grain's ``worker_init_fn``): a daemon thread waits on a pidfd of the
parent (``os.pidfd_open``, Linux >= 5.3; where that is missing it polls ``os.getppid`` every 0.2 s) and ends the
worker with ``os._exit`` the moment the parent is gone. The resource tracker then reads end-of-file and unlinks
every block still registered. ``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the *thread* that forked the
worker exits, and grain starts workers from pool threads that may end while the parent lives.
"""
from __future__ import annotations

import os
import select
import threading
import time

POLL_S = 0.2


def _exit_when_gone(parent_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux) or already gone
        pidfd = None
    if pidfd is not None:
        if os.getppid() == parent_pid:  # the pidfd names the parent, not a later process with its pid
            select.select([pidfd], [], [])  # readable once the process has exited
        os._exit(0)
    while os.getppid() == parent_pid:  # reparented (to init or a subreaper) once the parent died
        time.sleep(POLL_S)
    os._exit(0)


def die_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1) -> None:
    """Ends this process as soon as ``parent_pid`` (its parent) has ended; returns at once.

    Args: ``parent_pid`` the parent's pid, taken in the parent (``os.getpid()`` there) so that a parent that died
    before the worker got here is noticed; ``worker_index`` / ``worker_count`` are grain's ``worker_init_fn``
    arguments, unused. A worker whose parent is already gone exits immediately (``os._exit(0)``).
    """
    del worker_index, worker_count
    if os.getppid() != parent_pid:
        os._exit(0)
    threading.Thread(target=_exit_when_gone, args=(parent_pid,), daemon=True,
                     name="robust-r1-die-with-parent").start()
