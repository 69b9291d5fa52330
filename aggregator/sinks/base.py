"""The sink seam: where ingested points go (InfluxDB, SQLite, memory)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedge.points import Point

__all__ = ["Sink", "SinkStats"]


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot of a sink's counters (all in points unless named otherwise).

    ``points_pending`` is what is accepted but not yet acknowledged by the
    destination (for InfluxDB: what is in the durable spool). ``points_refused`` were
    never accepted (the spool was full; the caller got a SinkError). ``points_rejected``
    were refused by the server as invalid and kept in a dead-letter table.
    ``points_duplicate`` were already stored identically (a redelivery, ignored);
    ``points_conflicting`` clashed with a stored point of the same identity but
    other values, and the stored one was kept (sinks that can tell; InfluxDB
    cannot: there the later write of a point wins).
    """

    points_written: int = 0
    points_pending: int = 0
    batches_written: int = 0
    write_errors: int = 0
    retries: int = 0
    points_refused: int = 0
    points_rejected: int = 0
    points_duplicate: int = 0
    points_conflicting: int = 0
    last_error: str | None = None


@runtime_checkable
class Sink(Protocol):
    """Destination of ingested points. Implementations are thread-safe."""

    @property
    def accepts_line_protocol(self) -> bool:
        """Whether this sink writes InfluxDB line protocol.

        If true, the ingest service hands it telemetry as a
        :class:`~fedge.points.PointBatch` formatted straight from the wire message, whose
        ``lines`` it uses instead of formatting points (:func:`fedge.points.line_bytes`);
        if false, it gets plain points and no line is formatted for it.
        """
        ...

    def write(self, points: Sequence[Point]) -> None:
        """Accept ``points`` durably or raise SinkError (nothing is dropped silently)."""
        ...

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything accepted so far is in the destination.

        Raises SinkError if that did not happen within ``timeout`` seconds (the
        points stay pending and are not lost).
        """
        ...

    def close(self) -> None:
        """Flush what can be flushed and release resources. Idempotent."""
        ...

    @property
    def stats(self) -> SinkStats:
        """Current counters."""
        ...
