"""Per-round journals: every accepted reply is on disk before anything depends on it.

A restarted aggregator reopens the round it was collecting from its journal (same
round id, same announcement, the accepted replies counted again) instead of
re-announcing a round the fleet has already answered. One file per round,
``round-<id>.journal`` in the checkpoint directory, append-only::

    offset  size  field
    0       8     file magic b"FEDGJRN1"
    then records, each:
    0       4     body length L (uint32, big-endian)
    4       1     kind: 1 = open, 2 = update, 3 = close
    5       L     body
    5+L     4     CRC-32 of the 5 + L bytes before it

* open (first record, written before the announcement is published): UTF-8 JSON
  ``{"announcement": "<the published JSON>", "expected": [device, ...]}``;
* update (written when the reply is accepted, fsynced before anything depends on
  it: the replies a service step handles together share one fsync, see
  :meth:`JournalStore.append`): topic length (uint16), the topic, then the reply
  frame exactly as received;
* close (written and fsynced before the round's results are published): UTF-8 JSON
  ``{"outcome": "completed" | "failed", "ts": <clock>}``.

A crash can tear the last record: :func:`parse_journal` keeps every record up to
the first one that is truncated, fails its checksum or cannot be decoded, and
counts what it dropped under a reason. A file without a readable open record is
unusable (only its round id, from the name, is known). The CRC guards against torn
and corrupted writes, not against an attacker who can write the checkpoint directory.

:func:`encode_record` and :func:`parse_journal` are pure; :class:`JournalStore` does
the file I/O (create, append + fsync, group commit, prune, load).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path

from aggregator.state import JournalClosed, JournalEntry, RoundJournal
from fedge.errors import StorageError

__all__ = [
    "JOURNAL_MAGIC",
    "JournalProblem",
    "JournalStore",
    "RecordKind",
    "close_record",
    "encode_record",
    "open_record",
    "parse_journal",
    "update_record",
]

log = logging.getLogger(__name__)

JOURNAL_MAGIC = b"FEDGJRN1"
_HEAD = struct.Struct(">IB")
_CRC = struct.Struct(">I")
_TOPIC_LEN = struct.Struct(">H")
_NAME = re.compile(r"round-(\d{1,18})\.journal")


class RecordKind(IntEnum):
    OPEN = 1
    UPDATE = 2
    CLOSE = 3


class JournalProblem:
    """Reasons a journal (or part of one) was ignored; counted in the recovery report."""

    EMPTY = "journal_empty"
    BAD_MAGIC = "journal_bad_magic"
    TRUNCATED = "journal_truncated_record"
    CHECKSUM = "journal_bad_checksum"
    BAD_RECORD = "journal_bad_record"
    NO_OPEN = "journal_no_open_record"
    AFTER_CLOSE = "journal_record_after_close"
    UNREADABLE = "journal_unreadable"


# Record bodies -------------------------------------------------------------------------------


def encode_record(kind: RecordKind, body: bytes) -> bytes:
    """One framed record: length, kind, body, CRC-32 of all of it."""
    head = _HEAD.pack(len(body), int(kind)) + body
    return head + _CRC.pack(zlib.crc32(head))


def open_record(announcement: bytes, expected: Iterable[str]) -> bytes:
    """The first record of a round's journal."""
    body = {"announcement": announcement.decode(), "expected": sorted(expected)}
    return encode_record(RecordKind.OPEN, json.dumps(body, separators=(",", ":")).encode())


def update_record(topic: str, payload: bytes) -> bytes:
    """An accepted reply, byte for byte."""
    raw_topic = topic.encode()
    return encode_record(RecordKind.UPDATE, _TOPIC_LEN.pack(len(raw_topic)) + raw_topic + payload)


def close_record(outcome: str, ts: float) -> bytes:
    """The round closed with ``outcome`` at ``ts``."""
    body = json.dumps({"outcome": outcome, "ts": ts}, separators=(",", ":")).encode()
    return encode_record(RecordKind.CLOSE, body)


