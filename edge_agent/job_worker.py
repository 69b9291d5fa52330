"""The agent's background training thread: one long-lived worker, one job at a time.

A thread per round made the agent thread wait in ``Thread.start`` for the new thread to
run its first bytecode, which under load means waiting for the GIL behind whatever is
training; measured on benchmarks/round.py (25 agents a process), that wait was the
largest single item of the agent threads' wall time. The worker instead sleeps on a
condition between jobs, and a job is handed over with one ``notify``.

``nice``: the worker lowers its own thread's CPU priority by that much (Linux, where
``setpriority`` takes a thread id), so on a busy device the agent thread (sampling,
telemetry, MQTT) gets the CPU before training does. Measured on benchmarks/round.py
(100 devices on 2 cores), the round overhead dropped from 77-88 to 67-68 ms: devices
pick a round up sooner when the others' training does not hold the cores.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable

__all__ = ["JobWorker"]

log = logging.getLogger(__name__)


def lower_thread_priority(by: int) -> int | None:
    """Raise the calling thread's nice value by ``by`` (at most 19); return the new value.

    None where the OS does not offer per-thread priorities or refuses (the thread then
    runs at the priority it has: a slower device, never a failed round).
    """
    if by <= 0 or not hasattr(os, "setpriority"):
        return None
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.debug("could not lower the training thread's priority: %s", exc)
        return None
    return nice


class JobWorker:
    """Runs callables handed to :meth:`run` in order on one daemon thread.

    A job must not raise (the agent's jobs catch everything and hand the outcome back
    through their own box); if one does (e.g. a BaseException), the thread ends and the
    next :meth:`run` starts a new one, so :meth:`run`'s returned thread tells a caller
    whether the worker is still alive.
    """

    def __init__(self, name: str, *, nice: int = 0) -> None:
        self._name = name
        self._nice = nice
        self._cv = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._closing = False
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], None]) -> threading.Thread:
        """Queue ``job``; return the thread that will run it."""
        start = False
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._closing = False
                start = True
            self._jobs.append(job)
            self._cv.notify()
            thread = self._thread
        if start:
            thread.start()
        return thread

    def close(self, *, timeout: float) -> None:
        """Let the thread finish its jobs and exit; wait up to ``timeout`` seconds for it."""
        with self._cv:
            self._closing = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)

    def _loop(self) -> None:
        lower_thread_priority(self._nice)
        while True:
            with self._cv:
                while not self._jobs and not self._closing:
                    self._cv.wait()
                if not self._jobs:
                    return  # closing, nothing left to run
                job = self._jobs.popleft()
            job()
            # Not kept while waiting: the job's closure holds the agent (and its MQTT
            # client), which must be free to go once the agent is done with.
            del job
