"""TelemetrySpool: durable, bounded, refuses instead of dropping."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from aggregator.sinks.spool import TelemetrySpool
from fedge.errors import StorageError


def body(*lines: str) -> bytes:
    return "\n".join(lines).encode()


def test_append_pending_remove_in_fifo_order(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db")
    try:
        a = spool.append(body("m v=1 1", "m v=2 2"), 2)
        b = spool.append(body("m v=3 3"), 1)
        assert (a, b) == (1, 2)
        assert len(spool) == 2
        pending = spool.pending(limit=10)
        assert [p.id for p in pending] == [a, b]
        assert pending[0].lines == [b"m v=1 1", b"m v=2 2"]
        assert [p.id for p in spool.pending(limit=10, exclude={a})] == [b]
        assert [p.id for p in spool.pending(limit=1)] == [a]
        assert spool.remove([a]) == 2
        assert [p.id for p in spool.pending(limit=10)] == [b]
        stats = spool.stats
        assert (stats.batches, stats.points, stats.appended_points, stats.removed_points) == (
            1,
            1,
            3,
            2,
        )
        assert spool.remove([a]) == 0  # already gone: idempotent
    finally:
        spool.close()


def test_survives_reopen_and_keeps_ids_monotonic(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = TelemetrySpool(path)
    first = spool.append(body("m v=1 1"), 1)
    second = spool.append(body("m v=2 2"), 1)
    spool.remove([second])
    spool.close()

    reopened = TelemetrySpool(path)
    try:
        assert [p.body for p in reopened.pending(limit=10)] == [b"m v=1 1"]
        assert reopened.stats.points == 1 and reopened.stats.bytes == len(b"m v=1 1")
        # AUTOINCREMENT: a removed id is never handed out again (acks cannot alias).
        assert reopened.append(body("m v=3 3"), 1) == second + 1
        assert reopened.last_id == second + 1
        assert reopened.count_upto(first) == 1
    finally:
        reopened.close()


def test_wal_mode_and_tables_are_queryable(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = TelemetrySpool(path)
    spool.append(body("m v=1 1"), 1)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT points, body FROM batches").fetchall() == [(1, b"m v=1 1")]
    db.close()
    spool.close()


def test_full_spool_refuses_and_counts_never_evicts(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db", max_bytes=20, max_batches=100)
    try:
        spool.append(b"m v=1 1", 1)  # 7 bytes
        spool.append(b"m v=2 2", 1)  # 14 bytes
        with pytest.raises(StorageError, match="spool full"):
            spool.append(b"m v=3 3\nm v=4 4", 2)  # would be 29 > 20
        assert spool.stats.refused_points == 2
        assert [p.body for p in spool.pending(limit=10)] == [b"m v=1 1", b"m v=2 2"]
        spool.remove([1])
        spool.append(b"m v=5 5", 1)  # room again after an acknowledgement
        assert len(spool) == 2
    finally:
        spool.close()


def test_max_batches_bound(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db", max_batches=2)
    try:
        spool.append(b"a v=1 1", 1)
        spool.append(b"a v=1 2", 1)
        with pytest.raises(StorageError):
            spool.append(b"a v=1 3", 1)
        assert spool.stats.refused_points == 1
    finally:
        spool.close()


def test_replace_shrinks_a_partly_written_batch(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db")
    try:
        batch = spool.append(body("m v=1 1", "m v=2 2", "m v=3 3"), 3)
        spool.replace(batch, b"m v=2 2", 1)
        (left,) = spool.pending(limit=10)
        assert (left.id, left.points, left.body) == (batch, 1, b"m v=2 2")
        assert spool.stats.points == 1 and spool.stats.removed_points == 2
        assert spool.stats.bytes == len(b"m v=2 2")
        spool.replace(batch, b"", 0)  # nothing left: the batch goes
        assert len(spool) == 0
    finally:
        spool.close()


def test_dead_letter_is_kept_counted_and_not_pending(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db")
    try:
        spool.dead_letter(b"bad line\nworse", 2, "HTTP 400 Bad Request: unable to parse")
        assert spool.stats.dead_points == 2
        assert spool.dead_lines() == [b"bad line", b"worse"]
        assert spool.pending(limit=10) == []
    finally:
        spool.close()


def test_empty_batch_and_bad_limits_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        TelemetrySpool(tmp_path / "x.db", max_bytes=0)
    spool = TelemetrySpool(tmp_path / "spool.db")
    try:
        with pytest.raises(StorageError):
            spool.append(b"", 0)
    finally:
        spool.close()


def test_closed_spool_raises_storage_error(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db")
    spool.close()
    spool.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        spool.append(b"m v=1 1", 1)


def test_unopenable_path_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError):
        TelemetrySpool(blocker / "spool.db")


def test_concurrent_appends_and_removes_keep_counters_exact(tmp_path: Path) -> None:
    spool = TelemetrySpool(tmp_path / "spool.db", synchronous="NORMAL")
    ids: list[int] = []
    lock = threading.Lock()

    def producer(k: int) -> None:
        for i in range(50):
            batch_id = spool.append(f"m,k={k} v={i} {i}".encode(), 1)
            with lock:
                ids.append(batch_id)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(set(ids)) == 200 and len(spool) == 200
        assert spool.remove(ids[:150]) == 150
        assert spool.stats.points == 50 and len(spool.pending(limit=1000)) == 50
    finally:
        spool.close()