def _decode_open(body: bytes) -> tuple[bytes, tuple[str, ...]]:
    data = json.loads(body)
    announcement, expected = data["announcement"], data["expected"]
    if not isinstance(announcement, str) or not isinstance(expected, list):
        raise ValueError("open record has the wrong types")
    if not all(isinstance(d, str) for d in expected):
        raise ValueError("expected devices must be strings")
    return announcement.encode(), tuple(expected)


def _decode_update(body: bytes) -> JournalEntry:
    if len(body) < _TOPIC_LEN.size:
        raise ValueError("update record too short")
    (n,) = _TOPIC_LEN.unpack_from(body)
    end = _TOPIC_LEN.size + n
    if end > len(body):
        raise ValueError("update record topic overruns the record")
    return JournalEntry(topic=body[_TOPIC_LEN.size : end].decode(), payload=bytes(body[end:]))


def _decode_close(body: bytes) -> JournalClosed:
    data = json.loads(body)
    outcome, ts = data["outcome"], data["ts"]
    if outcome not in ("completed", "failed") or not isinstance(ts, int | float):
        raise ValueError("close record has the wrong values")
    return JournalClosed(outcome=outcome, ts=float(ts))


def parse_journal(round_id: int, data: bytes) -> RoundJournal:
    """Everything readable in one journal file's bytes (pure; never raises on bad data)."""
    problems: Counter[str] = Counter()
    if not data:
        return RoundJournal(round_id, None, problems={JournalProblem.EMPTY: 1})
    if not data.startswith(JOURNAL_MAGIC):
        return RoundJournal(
            round_id, None, problems={JournalProblem.BAD_MAGIC: 1}, ignored_bytes=len(data)
        )
    announcement: bytes | None = None
    expected: tuple[str, ...] = ()
    entries: list[JournalEntry] = []
    closed: JournalClosed | None = None
    pos = len(JOURNAL_MAGIC)
    while pos < len(data):
        problem, kind, body, end = _next_record(data, pos)
        if problem is None and closed is not None:
            problem = JournalProblem.AFTER_CLOSE
        if problem is None:
            try:
                if kind == RecordKind.OPEN and announcement is None:
                    announcement, expected = _decode_open(body)
                elif announcement is None:
                    problem = JournalProblem.NO_OPEN
                elif kind == RecordKind.UPDATE:
                    entries.append(_decode_update(body))
                elif kind == RecordKind.CLOSE:
                    closed = _decode_close(body)
                else:
                    problem = JournalProblem.BAD_RECORD
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                problem = JournalProblem.BAD_RECORD
        if problem is not None:
            # Everything from the first bad record on is ignored: a torn write leaves
            # garbage only at the end, and nothing after garbage can be trusted.
            problems[problem] += 1
            return RoundJournal(
                round_id,
                announcement,
                expected,
                tuple(entries),
                closed,
                problems=dict(problems),
                ignored_bytes=len(data) - pos,
            )
        pos = end
    if announcement is None:
        problems[JournalProblem.NO_OPEN] += 1
    return RoundJournal(
        round_id, announcement, expected, tuple(entries), closed, problems=dict(problems)
    )


def _next_record(data: bytes, pos: int) -> tuple[str | None, int, bytes, int]:
    """(problem or None, kind, body, end offset) of the record starting at ``pos``."""
    if pos + _HEAD.size > len(data):
        return JournalProblem.TRUNCATED, 0, b"", len(data)
    length, kind = _HEAD.unpack_from(data, pos)
    body_start = pos + _HEAD.size
    end = body_start + length + _CRC.size
    if end > len(data):
        return JournalProblem.TRUNCATED, 0, b"", len(data)
    (crc,) = _CRC.unpack_from(data, end - _CRC.size)
    if zlib.crc32(data[pos : end - _CRC.size]) != crc:
        return JournalProblem.CHECKSUM, 0, b"", len(data)
    return None, kind, data[body_start : end - _CRC.size], end


# Files ---------------------------------------------------------------------------------------


