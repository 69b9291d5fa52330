"""SQLite sink: the zero-setup default when no InfluxDB URL is configured.

Points are stored with the same schema as in InfluxDB (see :mod:`fedge.points`)
in one generic table; a point is identified by measurement + tag set + time (the
table's primary key), so redelivered data never doubles:

* ``telemetry`` readings are never overwritten: a reading whose point already
  exists is ignored. If the stored one has the same fields it was a redelivery
  (counted in ``SinkStats.points_duplicate``); if its fields differ, the first
  one is kept and the clash counted in ``SinkStats.points_conflicting`` (and
  logged): a device that sent two different readings for one instant.
* every other measurement has InfluxDB's semantics: writing the same point again
  merges its fields (last write wins).

A write returns once its transaction is committed: with ``synchronous="NORMAL"``
(the default) a committed write survives a crash of the process, with ``"FULL"``
also a crash of the machine (power loss).

Tables and views::

    points(measurement TEXT, tags TEXT, time_ns INTEGER, fields TEXT,
           PRIMARY KEY (measurement, tags, time_ns))
        tags: JSON object with sorted keys (canonical, so it identifies the series)
        fields: JSON object; fields keep their types (int, float, bool, string)

    -- one view per measurement with its tags as columns, e.g.
    telemetry(time_ns, fleet, device, site, unit, fields)
    prediction(time_ns, fleet, device, fields)
    device_health(time_ns, fleet, device, site, fields)
    fl_round(time_ns, fleet, task, outcome, fields)
    alert(time_ns, fleet, device, kind, fields)
    event(time_ns, fleet, device, kind, fields)

Example::

    SELECT device, time_ns, json_extract(fields, '$.rul') AS rul
    FROM prediction WHERE fleet = 'demo' ORDER BY time_ns DESC LIMIT 10;
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from aggregator.sinks.base import SinkStats
from fedge.errors import SinkError
from fedge.points import FieldValue, Point
from fedge.storage import open_sqlite

__all__ = ["SqliteSink"]

log = logging.getLogger(__name__)

# Measurements whose points are first-write-wins (a stored reading is never overwritten).
_IMMUTABLE = frozenset({"telemetry"})

_UPSERT = (
    "INSERT INTO points (measurement, tags, time_ns, fields) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (measurement, tags, time_ns) "
    "DO UPDATE SET fields = json_patch(points.fields, excluded.fields)"
)
_INSERT_NEW = (
    "INSERT INTO points (measurement, tags, time_ns, fields) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (measurement, tags, time_ns) DO NOTHING"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, tags, time_ns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS points_by_time ON points (measurement, time_ns);
CREATE VIEW IF NOT EXISTS telemetry AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.device') AS device,
        json_extract(tags, '$.site') AS site,
        json_extract(tags, '$.unit') AS unit,
        fields
    FROM points WHERE measurement = 'telemetry';
CREATE VIEW IF NOT EXISTS prediction AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.device') AS device,
        fields
    FROM points WHERE measurement = 'prediction';
CREATE VIEW IF NOT EXISTS device_health AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.device') AS device,
        json_extract(tags, '$.site') AS site,
        fields
    FROM points WHERE measurement = 'device_health';
CREATE VIEW IF NOT EXISTS fl_round AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.task') AS task,
        json_extract(tags, '$.outcome') AS outcome,
        fields
    FROM points WHERE measurement = 'fl_round';
CREATE VIEW IF NOT EXISTS alert AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.device') AS device,
        json_extract(tags, '$.kind') AS kind,
        fields
    FROM points WHERE measurement = 'alert';
CREATE VIEW IF NOT EXISTS event AS
    SELECT time_ns,
        json_extract(tags, '$.fleet') AS fleet,
        json_extract(tags, '$.device') AS device,
        json_extract(tags, '$.kind') AS kind,
        fields
    FROM points WHERE measurement = 'event';
"""


