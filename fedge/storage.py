"""Opening the local SQLite files fedge keeps (agent store, telemetry sink, spool)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from fedge.errors import FedgeError

__all__ = ["open_sqlite"]


def open_sqlite(
    path: Path,
    *,
    schema: str,
    what: str,
    error: type[FedgeError],
    synchronous: Literal["FULL", "NORMAL"] = "NORMAL",
    page_size: int | None = None,
    create_parents: bool = True,
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode and create ``schema``; raise ``error`` on failure.

    ``create_parents`` creates missing parent directories first.

    The connection is in autocommit mode (``BEGIN`` explicitly for transactions)
    and may be used from several threads: every caller serialises access itself
    (a lock, or one owning thread). A connection whose set-up fails is closed.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise error(f"invalid synchronous mode {synchronous!r}")
    try:
        if create_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open {what} {path}: {exc}") from exc
    try:
        if page_size is not None:
            db.execute(f"PRAGMA page_size={int(page_size)}")  # only takes effect for a new file
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)
    except sqlite3.Error as exc:
        db.close()
        # Same wording as a failed connect: to the operator both mean "unusable file".
        raise error(f"cannot open {what} {path}: {exc}") from exc
    return db
