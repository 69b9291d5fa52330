"""The agent's local store of readings: SQLite in WAL mode, bounded, store-and-forward.

Every reading gets a per-device sequence number (``AUTOINCREMENT``: never reused,
even after pruning, so the counter restarts only with a new store file) and a
telemetry state (:mod:`edge_agent.store_telemetry`): unsent, sent (the broker
acknowledged it) or stored (ingest confirmed it durable), so a broker outage or a
reboot loses nothing unsent and a broker crash nothing unconfirmed
(:mod:`edge_agent.telemetry_confirm`). The state only says what telemetry still has
to do: a reading stays in the store as training history in every state, until the
size bound prunes it (confirmed readings first).
Units that ran to failure carry their length, which labels their readings with
remaining useful life for local training (a unit is one *life* of the machine, cut at
maintenance events by :mod:`edge_agent.maintenance`, which re-cuts them with
:meth:`ReadingStore.relabel` when an event arrives late). The first ``MAX_BASELINE_CYCLES``
readings of every unit are also kept in ``unit_head``, which pruning leaves
alone while the unit has readings: they are the unit's baseline (see
:mod:`fedge.data.context`), needed for as long as the unit runs.

The store also keeps the error-feedback residual of compressed updates (what
quantisation and top-k left out of the last update, added to the next one), so
that a restart does not lose it; it is keyed by the model spec and codec it was
computed under and dropped when either changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from edge_agent.store_telemetry import StoredReading, TelemetryState, TelemetryStates
from fedge.errors import FrameError, StorageError
from fedge.safetensors_view import load_view
from fedge.spec import MAX_BASELINE_CYCLES
from fedge.storage import open_sqlite

__all__ = ["ReadingIndex", "ReadingStore", "StoredReading", "TelemetryState", "UnitData"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    unit  INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    ts    REAL    NOT NULL,
    vals  BLOB    NOT NULL,
    sent  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS readings_unsent ON readings (seq) WHERE sent = 0;
CREATE INDEX IF NOT EXISTS readings_unconfirmed ON readings (seq) WHERE sent = 1;
CREATE INDEX IF NOT EXISTS readings_unit ON readings (unit, cycle);
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE TABLE IF NOT EXISTS units (
    unit     INTEGER PRIMARY KEY,
    n_cycles INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS unit_head (
    unit  INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    vals  BLOB    NOT NULL,
    PRIMARY KEY (unit, cycle)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS running_model (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL,
    frame   BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS residual (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    key   TEXT NOT NULL,
    body  BLOB NOT NULL
);
"""

# On-disk bytes per stored reading besides its float32 values: the row (seq, unit,
# cycle, ts, sent, record header) and its index entries. Measured: 100k readings of 15
# features take 111 bytes each (60 of values); 64 leaves room for pages that pruning
# leaves half empty.
_ROW_OVERHEAD_BYTES = 64


@dataclass(frozen=True, slots=True)
class UnitData:
    """Readings of one unit in cycle order; ``n_cycles`` is set once the unit failed."""

    unit: int
    cycles: np.ndarray
    values: np.ndarray
    n_cycles: int | None
    ts: np.ndarray | None = None

    def rul(self) -> np.ndarray:
        """Remaining useful life of each reading (only for failed units)."""
        if self.n_cycles is None:
            raise ValueError(f"unit {self.unit} has not failed; its RUL is unknown")
        return (self.n_cycles - 1 - self.cycles).astype(np.float32)


@dataclass(frozen=True, slots=True)
class ReadingIndex:
    """Where some readings are: sequence number, unit, cycle and time, in time order."""

    seq: np.ndarray
    unit: np.ndarray
    cycle: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return int(self.seq.shape[0])


