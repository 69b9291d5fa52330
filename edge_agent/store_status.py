"""What an agent's SQLite store says about the device, read without touching it.

``fedge agent status --store PATH`` uses :func:`read_store_status`: the store is opened
read-only (the agent may be running, or stopped, or dead), so an operator on the device
sees lives, unsent readings, readings the broker has that ingest has not confirmed
stored, how far ingest's confirmations go, and the last error without a broker.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.store_telemetry import STATES_KEY
from fedge.errors import StorageError

__all__ = ["StoreStatus", "UnitStatus", "read_store_status"]


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """One life of the machine: its readings kept, cycles seen, and length if it failed."""

    unit: int
    readings: int
    first_cycle: int
    last_cycle: int
    failed_after: int | None

    @property
    def failed(self) -> bool:
        return self.failed_after is not None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """A summary of one agent store."""

    path: str
    n_features: int | None
    readings: int
    unsent: int
    oldest_unsent_ts: float | None
    unconfirmed: int
    """Acknowledged by the broker, not yet confirmed stored by ingest."""
    confirmed_through_seq: int | None
    """Ingest's last stored-up-to watermark the agent applied (None: never one)."""
    newest_ts: float | None
    units: tuple[UnitStatus, ...]
    current_unit: int | None
    last_error: str | None
    model_version: int | None

    @property
    def failed_units(self) -> tuple[UnitStatus, ...]:
        return tuple(u for u in self.units if u.failed)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``units`` with their ``failed`` flag)."""
        data = asdict(self)
        data["units"] = [{**asdict(u), "failed": u.failed} for u in self.units]
        data["failed_units"] = len(self.failed_units)
        return data


def read_store_status(path: Path) -> StoreStatus:
    """Summarise the store at ``path``; StorageError if it is missing or not a store."""
    if not path.is_file():
        raise StorageError(f"no agent store at {path}")
    try:
        # mode=ro: never creates, never writes; a running agent's WAL is read as well.
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open agent store {path}: {exc}") from exc
    try:
        return _read(db, path)
    except sqlite3.Error as exc:
        raise StorageError(f"{path} is not a readable agent store: {exc}") from exc
    finally:
        db.close()


def _read(db: sqlite3.Connection, path: Path) -> StoreStatus:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    failed = dict(db.execute("SELECT unit, n_cycles FROM units").fetchall())
    rows = db.execute(
        "SELECT unit, COUNT(*), MIN(cycle), MAX(cycle) FROM readings GROUP BY unit ORDER BY unit"
    ).fetchall()
    units = [
        UnitStatus(int(u), int(n), int(lo), int(hi), failed.get(u)) for u, n, lo, hi in rows
    ]
    # A failed unit whose readings were all pruned is still a life the store remembers.
    seen = {u.unit for u in units}
    units += [UnitStatus(int(u), 0, 0, -1, int(n)) for u, n in failed.items() if u not in seen]
    units.sort(key=lambda u: u.unit)
    readings, unsent, unconfirmed, oldest_unsent, newest = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(sent = 0), 0), COALESCE(SUM(sent = 1), 0), "
        "MIN(CASE WHEN sent = 0 THEN ts END), MAX(ts) FROM readings"
    ).fetchone()
    if STATES_KEY not in meta:
        # A store the agent has not opened since the telemetry states: its sent rows
        # count as confirmed (edge_agent.store_telemetry, _migrate_states).
        unconfirmed = 0
    through = meta.get("stored_through_seq")
    last = units[-1] if units else None
    version = meta.get("model_version")
    return StoreStatus(
        path=str(path),
        n_features=int(meta["n_features"]) if "n_features" in meta else None,
        readings=int(readings),
        unsent=int(unsent),
        oldest_unsent_ts=oldest_unsent,
        unconfirmed=int(unconfirmed),
        confirmed_through_seq=int(through) if through is not None and through.isdigit() else None,
        newest_ts=newest,
        units=tuple(units),
        current_unit=last.unit if last is not None and not last.failed else None,
        last_error=meta.get("last_error"),
        model_version=int(version) if version is not None and version.isdigit() else None,
    )
