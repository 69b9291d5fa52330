"""The round journal's file format: literal bytes, torn tails, corruption, the file store."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.journal import (
    JOURNAL_MAGIC,
    JournalProblem,
    JournalStore,
    RecordKind,
    close_record,
    encode_record,
    open_record,
    parse_journal,
    update_record,
)
from aggregator.state import JournalClosed, JournalEntry
from fedge.errors import StorageError

ANN = b'{"fleet":"plant-7","round_id":3}'
TOPIC = "fedge/v1/plant-7/rounds/3/updates/pump-01"


def journal_bytes(*updates: bytes, closed: bool = False) -> bytes:
    data = JOURNAL_MAGIC + open_record(ANN, ["pump-02", "pump-01"])
    for payload in updates:
        data += update_record(TOPIC, payload)
    if closed:
        data += close_record("completed", 1_700_000_060.0)
    return data


def test_record_layout_byte_for_byte() -> None:
    record = encode_record(RecordKind.UPDATE, b"\x00\x02" + b"ab" + b"XYZ")
    head = struct.pack(">IB", 7, 2) + b"\x00\x02abXYZ"
    assert record == head + struct.pack(">I", zlib.crc32(head))
    assert update_record("ab", b"XYZ") == record
    assert open_record(b'{"a":1}', ["d2", "d1"]) == encode_record(
        RecordKind.OPEN, b'{"announcement":"{\\"a\\":1}","expected":["d1","d2"]}'
    )


def test_round_trip() -> None:
    journal = parse_journal(3, journal_bytes(b"frame-1", b"frame-2", closed=True))
    assert journal.usable
    assert journal.announcement == ANN
    assert journal.expected == ("pump-01", "pump-02")
    assert journal.entries == (JournalEntry(TOPIC, b"frame-1"), JournalEntry(TOPIC, b"frame-2"))
    assert journal.closed == JournalClosed("completed", 1_700_000_060.0)
    assert journal.problems == {}
    assert journal.ignored_bytes == 0


def test_a_torn_last_record_is_dropped_and_counted() -> None:
    whole = journal_bytes(b"frame-1", b"frame-2")
    last = len(update_record(TOPIC, b"frame-2"))
    torn = whole[:-5]
    journal = parse_journal(3, torn)
    assert journal.entries == (JournalEntry(TOPIC, b"frame-1"),)
    assert journal.problems == {JournalProblem.TRUNCATED: 1}
    assert journal.ignored_bytes == last - 5


def test_a_corrupt_last_record_fails_its_checksum() -> None:
    data = bytearray(journal_bytes(b"frame-1", b"frame-2"))
    data[-7] ^= 0x40  # a bit of frame-2's payload
    journal = parse_journal(3, bytes(data))
    assert journal.entries == (JournalEntry(TOPIC, b"frame-1"),)
    assert journal.problems == {JournalProblem.CHECKSUM: 1}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", JournalProblem.EMPTY),
        (b"FEDGJRN0" + b"x" * 20, JournalProblem.BAD_MAGIC),
        (JOURNAL_MAGIC, JournalProblem.NO_OPEN),
        (JOURNAL_MAGIC + update_record(TOPIC, b"f"), JournalProblem.NO_OPEN),
        (JOURNAL_MAGIC + encode_record(RecordKind.OPEN, b"not json"), JournalProblem.BAD_RECORD),
        (JOURNAL_MAGIC + open_record(ANN, [])[:-1], JournalProblem.TRUNCATED),
    ],
)
def test_a_file_without_a_readable_open_record_is_unusable(data: bytes, problem: str) -> None:
    journal = parse_journal(9, data)
    assert not journal.usable
    assert journal.round_id == 9
    assert problem in journal.problems


def test_records_after_the_close_or_of_unknown_kind_are_ignored() -> None:
    after = journal_bytes(b"f1", closed=True) + update_record(TOPIC, b"f2")
    journal = parse_journal(3, after)
    assert journal.entries == (JournalEntry(TOPIC, b"f1"),)
    assert journal.problems == {JournalProblem.AFTER_CLOSE: 1}
    unknown = journal_bytes(b"f1") + encode_record(7, b"?")  # type: ignore[arg-type]
    assert parse_journal(3, unknown).problems == {JournalProblem.BAD_RECORD: 1}
    bad_topic = journal_bytes() + encode_record(RecordKind.UPDATE, b"\x00\x09ab")
    assert parse_journal(3, bad_topic).problems == {JournalProblem.BAD_RECORD: 1}


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=400))
def test_any_prefix_parses_to_the_whole_records_it_holds(cut: int) -> None:
    payloads = [b"a" * 10, b"b" * 50, b"c" * 100]
    whole = journal_bytes(*payloads)
    data = whole[: min(cut, len(whole))]
    journal = parse_journal(3, data)  # never raises
    head = len(JOURNAL_MAGIC) + len(open_record(ANN, ["pump-01", "pump-02"]))
    complete = 0
    end = head
    for p in payloads:
        if end + len(update_record(TOPIC, p)) <= len(data):
            end += len(update_record(TOPIC, p))
            complete += 1
    assert journal.usable == (len(data) >= head)
    assert [e.payload for e in journal.entries] == payloads[:complete]
    if journal.usable:
        assert journal.ignored_bytes == len(data) - end
        assert bool(journal.problems) == (len(data) > end)  # a partial record is counted


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_a_flipped_bit_never_yields_a_wrong_entry(position: int, bit: int) -> None:
    payloads = [b"first", b"second"]
    data = bytearray(journal_bytes(*payloads))
    data[position % len(data)] ^= 1 << bit
    journal = parse_journal(3, bytes(data))
    # Whatever was damaged, every entry that survives is one that was written, in order.
    assert [e.payload for e in journal.entries] == payloads[: len(journal.entries)]
    assert all(e.topic == TOPIC for e in journal.entries)
    assert journal.problems  # the damage was noticed


def test_store_writes_appends_loads_and_prunes(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "ckpt")
    store.open_round(3, open_record(ANN, ["pump-01"]))
    store.append(3, update_record(TOPIC, b"frame-1"))
    assert (tmp_path / "ckpt" / "round-000003.journal").read_bytes() == (
        JOURNAL_MAGIC + open_record(ANN, ["pump-01"]) + update_record(TOPIC, b"frame-1")
    )
    with pytest.raises(StorageError, match="round 4 is not open"):
        store.append(4, update_record(TOPIC, b"x"))
    store.open_round(4, open_record(ANN, []))
    assert store.round_ids() == [3, 4]
    assert [j.round_id for j in store.load()] == [3, 4]
    assert store.prune(up_to=3) == 1
    assert store.round_ids() == [4]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    store.close()


class FsyncLog:
    """Wraps os.fsync (still called): the inode of every file or directory synced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inodes: list[int] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            self.inodes.append(os.fstat(fd).st_ino)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def count(self, path: Path) -> int:
        return self.inodes.count(path.stat().st_ino)


