"""The telemetry states of the agent store's readings (a part of :class:`ReadingStore`).

A reading is UNSENT, SENT (the broker acknowledged it: it holds it, in memory) or
STORED (ingest confirmed it durable with a stored-up-to watermark; without
confirmations, the PUBACK is taken for it). The column is still called ``sent``, as
in stores from before the states (see :meth:`TelemetryStates._migrate_states`).
Only telemetry reads the state: for training every reading counts alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from fedge.errors import StorageError

__all__ = ["STATES_KEY", "StoredReading", "TelemetryState", "TelemetryStates"]


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One reading as the store keeps it: sequence number, unit, cycle, time, channels."""

    seq: int
    unit: int
    cycle: int
    ts: float
    values: np.ndarray


class TelemetryState(IntEnum):
    """Where a reading is on its way to ingest (the ``sent`` column)."""

    UNSENT = 0
    SENT = 1
    """The broker acknowledged it; ingest has not confirmed it (yet)."""
    STORED = 2
    """Ingest confirmed it durable (or confirmation is off and the broker has it)."""


# In `meta` of stores whose `sent` column holds TelemetryState values (_migrate_states).
STATES_KEY = "telemetry_states"
STATES_VALUE = "unsent,sent,stored"


class TelemetryStates:
    """The telemetry side of the reading store: its readings' states and watermark.

    A mixin of :class:`~edge_agent.store.ReadingStore`, which owns the connection.
    """

    _db: sqlite3.Connection
    _watermark: tuple[int, float] | None

    def _migrate_states(self) -> None:
        """Stores from before the three telemetry states: ``sent`` was 0 or 1, 1 meaning
        the broker acknowledged the reading, after which the agent of the time forgot
        it. Those rows are treated as confirmed (STORED): that agent promised nothing
        more for them, and re-sending a whole history at the upgrade would flood
        ingest with readings it almost certainly has."""
        if self._db.execute("SELECT 1 FROM meta WHERE key = ?", (STATES_KEY,)).fetchone():
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE readings SET sent = 2 WHERE sent = 1")
            self._db.execute("INSERT INTO meta VALUES (?, ?)", (STATES_KEY, STATES_VALUE))

    def unsent(self, limit: int) -> list[StoredReading]:
        """Oldest readings not yet acknowledged by the broker (state UNSENT)."""
        rows = self._db.execute(
            "SELECT seq, unit, cycle, ts, vals FROM readings WHERE sent = 0 ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            StoredReading(r[0], r[1], r[2], r[3], np.frombuffer(r[4], dtype="<f4").copy())
            for r in rows
        ]

    def unsent_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM readings WHERE sent = 0").fetchone()[0])

    def unconfirmed_count(self) -> int:
        """Readings the broker acknowledged that ingest has not confirmed (state SENT)."""
        return int(self._db.execute("SELECT COUNT(*) FROM readings WHERE sent = 1").fetchone()[0])

    def mark_sent(self, seqs: Iterable[int], *, confirmed: bool = False) -> None:
        """The broker acknowledged ``seqs``: UNSENT -> SENT (-> STORED with ``confirmed``,
        when nothing will confirm them). Readings in another state are left alone."""
        state = int(TelemetryState.STORED if confirmed else TelemetryState.SENT)
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE readings SET sent = ? WHERE seq = ? AND sent = 0",
                    [(state, s) for s in seqs],
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot mark readings sent: {exc}") from exc

    def confirm_stored(self, through_seq: int, through_ts: float) -> int:
        """Ingest stored every reading up to ``through_seq`` (device time ``through_ts``):
        SENT readings with ``seq <= through_seq`` and ``ts <= through_ts`` become STORED.

        A reading with a later ``ts`` is not covered: the watermark belongs to an earlier
        counter (:class:`~fedge.messages.StoredAck`). UNSENT readings are never covered
        (the broker never acknowledged them, so ingest cannot have them unless they were
        sent before); one re-sent and in flight is covered once its new PUBACK arrives,
        when the agent applies the watermark again. The
        watermark is kept in ``meta`` (``fedge agent status`` reads it). Returns how
        many readings it covered.
        """
        try:
            with self._db:
                self._db.execute("BEGIN")
                cur = self._db.execute(
                    "UPDATE readings SET sent = 2 WHERE sent = 1 AND seq <= ? AND ts <= ?",
                    (through_seq, through_ts),
                )
                if self._watermark != (through_seq, through_ts):
                    self._db.executemany(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        [
                            ("stored_through_seq", str(through_seq)),
                            ("stored_through_ts", repr(float(through_ts))),
                        ],
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot confirm stored readings: {exc}") from exc
        self._watermark = (through_seq, through_ts)
        return int(cur.rowcount)

    def resend_unconfirmed(self, *, through_seq: int | None = None) -> int:
        """SENT -> UNSENT (those with ``seq <= through_seq``): the broker may have lost
        them, they go again; returns how many."""
        sql, args = "UPDATE readings SET sent = 0 WHERE sent = 1", list[int]()
        if through_seq is not None:
            sql, args = sql + " AND seq <= ?", [through_seq]
        try:
            with self._db:
                self._db.execute("BEGIN")
                cur = self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot queue readings for re-sending: {exc}") from exc
        return int(cur.rowcount)

    def newest_unconfirmed(self) -> int | None:
        """The highest seq in state SENT (None: none)."""
        row = self._db.execute("SELECT MAX(seq) FROM readings WHERE sent = 1").fetchone()
        return None if row[0] is None else int(row[0])

    def unconfirmed_from(self) -> tuple[int, float] | None:
        """``(seq, ts)`` of the lowest reading not confirmed stored (UNSENT or SENT), or
        None if every reading is STORED: what the agent still owes ingest
        (``TelemetryBatch.unconfirmed_from_seq``). It only ever rises, as readings are
        confirmed or pruned: no reading goes back to UNSENT or SENT from STORED."""
        # Two MIN()s over the partial indexes instead of one scan over `sent < 2`.
        try:
            row = self._db.execute(
                "SELECT seq, ts FROM readings WHERE seq = (SELECT MIN(low) FROM ("
                "SELECT MIN(seq) AS low FROM readings WHERE sent = 0 UNION ALL "
                "SELECT MIN(seq) FROM readings WHERE sent = 1))"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the lowest unconfirmed reading: {exc}") from exc
        return None if row is None else (int(row[0]), float(row[1]))

    def stored_watermark(self) -> tuple[int, float] | None:
        """The last watermark :meth:`confirm_stored` applied: ``(through_seq, through_ts)``."""
        return self._watermark

    def _read_watermark(self) -> tuple[int, float] | None:
        meta = dict(
            self._db.execute(
                "SELECT key, value FROM meta WHERE key IN "
                "('stored_through_seq', 'stored_through_ts')"
            ).fetchall()
        )
        if len(meta) != 2:
            return None
        return int(meta["stored_through_seq"]), float(meta["stored_through_ts"])
