"""Maintenance tables in the agent's SQLite store: events, lives, health-monitor state.

They live in the same file as the readings (:class:`edge_agent.store.ReadingStore`),
so that a re-cut of the lives and the readings it moves commit together, and so that
``fedge agent event --store PATH`` can add an event to a *running* agent's store from
a second process (WAL mode lets one writer in while the agent reads; SQLite's busy
timeout waits for the agent's short write transactions). The agent notices new
events by polling ``events`` for ``seq`` above the last one it saw.

Tables::

    events(seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, ts REAL,
           body TEXT, sent INTEGER, applied INTEGER)
        body: the MaintenanceEvent JSON; sent: acknowledged by the broker (or came
        from it); applied: the agent has cut its lives at it
    lives(unit INTEGER PRIMARY KEY, start_ts REAL, end_ts REAL, end_kind TEXT,
          opened_by TEXT, events TEXT, n_readings INTEGER, first_seq INTEGER)
        one row per life (the readings' ``unit``); the running one has end_kind NULL
        and its n_readings/first_seq as of the last re-cut (the agent counts on)
    health_state(unit INTEGER PRIMARY KEY, first_seq INTEGER, state BLOB, extra TEXT)
        the current life's HealthMonitor state (numpy .npz, no pickles) and alert log
    meta(key, value)            fleet and device, for the CLI
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from fedge.errors import DataError, EventError, StorageError
from fedge.lives import EventKind, Life, MaintenanceEvent

__all__ = ["EventRecord", "LifeRow", "MaintenanceStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT    NOT NULL UNIQUE,
    ts       REAL    NOT NULL,
    body     TEXT    NOT NULL,
    sent     INTEGER NOT NULL DEFAULT 0,
    applied  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_unsent ON events (seq) WHERE sent = 0;
CREATE TABLE IF NOT EXISTS lives (
    unit       INTEGER PRIMARY KEY,
    start_ts   REAL    NOT NULL,
    end_ts     REAL,
    end_kind   TEXT,
    opened_by  TEXT,
    events     TEXT    NOT NULL,
    n_readings INTEGER NOT NULL,
    first_seq  INTEGER
);
CREATE TABLE IF NOT EXISTS health_state (
    unit      INTEGER PRIMARY KEY,
    first_seq INTEGER,
    state     BLOB    NOT NULL,
    extra     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored event: its row number, the event, whether it was sent and applied."""

    seq: int
    event: MaintenanceEvent
    sent: bool
    applied: bool


@dataclass(frozen=True, slots=True)
class LifeRow:
    """One life as stored (``unit`` is the readings' unit number)."""

    unit: int
    start_ts: float
    end_ts: float | None
    end_kind: EventKind | None
    opened_by: str | None
    events: tuple[str, ...]
    n_readings: int
    first_seq: int | None

    def life(self, n_readings: int | None = None) -> Life:
        """As a :class:`fedge.lives.Life` over ``n_readings`` readings (default: all)."""
        return Life(
            index=self.unit,
            start_ts=self.start_ts,
            end_ts=self.end_ts,
            end_kind=self.end_kind,
            first=0,
            n_readings=self.n_readings if n_readings is None else n_readings,
            opened_by=self.opened_by,
            events=self.events,
        )