def test_group_commit_writes_records_at_once_and_syncs_them_with_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JournalStore(tmp_path)
    store.open_round(3, open_record(ANN, []))
    path = tmp_path / "round-000003.journal"
    fsyncs = FsyncLog(monkeypatch)
    assert not store.unsynced
    for n in (1, 2, 3):
        store.append(3, update_record(TOPIC, b"frame-%d" % n), sync=False)
    # Written (a crash of the process keeps them), not yet fsynced.
    assert [e.payload for e in parse_journal(3, path.read_bytes()).entries] == [
        b"frame-1", b"frame-2", b"frame-3"]
    assert store.unsynced and fsyncs.count(path) == 0
    store.sync()
    assert not store.unsynced and fsyncs.count(path) == 1
    store.sync()  # nothing left: no second fsync
    assert fsyncs.count(path) == 1
    # A synced append covers what was written before it in the same file.
    store.append(3, update_record(TOPIC, b"frame-4"), sync=False)
    store.append(3, close_record("completed", 1.0))
    assert not store.unsynced and fsyncs.count(path) == 2


def test_everything_that_moves_on_syncs_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    store = JournalStore(tmp_path)
    store.open_round(3, open_record(ANN, []))
    path = tmp_path / "round-000003.journal"
    fsyncs = FsyncLog(monkeypatch)
    store.append(3, update_record(TOPIC, b"frame-1"), sync=False)
    store.open_round(4, open_record(ANN, []))  # the next round's journal
    assert fsyncs.count(path) == 1 and not store.unsynced
    four = tmp_path / "round-000004.journal"
    created = fsyncs.count(four)  # open_round made the new file durable
    store.append(4, update_record(TOPIC, b"frame-1"), sync=False)
    store.close()
    assert fsyncs.count(four) == created + 1 and not store.unsynced
    store.reattach(4)
    store.append(4, update_record(TOPIC, b"frame-2"), sync=False)
    assert store.delete([4]) == 1
    assert not store.unsynced  # a deleted journal has nothing left to sync
    store.sync()


def test_a_failing_sync_raises_storage_error_and_keeps_the_records_pending(
    tmp_path: Path
) -> None:
    store = JournalStore(tmp_path)
    store.open_round(3, open_record(ANN, []))
    store.append(3, update_record(TOPIC, b"frame-1"), sync=False)
    (tmp_path / "round-000003.journal").unlink()  # the file is gone before its fsync
    with pytest.raises(StorageError, match="cannot fsync journal"):
        store.sync()
    assert store.unsynced


def test_reattach_cuts_a_torn_tail_before_appending(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    store.open_round(3, open_record(ANN, []))
    store.append(3, update_record(TOPIC, b"frame-1"))
    store.close()
    path = tmp_path / "round-000003.journal"
    path.write_bytes(path.read_bytes() + update_record(TOPIC, b"frame-2")[:6])  # torn
    store = JournalStore(tmp_path)
    store.reattach(3)
    store.append(3, update_record(TOPIC, b"frame-3"))
    store.close()
    journal = parse_journal(3, path.read_bytes())
    assert [e.payload for e in journal.entries] == [b"frame-1", b"frame-3"]
    assert journal.problems == {}


def test_unreadable_journal_counts_as_unusable(tmp_path: Path) -> None:
    (tmp_path / "round-000005.journal").mkdir()  # a directory where a file should be
    (journal,) = JournalStore(tmp_path).load()
    assert (journal.round_id, journal.usable) == (5, False)
    assert journal.problems == {JournalProblem.UNREADABLE: 1}


def test_store_in_an_unusable_directory_raises_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot start journal"):
        JournalStore(blocker / "ckpt").open_round(1, open_record(ANN, []))
