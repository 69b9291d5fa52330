"""An in-memory sink for tests and simulations."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from aggregator.sinks.base import SinkStats
from fedge.errors import SinkError
from fedge.points import Point

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps every written point in a list (``points``). Thread-safe.

    ``fail_next`` makes the next N writes raise SinkError, to exercise callers'
    error handling.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: list[Point] = []
        self._batches = 0
        self._errors = 0
        self.fail_next = 0
        self.closed = False

    @property
    def accepts_line_protocol(self) -> bool:
        """False: keeps the points themselves."""
        return False

    def write(self, points: Sequence[Point]) -> None:
        """Append ``points``; raises SinkError if closed or a failure was requested."""
        with self._lock:
            if self.closed:
                raise SinkError("memory sink is closed")
            if self.fail_next > 0:
                self.fail_next -= 1
                self._errors += 1
                raise SinkError("memory sink: injected failure")
            self._points.extend(points)
            self._batches += 1

    def flush(self, timeout: float = 10.0) -> None:
        """Nothing to flush: writes are synchronous."""

    def close(self) -> None:
        """Refuse further writes."""
        with self._lock:
            self.closed = True

    @property
    def points(self) -> list[Point]:
        """A copy of every point written so far, in write order."""
        with self._lock:
            return list(self._points)

    def by_measurement(self, measurement: str) -> list[Point]:
        """Written points of one measurement."""
        return [p for p in self.points if p.measurement == measurement]

    @property
    def stats(self) -> SinkStats:
        """Current counters."""
        with self._lock:
            return SinkStats(
                points_written=len(self._points),
                batches_written=self._batches,
                write_errors=self._errors,
            )