class JournalStore:
    """The journal files of one aggregator, in ``directory`` (its checkpoint directory).

    Not thread-safe: the aggregator's service thread is its only user. No file stays
    open between records (each append opens, writes, fsyncs and closes), so a service
    that is dropped without closing leaks nothing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._round: int | None = None
        self._unsynced: int | None = None  # round whose journal has records not fsynced

    def path(self, round_id: int) -> Path:
        return self.directory / f"round-{round_id:06d}.journal"

    def round_ids(self) -> list[int]:
        """Round ids of the journal files present, ascending."""
        try:
            names = [p.name for p in self.directory.iterdir()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list journals in {self.directory}: {exc}") from exc
        ids = [int(m.group(1)) for n in names if (m := _NAME.fullmatch(n))]
        return sorted(ids)

    def load(self) -> list[RoundJournal]:
        """Every journal file, parsed; a file that cannot be read counts as unusable."""
        journals = []
        for round_id in self.round_ids():
            try:
                data = self.path(round_id).read_bytes()
            except OSError as exc:
                log.warning("journal of round %d unreadable: %s", round_id, exc)
                journals.append(
                    RoundJournal(round_id, None, problems={JournalProblem.UNREADABLE: 1})
                )
                continue
            journals.append(parse_journal(round_id, data))
        return journals

    def open_round(self, round_id: int, record: bytes) -> None:
        """Start ``round_id``'s journal with its open ``record``, durably (file and name)."""
        self.sync()
        self._round = None
        path = self.path(round_id)
        tmp = path.with_name(path.name + ".tmp")
        try:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                with tmp.open("wb") as fh:
                    fh.write(JOURNAL_MAGIC + record)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                self._fsync_directory()
                self._round = round_id
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot start journal {path}: {exc}") from exc

    def append(self, round_id: int, record: bytes, *, sync: bool = True) -> None:
        """Append ``record`` to the open round's journal and fsync it.

        ``sync=False`` writes it without the fsync (group commit): the caller runs
        :meth:`sync` before anything may depend on the record, so that records
        appended together cost one fsync. Every other method here syncs first.
        """
        if self._round != round_id:
            raise StorageError(f"journal of round {round_id} is not open")
        try:
            with self.path(round_id).open("ab") as fh:
                fh.write(record)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise StorageError(f"cannot append to journal {self.path(round_id)}: {exc}") from exc
        if not sync:
            self._unsynced = round_id
        elif self._unsynced == round_id:
            self._unsynced = None  # the fsync covered the earlier records of the file too

    @property
    def unsynced(self) -> bool:
        """Whether records appended with ``sync=False`` await :meth:`sync`."""
        return self._unsynced is not None

    def sync(self) -> None:
        """fsync the records appended with ``sync=False`` (nothing to do if none).

        fsync flushes the file, whichever descriptor wrote it. Raises StorageError;
        the records then still await a sync.
        """
        round_id = self._unsynced
        if round_id is None:
            return
        path = self.path(round_id)
        try:
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StorageError(f"cannot fsync journal {path}: {exc}") from exc
        self._unsynced = None

    def reattach(self, round_id: int) -> None:
        """Continue appending to an existing journal (a round resumed after a restart).

        A torn tail is cut off first, so new records follow the last good one.
        """
        self.sync()
        self._round = None
        path = self.path(round_id)
        try:
            data = path.read_bytes()
            good = len(data) - parse_journal(round_id, data).ignored_bytes
            with path.open("r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
            self._round = round_id
        except OSError as exc:
            raise StorageError(f"cannot reopen journal {path}: {exc}") from exc

    def prune(self, *, up_to: int) -> int:
        """Delete the journals of rounds ``<= up_to`` (covered by a checkpoint); how many."""
        return self.delete(r for r in self.round_ids() if r <= up_to)

    def delete(self, round_ids: Iterable[int]) -> int:
        """Delete these rounds' journals (those that exist); how many went."""
        removed = 0
        for round_id in round_ids:
            if round_id == self._round:
                self._round = None
            if round_id == self._unsynced:
                self._unsynced = None  # nothing left to make durable
            path = self.path(round_id)
            try:
                if path.exists():
                    path.unlink()
                    removed += 1
            except OSError as exc:
                raise StorageError(f"cannot delete journal {path}: {exc}") from exc
        return removed

    def close(self) -> None:
        """Sync what awaits it and forget the open round (nothing is held open)."""
        try:
            self.sync()
        finally:
            self._round = None

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the new file's name is durable too
        finally:
            os.close(fd)
