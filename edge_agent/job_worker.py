"""The agent's background training thread: one long-lived worker, one job at a time.

A thread per round made the agent thread wait in ``Thread.start`` for the new thread to
run its first bytecode, which under load means waiting for the GIL behind whatever is
training; measured on benchmarks/round.py (25 agents a process), that wait was the
largest single item of the agent threads' wall time. The worker instead sleeps on a
condition between jobs, and a job is handed over with one ``notify``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

__all__ = ["JobWorker"]


class JobWorker:
    """Runs callables handed to :meth:`run` in order on one daemon thread.

    A job must not raise (the agent's jobs catch everything and hand the outcome back
    through their own box); if one does (e.g. a BaseException), the thread ends and the
    next :meth:`run` starts a new one, so :meth:`run`'s returned thread tells a caller
    whether the worker is still alive.
    """

    def __init__(self, name: str) -> None:
        self._name = name
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