class MaintenanceStore:
    """The maintenance tables over a SQLite connection (the agent shares its store's)."""

    def __init__(self, db: sqlite3.Connection, *, path: str) -> None:
        self.path = path
        self._db = db
        self._owned = False
        self._events_added = 0  # events inserted through this object (see events_marker)
        try:
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the maintenance tables of {path}: {exc}") from exc

    @classmethod
    def open(cls, path: Path) -> MaintenanceStore:
        """Open an existing agent store from another process (the CLI)."""
        if not path.is_file():
            raise StorageError(f"no agent store at {path}")
        try:
            # A 10 s busy timeout: the agent's write transactions are short.
            db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open agent store {path}: {exc}") from exc
        try:
            store = cls(db, path=str(path))
        except StorageError:
            db.close()
            raise
        store._owned = True
        return store

    def close(self) -> None:
        """Close the connection if this object opened it."""
        if self._owned:
            self._db.close()

    # Identity -----------------------------------------------------------------------
    def identity(self) -> tuple[str, str] | None:
        """``(fleet, device)`` of the agent that owns the store, once it has run."""
        try:
            rows = dict(
                self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('fleet', 'device')"
                ).fetchall()
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read {self.path}: {exc}") from exc
        if "fleet" in rows and "device" in rows:
            return str(rows["fleet"]), str(rows["device"])
        return None

    def set_identity(self, fleet: str, device: str) -> None:
        """Record (or check) which device this store belongs to."""
        known = self.identity()
        if known is not None and known != (fleet, device):
            raise StorageError(
                f"store {self.path} belongs to {known[0]}/{known[1]}, not {fleet}/{device}"
            )
        if known is None:
            self._write(
                "INSERT OR REPLACE INTO meta VALUES ('fleet', ?), ('device', ?)", (fleet, device)
            )

    # Events -------------------------------------------------------------------------
    def add_event(self, event: MaintenanceEvent, *, sent: bool, applied: bool = False) -> bool:
        """Store ``event`` once; True if it is new.

        The same ``event_id`` again is a no-op (at-least-once delivery); the same id
        with other contents raises :class:`EventError`.
        """
        body = event.model_dump_json()
        try:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO events (event_id, ts, body, sent, applied) "
                "VALUES (?, ?, ?, ?, ?)",
                (event.event_id, event.ts, body, int(sent), int(applied)),
            )
            if cur.rowcount:
                self._events_added += 1
                return True
            row = self._db.execute(
                "SELECT body FROM events WHERE event_id = ?", (event.event_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store event {event.event_id}: {exc}") from exc
        if row is not None and MaintenanceEvent.model_validate_json(row[0]) != event:
            raise EventError(f"event id {event.event_id} already names a different event")
        return False

    def events_marker(self) -> tuple[int, int]:
        """Changes when events may have been added since the last call returned the same.

        SQLite's ``data_version`` moves when another connection (another process:
        ``fedge agent event``) commits to the file; this connection's own inserts
        (:meth:`add_event`) are counted here. One pragma instead of a query, for an
        agent that looks for new events on every step.
        """
        try:
            row = self._db.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the data version of {self.path}: {exc}") from exc
        return int(row[0]), self._events_added

    def events_after(self, seq: int, *, limit: int = 1000) -> list[EventRecord]:
        """Events stored after row ``seq``, oldest first."""
        return self._events("WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def unsent_events(self, limit: int) -> list[EventRecord]:
        """Events not yet acknowledged by the broker, oldest first."""
        return self._events("WHERE sent = 0 ORDER BY seq LIMIT ?", (limit,))

    def applied_events(self, *, since_ts: float | None) -> list[MaintenanceEvent]:
        """Applied events at or after ``since_ts`` (all of them for None)."""
        if since_ts is None:
            records = self._events("WHERE applied = 1", ())
        else:
            records = self._events("WHERE applied = 1 AND ts >= ?", (since_ts,))
        return [r.event for r in records]

    def all_events(self) -> list[EventRecord]:
        """Every stored event, in the order stored."""
        return self._events("ORDER BY seq", ())

    def mark_events(self, seqs: Sequence[int], *, column: str) -> None:
        """Set ``sent`` or ``applied`` on the events of rows ``seqs``."""
        if column not in ("sent", "applied"):
            raise ValueError(f"unknown event flag {column!r}")
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"UPDATE events SET {column} = 1 WHERE seq = ?",  # noqa: S608 - fixed names
                    [(s,) for s in seqs],
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot update events in {self.path}: {exc}") from exc

    def _events(self, where: str, args: tuple[object, ...]) -> list[EventRecord]:
        try:
            rows = self._db.execute(
                f"SELECT seq, body, sent, applied FROM events {where}",  # noqa: S608 - fixed SQL
                args,
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read events from {self.path}: {exc}") from exc
        out = []
        for seq, body, sent, applied in rows:
            try:
                event = MaintenanceEvent.model_validate_json(body)
            except ValidationError as exc:
                raise StorageError(f"event row {seq} of {self.path} is corrupt: {exc}") from exc
            out.append(EventRecord(int(seq), event, bool(sent), bool(applied)))
        return out

    # Lives --------------------------------------------------------------------------
    def lives(self, *, from_unit: int = 0) -> list[LifeRow]:
        """Stored lives from ``from_unit`` on, by unit."""
        try:
            rows = self._db.execute(
                "SELECT unit, start_ts, end_ts, end_kind, opened_by, events, n_readings, "
                "first_seq FROM lives WHERE unit >= ? ORDER BY unit",
                (from_unit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read lives from {self.path}: {exc}") from exc
        return [
            LifeRow(
                unit=int(r[0]),
                start_ts=float(r[1]),
                end_ts=None if r[2] is None else float(r[2]),
                end_kind=cast("EventKind | None", r[3]),
                opened_by=r[4],
                events=tuple(json.loads(r[5])),
                n_readings=int(r[6]),
                first_seq=None if r[7] is None else int(r[7]),
            )
            for r in rows
        ]

    @staticmethod
    def replace_lives(db: sqlite3.Connection, *, from_unit: int, rows: Sequence[LifeRow]) -> None:
        """Within the caller's transaction: lives from ``from_unit`` on become ``rows``."""
        db.execute("DELETE FROM lives WHERE unit >= ?", (from_unit,))
        db.executemany(
            "INSERT INTO lives VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.unit,
                    r.start_ts,
                    r.end_ts,
                    r.end_kind,
                    r.opened_by,
                    json.dumps(list(r.events)),
                    r.n_readings,
                    r.first_seq,
                )
                for r in rows
            ],
        )

    def insert_life(self, row: LifeRow) -> None:
        """Add the running life ``row`` (the first reading of a store with no lives yet)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self.replace_lives(self._db, from_unit=row.unit, rows=[row])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot add life {row.unit} to {self.path}: {exc}") from exc

    # Health-monitor state -------------------------------------------------------------
    def save_health(
        self,
        unit: int,
        *,
        first_seq: int | None,
        state: Mapping[str, npt.NDArray[Any]],
        extra: Mapping[str, object],
    ) -> None:
        """Persist the current life's monitor state (older lives' states are dropped)."""
        buf = io.BytesIO()
        np.savez(buf, **dict(state))  # type: ignore[arg-type]
        self._write(
            "INSERT OR REPLACE INTO health_state VALUES (?, ?, ?, ?)",
            (unit, first_seq, buf.getvalue(), json.dumps(dict(extra))),
        )
        self._write("DELETE FROM health_state WHERE unit != ?", (unit,))

    def load_health(
        self, unit: int, *, first_seq: int | None
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]] | None:
        """The saved state of life ``unit`` if it is still the same life, else None."""
        try:
            row = self._db.execute(
                "SELECT first_seq, state, extra FROM health_state WHERE unit = ?", (unit,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read health state from {self.path}: {exc}") from exc
        if row is None or row[0] != first_seq:
            return None
        try:
            with np.load(io.BytesIO(row[1]), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            extra = json.loads(row[2])
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise DataError(f"health state of unit {unit} in {self.path} is corrupt") from exc
        if not isinstance(extra, dict):
            raise DataError(f"health state of unit {unit} in {self.path} is corrupt")
        return arrays, extra

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot write to {self.path}: {exc}") from exc