class ReadingStore(TelemetryStates):
    """SQLite-backed, size-bounded reading store for one device (telemetry states:
    :class:`~edge_agent.store_telemetry.TelemetryStates`)."""

    def __init__(
        self,
        path: Path | str,
        *,
        n_features: int,
        max_readings: int = 500_000,
        max_bytes: int | None = None,
    ) -> None:
        self.path = str(path)
        self.n_features = n_features
        if max_bytes is not None:
            max_readings = min(max_readings, self.readings_for_bytes(max_bytes, n_features))
        self.max_readings = max_readings
        # Readings the size bound pruned before they were sent / confirmed stored.
        self.dropped_unsent = 0
        self.dropped_unconfirmed = 0
        self._watermark: tuple[int, float] | None = None
        # Built on one thread and handed to the agent's thread, its only user then.
        # synchronous=NORMAL is durable across application crashes in WAL mode; only a
        # power loss can cost the last few transactions, and it is much cheaper on SD cards.
        self._floor: tuple[int | None] | None = None  # model_floor(), once read
        self._db = open_sqlite(
            Path(self.path),
            schema=_SCHEMA,
            what="reading store",
            error=StorageError,
            create_parents=False,
        )
        try:
            self._check_features()
            self._migrate_states()
            self._count = int(self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])
            self._backfill_heads()
            self._watermark = self._read_watermark()
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(f"cannot open reading store {self.path}: {exc}") from exc
        except StorageError:
            self._db.close()
            raise

    def _check_features(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='n_features'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('n_features', ?)", (str(self.n_features),))
        elif int(row[0]) != self.n_features:
            raise StorageError(
                f"store {self.path} holds {row[0]} features per reading, "
                f"source has {self.n_features}"
            )

    def _backfill_heads(self) -> None:
        """Stores written before ``unit_head`` existed: take the heads from the readings."""
        if self._count and self._db.execute("SELECT 1 FROM unit_head LIMIT 1").fetchone() is None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR IGNORE INTO unit_head SELECT unit, cycle, vals FROM readings "
                    "WHERE cycle < ?",
                    (MAX_BASELINE_CYCLES,),
                )

    @staticmethod
    def readings_for_bytes(max_bytes: int, n_features: int) -> int:
        """How many readings of ``n_features`` fit in ``max_bytes`` of store (at least 1000)."""
        return max(1000, max_bytes // (4 * n_features + _ROW_OVERHEAD_BYTES))

    def close(self) -> None:
        self._db.close()

    # Error-feedback residual --------------------------------------------------------------
    def load_residual(self, key: str) -> dict[str, np.ndarray] | None:
        """The residual saved under ``key``, or None (one saved under another key is dropped).

        A residual that no longer parses (a torn write, a foreign file) is dropped too:
        losing it only delays what it held, it never breaks training.
        """
        row = self._db.execute("SELECT key, body FROM residual WHERE id = 0").fetchone()
        if row is None:
            return None
        if row[0] == key:
            try:
                return {k: v.copy() for k, v in load_view(memoryview(row[1])).items()}
            except FrameError:
                pass
        self.save_residual(key, None)
        return None

    def save_residual(self, key: str, tensors: Mapping[str, np.ndarray] | None) -> None:
        """Replace the residual with ``tensors`` under ``key`` (None deletes it)."""
        try:
            if tensors is None:
                self._db.execute("DELETE FROM residual WHERE id = 0")
            else:
                body = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
                self._db.execute(
                    "INSERT OR REPLACE INTO residual VALUES (0, ?, ?)", (key, body)
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store the update residual: {exc}") from exc

    def __len__(self) -> int:
        return self._count

    def _blob(self, values: np.ndarray) -> bytes:
        arr = np.asarray(values, dtype="<f4")
        if arr.shape != (self.n_features,):
            raise StorageError(f"reading has shape {arr.shape}, store expects ({self.n_features},)")
        return arr.tobytes()

    def append(self, *, unit: int, cycle: int, ts: float, values: np.ndarray) -> int:
        """Store one reading; returns its sequence number."""
        blob = self._blob(values)
        insert = "INSERT INTO readings (unit, cycle, ts, vals) VALUES (?, ?, ?, ?)"
        try:
            if cycle >= MAX_BASELINE_CYCLES:
                cur = self._db.execute(insert, (unit, cycle, ts, blob))
            else:
                with self._db:
                    self._db.execute("BEGIN")
                    cur = self._db.execute(insert, (unit, cycle, ts, blob))
                    self._db.execute(
                        "INSERT OR REPLACE INTO unit_head VALUES (?, ?, ?)", (unit, cycle, blob)
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store reading: {exc}") from exc
        self._count += 1
        self._enforce_bound()
        assert cur.lastrowid is not None  # noqa: S101 - INSERT always sets it
        return int(cur.lastrowid)

    def append_unit(
        self, *, unit: int, values: np.ndarray, ts: Sequence[float], failed: bool, sent: bool = True
    ) -> None:
        """Bulk-store a whole unit (e.g. history logged before the agent ran).

        ``sent=True`` (history): the readings are never published (state STORED).
        """
        state = TelemetryState.STORED if sent else TelemetryState.UNSENT
        rows = [
            (unit, i, float(ts[i]), self._blob(values[i]), int(state))
            for i in range(values.shape[0])
        ]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO readings (unit, cycle, ts, vals, sent) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO unit_head VALUES (?, ?, ?)",
                    [(r[0], r[1], r[3]) for r in rows[:MAX_BASELINE_CYCLES]],
                )
                if failed:
                    self._db.execute(
                        "INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, len(rows))
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store unit {unit}: {exc}") from exc
        self._count += len(rows)
        self._enforce_bound()

    def mark_failed(self, unit: int, n_cycles: int) -> None:
        """Record that ``unit`` failed after ``n_cycles`` cycles (labels its readings)."""
        try:
            self._db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, n_cycles))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot mark unit {unit} failed: {exc}") from exc

    def live_position(self) -> tuple[int, int]:
        """Where the next reading of a live source goes: ``(unit, cycle)``.

        The unit of the newest reading if it is still running (its next cycle), else a
        new unit after it (cycle 0); unit 1 in an empty store.
        """
        row = self._db.execute(
            "SELECT unit, MAX(cycle) FROM readings WHERE unit = (SELECT MAX(unit) FROM readings)"
        ).fetchone()
        if row is None or row[0] is None:
            return 1, 0
        unit, last = int(row[0]), int(row[1])
        failed = self._db.execute("SELECT 1 FROM units WHERE unit = ?", (unit,)).fetchone()
        return (unit + 1, 0) if failed else (unit, last + 1)

    # The running global model ------------------------------------------------------------
    def save_model(self, version: int, frame: bytes) -> None:
        """Keep the running global model (its frame as received) and raise the version
        floor in ``meta`` to ``version`` (the floor never goes down)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR REPLACE INTO running_model VALUES (0, ?, ?)", (version, frame)
                )
                floor = self.model_floor()
                raised = floor is None or version > floor
                if raised:
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('model_version', ?)", (str(version),)
                    )
        except sqlite3.Error as exc:
            self._floor = None  # re-read: the transaction was rolled back
            raise StorageError(f"cannot save the running model: {exc}") from exc
        if raised:
            self._floor = (version,)

    def load_model(self) -> tuple[int, bytes] | None:
        """The running model saved by :meth:`save_model`: ``(version, frame)``, or None."""
        row = self._db.execute("SELECT version, frame FROM running_model WHERE id = 0").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def model_floor(self) -> int | None:
        """The highest global model version this device ever ran (None if none).

        Read once, then kept: this store's connection is its only writer (every new
        global model asks for it; ``fedge agent status`` only reads the file).
        """
        if self._floor is None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'model_version'").fetchone()
            self._floor = (None if row is None else int(row[0]),)
        return self._floor[0]

    def set_meta(self, values: dict[str, str | None]) -> None:
        """Record facts about the agent for ``fedge agent status`` (None deletes a key)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                for key, value in values.items():
                    if value is None:
                        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)
                        )
        except sqlite3.Error as exc:
            self._floor = None  # re-read: the transaction was rolled back
            raise StorageError(f"cannot record agent state: {exc}") from exc
        if "model_version" in values:
            version = values["model_version"]
            self._floor = (None if version is None else int(version),)

    def failed_units(self) -> list[int]:
        return [int(r[0]) for r in self._db.execute("SELECT unit FROM units ORDER BY unit")]

    def unit_data(self, unit: int) -> UnitData:
        rows = self._db.execute(
            "SELECT cycle, vals, ts FROM readings WHERE unit = ? ORDER BY cycle", (unit,)
        ).fetchall()
        n = self._db.execute("SELECT n_cycles FROM units WHERE unit = ?", (unit,)).fetchone()
        cycles = np.array([r[0] for r in rows], dtype=np.int64)
        values = (
            np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(
                len(rows), self.n_features
            )
            if rows
            else np.zeros((0, self.n_features), np.float32)
        )
        return UnitData(
            unit,
            cycles,
            values.astype(np.float32),
            None if n is None else int(n[0]),
            ts=np.array([r[2] for r in rows], dtype=np.float64),
        )

    def head(self, unit: int) -> np.ndarray:
        """The unit's first readings (cycles 0, 1, ... without gaps), shape (<=64, F).

        Empty if the store never saw the unit's first cycle (e.g. the agent was
        installed on a machine already running).
        """
        rows = self._db.execute(
            "SELECT cycle, vals FROM unit_head WHERE unit = ? ORDER BY cycle", (unit,)
        ).fetchall()
        n = 0
        while n < len(rows) and rows[n][0] == n:
            n += 1
        if n == 0:
            return np.zeros((0, self.n_features), np.float32)
        data = np.frombuffer(b"".join(r[1] for r in rows[:n]), dtype="<f4")
        return data.reshape(n, self.n_features).astype(np.float32)

    def latest(self, unit: int, count: int) -> np.ndarray:
        """The last ``count`` readings of ``unit`` in cycle order, shape (<=count, F)."""
        rows = self._db.execute(
            "SELECT vals FROM readings WHERE unit = ? ORDER BY cycle DESC LIMIT ?", (unit, count)
        ).fetchall()
        if not rows:
            return np.zeros((0, self.n_features), np.float32)
        data = np.frombuffer(b"".join(r[0] for r in reversed(rows)), dtype="<f4")
        return data.reshape(len(rows), self.n_features).astype(np.float32)

    # Lives (edge_agent.maintenance) ------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        """The store's connection, for tables kept in the same file and transactions
        (:mod:`edge_agent.maintenance_store`). Same thread rules as the store."""
        return self._db

    def unit_rows(self, unit: int, *, after_seq: int = 0) -> list[StoredReading]:
        """Readings of ``unit`` with ``seq > after_seq``, in time order."""
        rows = self._db.execute(
            "SELECT seq, unit, cycle, ts, vals FROM readings WHERE unit = ? AND seq > ? "
            "ORDER BY ts, seq",
            (unit, after_seq),
        ).fetchall()
        return [
            StoredReading(r[0], r[1], r[2], r[3], np.frombuffer(r[4], dtype="<f4").copy())
            for r in rows
        ]

    def reading_index(self, *, from_unit: int) -> ReadingIndex:
        """Every reading of units ``>= from_unit``, ordered by (ts, seq)."""
        rows = self._db.execute(
            "SELECT seq, unit, cycle, ts FROM readings WHERE unit >= ? ORDER BY ts, seq",
            (from_unit,),
        ).fetchall()
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), 4)
        return ReadingIndex(
            seq=arr[:, 0].astype(np.int64),
            unit=arr[:, 1].astype(np.int64),
            cycle=arr[:, 2].astype(np.int64),
            ts=arr[:, 3].copy(),
        )

    def unit_at_or_after(self, ts: float) -> int | None:
        """The unit of the first reading at or after ``ts`` (None: no such reading)."""
        row = self._db.execute(
            "SELECT unit FROM readings WHERE ts >= ? ORDER BY ts, seq LIMIT 1", (ts,)
        ).fetchone()
        return None if row is None else int(row[0])

    def last_unit(self) -> int | None:
        """The unit of the newest reading (None: no readings)."""
        row = self._db.execute("SELECT unit FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def unit_before(self, unit: int) -> int | None:
        """The highest unit below ``unit`` that still has readings."""
        row = self._db.execute("SELECT MAX(unit) FROM readings WHERE unit < ?", (unit,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def last_ts(self, unit: int) -> float | None:
        """Time of the newest reading of ``unit``."""
        row = self._db.execute("SELECT MAX(ts) FROM readings WHERE unit = ?", (unit,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def relabel(
        self,
        moves: Sequence[tuple[int, int, int]],
        *,
        from_unit: int,
        keep_head_below: float,
        failed: Mapping[int, int],
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Move readings to other units/cycles, in one transaction.

        ``moves`` are ``(seq, unit, cycle)``. Every unit from ``from_unit`` on is
        rebuilt: its ``unit_head`` rows from its readings (except the first
        ``keep_head_below`` cycles of ``from_unit``, which may hold baseline rows
        whose readings were pruned), its failure record from ``failed`` (unit ->
        number of cycles). ``also`` runs inside the same transaction (the lives table).
        """
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE readings SET unit = ?, cycle = ? WHERE seq = ?",
                    [(unit, cycle, seq) for seq, unit, cycle in moves],
                )
                self._db.execute(
                    "DELETE FROM unit_head WHERE unit > ? OR (unit = ? AND cycle >= ?)",
                    (from_unit, from_unit, keep_head_below),
                )
                self._db.execute(
                    "INSERT OR IGNORE INTO unit_head SELECT unit, cycle, vals FROM readings "
                    "WHERE unit >= ? AND cycle < ?",
                    (from_unit, MAX_BASELINE_CYCLES),
                )
                self._db.execute("DELETE FROM units WHERE unit >= ?", (from_unit,))
                self._db.executemany(
                    "INSERT INTO units VALUES (?, ?)", sorted(failed.items())
                )
                if also is not None:
                    also(self._db)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot re-cut the units of {self.path}: {exc}") from exc

    def _enforce_bound(self) -> None:
        excess = self._count - self.max_readings
        if excess <= 0:
            return
        # Prune a little more than needed so this runs rarely, oldest first: readings
        # confirmed stored go first, then those the broker has but ingest has not
        # confirmed, unsent ones only if the store is full of them (each counted).
        # Pruning also ends a reading's life as training history: the oldest lives
        # lose their readings first; their labels (units) and baselines (unit_head,
        # while the unit has readings) stay.
        excess += max(1, self.max_readings // 100)
        with self._db:
            self._db.execute("BEGIN")
            victims = self._db.execute(
                "SELECT seq, sent FROM readings ORDER BY sent DESC, seq ASC LIMIT ?", (excess,)
            ).fetchall()
            self._db.executemany("DELETE FROM readings WHERE seq = ?", [(v[0],) for v in victims])
            # A unit's head goes only once none of its readings is left.
            self._db.execute(
                "DELETE FROM unit_head WHERE unit NOT IN (SELECT DISTINCT unit FROM readings)"
            )
        self.dropped_unsent += sum(1 for v in victims if v[1] == TelemetryState.UNSENT)
        self.dropped_unconfirmed += sum(1 for v in victims if v[1] == TelemetryState.SENT)
        self._count -= len(victims)