class SqliteSink:
    """Writes points into a local SQLite file (WAL mode). Thread-safe, synchronous."""

    def __init__(
        self, path: Path | str, *, synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # serialises the connection across threads
        self._db = open_sqlite(
            self.path, schema=_SCHEMA, what="SQLite sink", error=SinkError, synchronous=synchronous
        )
        self._written = 0
        self._duplicate = 0
        self._conflicting = 0
        self._batches = 0
        self._errors = 0
        self._last_error: str | None = None
        self._closed = False

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise SinkError(f"SQLite sink {self.path} is closed")
            try:
                yield self._db
            except sqlite3.Error as exc:
                self._errors += 1
                self._last_error = str(exc)
                raise SinkError(f"SQLite sink {self.path}: {exc}") from exc

    @property
    def accepts_line_protocol(self) -> bool:
        """False: stores points as rows, not line protocol."""
        return False

    def write(self, points: Sequence[Point]) -> None:
        """Store ``points`` in one committed transaction (see the module docs for a repeat)."""
        if not points:
            return
        new_rows: list[tuple[str, str, int, str]] = []
        merged_rows: list[tuple[str, str, int, str]] = []
        for p in points:
            row = (
                p.measurement,
                # Sorted keys make the JSON canonical: it is the series identity.
                json.dumps(p.tag_dict, sort_keys=True),
                p.time_ns,
                json.dumps(p.field_dict),
            )
            (new_rows if p.measurement in _IMMUTABLE else merged_rows).append(row)
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                if new_rows:
                    db.executemany(_INSERT_NEW, new_rows)
                inserted = db.total_changes - before
                repeats = len(new_rows) - inserted
                conflicts = self._conflicts(db, new_rows) if repeats else 0
                if merged_rows:
                    db.executemany(_UPSERT, merged_rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._written += inserted + len(merged_rows)
            self._duplicate += repeats - conflicts
            self._conflicting += conflicts
            self._batches += 1
        if conflicts:
            log.warning(
                "%d telemetry reading(s) clash with a stored reading of the same device and "
                "time but other values; the stored ones are kept",
                conflicts,
            )

    @staticmethod
    def _conflicts(db: sqlite3.Connection, rows: Sequence[tuple[str, str, int, str]]) -> int:
        """Of ``rows`` just offered with DO NOTHING, how many differ from what is stored.

        Called only when some row was not inserted. A row that was inserted reads back
        equal; a repeat of the stored point too; only a clash reads back different.
        Fields are compared parsed, so the key order of older rows does not matter.
        """
        conflicts = 0
        for measurement, tags, time_ns, fields in rows:
            stored = db.execute(
                "SELECT fields FROM points WHERE measurement = ? AND tags = ? AND time_ns = ?",
                (measurement, tags, time_ns),
            ).fetchone()
            if stored is not None and stored[0] != fields and json.loads(stored[0]) != json.loads(
                fields
            ):
                conflicts += 1
        return conflicts

    def query(
        self,
        measurement: str,
        *,
        tags: Mapping[str, str] | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
    ) -> list[Point]:
        """Points of ``measurement`` matching every tag in ``tags``, oldest first."""
        sql = "SELECT measurement, time_ns, tags, fields FROM points WHERE measurement = ?"
        args: list[object] = [measurement]
        for key, value in (tags or {}).items():
            sql += " AND json_extract(tags, ?) = ?"
            args += [f'$."{key}"', value]
        if start_ns is not None:
            sql += " AND time_ns >= ?"
            args.append(start_ns)
        if end_ns is not None:
            sql += " AND time_ns < ?"
            args.append(end_ns)
        sql += " ORDER BY time_ns"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._locked() as db:
            rows = db.execute(sql, args).fetchall()
        out = []
        for name, time_ns, tag_json, field_json in rows:
            tag_map: dict[str, str] = json.loads(tag_json)
            field_map: dict[str, FieldValue] = json.loads(field_json)
            out.append(Point.of(name, dict(tag_map), dict(field_map), int(time_ns)))
        return out

    def count(self, measurement: str | None = None) -> int:
        """Number of stored points (of one measurement, or all)."""
        with self._locked() as db:
            if measurement is None:
                row = db.execute("SELECT COUNT(*) FROM points").fetchone()
            else:
                row = db.execute(
                    "SELECT COUNT(*) FROM points WHERE measurement = ?", (measurement,)
                ).fetchone()
        return int(row[0])

    def flush(self, timeout: float = 10.0) -> None:
        """Nothing to do: every write is committed before :meth:`write` returns."""

    def close(self) -> None:
        """Checkpoint the WAL and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # closing anyway; SQLite replays the WAL on next open
            finally:
                self._db.close()

    @property
    def stats(self) -> SinkStats:
        """Current counters (``points_written``: new telemetry rows plus other upserts)."""
        with self._lock:
            return SinkStats(
                points_written=self._written,
                points_duplicate=self._duplicate,
                points_conflicting=self._conflicting,
                batches_written=self._batches,
                write_errors=self._errors,
                last_error=self._last_error,
            )
