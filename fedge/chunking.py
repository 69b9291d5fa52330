"""Chunked frames: split a frame into bounded messages and reassemble them, sans I/O.

A frame larger than the broker's message limit travels as numbered chunks. Each
chunk is a fixed 70-byte binary header followed by a slice of the frame, all
integers big-endian::

    offset  size  field
    0       4     magic b"FEDC"
    4       1     chunk format version (1)
    5       1     flags (reserved, must be 0)
    6       16    transfer id (default: the first 16 bytes of the digest)
    22      4     index of this chunk, 0 .. count-1 (uint32)
    26      4     count of chunks (uint32) = ceil(total / chunk_size)
    30      4     chunk_size: payload bytes of every chunk but the last (uint32)
    34      4     total size of the frame (uint32)
    38      32    SHA-256 of the whole frame
    70      ...   payload: frame[index * chunk_size : (index + 1) * chunk_size]

:class:`ChunkAssembler` takes chunks as they arrive, with the clock passed in, and
returns the frame once every chunk is there and the digest matches. Memory and
time are bounded (:class:`ChunkLimits`), and every refused chunk or dropped
transfer is counted by a :class:`~fedge.errors.RejectReason` (``chunk_*``).
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

from fedge.errors import ChunkError, RejectReason

__all__ = [
    "CHUNK_HEADER_BYTES",
    "CHUNK_MAGIC",
    "CHUNK_VERSION",
    "ChunkAssembler",
    "ChunkDrop",
    "ChunkHeader",
    "ChunkLimits",
    "parse_chunk",
    "split_frame",
]

CHUNK_MAGIC: Final = b"FEDC"
CHUNK_VERSION: Final = 1
_HEADER = struct.Struct(">4sBB16sIIII32s")
CHUNK_HEADER_BYTES: Final = _HEADER.size
_UINT32_MAX: Final = 0xFFFF_FFFF
_RECENT_DROPS: Final = 64
_COMPLETED_MEMORY: Final = 256


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The parsed fixed header of one chunk."""

    transfer_id: bytes
    index: int
    count: int
    chunk_size: int
    total: int
    digest: bytes

    def payload_size(self, index: int) -> int:
        """Payload bytes chunk ``index`` of this transfer must carry."""
        if index < self.count - 1:
            return self.chunk_size
        return self.total - (self.count - 1) * self.chunk_size


def split_frame(
    frame: bytes, *, max_message_bytes: int, transfer_id: bytes | None = None
) -> list[bytes]:
    """Chunks of ``frame``, each at most ``max_message_bytes`` long (header included).

    Raises ValueError if ``max_message_bytes`` leaves no room for a payload, the
    frame is empty or over 4 GiB, or ``transfer_id`` is not 16 bytes.
    """
    total = len(frame)
    chunk_size = max_message_bytes - CHUNK_HEADER_BYTES
    if chunk_size < 1:
        raise ValueError(
            f"max_message_bytes={max_message_bytes} leaves no room after the "
            f"{CHUNK_HEADER_BYTES}-byte chunk header"
        )
    if not 0 < total <= _UINT32_MAX:
        raise ValueError(f"cannot chunk a frame of {total} bytes")
    chunk_size = min(chunk_size, total)
    digest = hashlib.sha256(frame).digest()
    tid = digest[:16] if transfer_id is None else transfer_id
    if len(tid) != 16:
        raise ValueError(f"transfer_id must be 16 bytes, got {len(tid)}")
    count = -(-total // chunk_size)
    view = memoryview(frame)
    return [
        _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, 0, tid, i, count, chunk_size, total, digest)
        + view[i * chunk_size : (i + 1) * chunk_size]
        for i in range(count)
    ]


def parse_chunk(chunk: bytes | memoryview) -> tuple[ChunkHeader, memoryview]:
    """Header and payload (a view, no copy) of one chunk; ChunkError if malformed."""
    view = memoryview(chunk).cast("B")
    if view.nbytes < CHUNK_HEADER_BYTES:
        raise ChunkError(RejectReason.CHUNK_MALFORMED, f"{view.nbytes} bytes, header needs 70")
    magic, version, flags, tid, index, count, chunk_size, total, digest = _HEADER.unpack_from(
        view
    )
    if magic != CHUNK_MAGIC:
        raise ChunkError(RejectReason.CHUNK_MALFORMED, f"bad magic {magic!r}")
    if version != CHUNK_VERSION:
        raise ChunkError(RejectReason.CHUNK_MALFORMED, f"unsupported chunk version {version}")
    if flags != 0:
        raise ChunkError(RejectReason.CHUNK_MALFORMED, f"unknown chunk flags 0x{flags:02x}")
    if total == 0 or chunk_size == 0 or count != -(-total // chunk_size):
        raise ChunkError(
            RejectReason.CHUNK_MALFORMED,
            f"count {count} does not fit total {total} in chunks of {chunk_size}",
        )
    if index >= count:
        raise ChunkError(RejectReason.CHUNK_MALFORMED, f"index {index} of {count} chunks")
    header = ChunkHeader(bytes(tid), index, count, chunk_size, total, bytes(digest))
    payload = view[CHUNK_HEADER_BYTES:]
    if payload.nbytes != header.payload_size(index):
        raise ChunkError(
            RejectReason.CHUNK_MALFORMED,
            f"chunk {index} carries {payload.nbytes} bytes, expected {header.payload_size(index)}",
        )
    return header, payload


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """Bounds of a :class:`ChunkAssembler`."""

    max_frame_bytes: int = 16 * 1024 * 1024
    """Largest frame a transfer may announce."""
    max_transfers: int = 64
    """Transfers in progress at once, all senders together."""
    max_transfers_per_sender: int = 2
    """So that one sender cannot take every slot."""
    max_buffered_bytes: int = 64 * 1024 * 1024
    """Chunk bytes held across all unfinished transfers."""
    timeout_s: float = 120.0
    """A transfer not complete this long after its first chunk is dropped."""

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_transfers, self.max_transfers_per_sender,
               self.max_buffered_bytes) < 1 or not self.timeout_s > 0:
            raise ValueError(f"chunk limits must be positive: {self}")


@dataclass(frozen=True, slots=True)
class ChunkDrop:
    """One refused chunk or dropped transfer, for the caller's log."""

    sender: str
    reason: RejectReason
    detail: str
    at: float


@dataclass(slots=True)
class _Transfer:
    header: ChunkHeader
    started: float
    parts: dict[int, memoryview] = field(default_factory=dict)
    held: int = 0


class ChunkAssembler:
    """Reassembles chunked frames from many senders; no I/O, the clock is passed in.

    ``drops`` counts, per reason, every chunk refused (malformed, duplicate, over
    capacity) and every transfer dropped (inconsistent, incomplete at the timeout,
    wrong digest); :meth:`take_drops` hands the most recent ones over for logging.
    Nothing in a chunk can make :meth:`add` raise.
    """

    def __init__(self, limits: ChunkLimits | None = None) -> None:
        self.limits = limits or ChunkLimits()
        self.drops: Counter[RejectReason] = Counter()
        self._recent: deque[ChunkDrop] = deque(maxlen=_RECENT_DROPS)
        self._transfers: dict[tuple[str, bytes], _Transfer] = {}
        self._completed: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self.buffered_bytes = 0

    @property
    def transfers(self) -> int:
        """Transfers in progress."""
        return len(self._transfers)

    def take_drops(self) -> list[ChunkDrop]:
        """The drops recorded since the last call (at most the latest 64)."""
        drops = list(self._recent)
        self._recent.clear()
        return drops

    def add(self, sender: str, chunk: bytes, now: float) -> bytes | None:
        """Take one chunk from ``sender``; the whole frame once it is complete, else None."""
        self.expire(now)
        try:
            header, payload = parse_chunk(chunk)
        except ChunkError as exc:
            self._drop(sender, exc.reason, exc.detail, now)
            return None
        key = (sender, header.transfer_id)
        if header.total > self.limits.max_frame_bytes:
            self._drop(sender, RejectReason.CHUNK_TOO_LARGE,
                       f"frame of {header.total} bytes, limit {self.limits.max_frame_bytes}", now)
            return None
        if key in self._completed:
            self._drop(sender, RejectReason.CHUNK_DUPLICATE,
                       f"chunk {header.index} of a finished transfer", now)
            return None
        transfer = self._transfers.get(key)
        if transfer is None:
            transfer = self._start(sender, key, header, now)
            if transfer is None:
                return None
        elif _shape(transfer.header) != _shape(header):
            self._end(key, sender, RejectReason.CHUNK_INCONSISTENT,
                      f"chunk {header.index} disagrees with the transfer's first chunk", now)
            return None
        if header.index in transfer.parts:
            if transfer.parts[header.index] == payload:
                self._drop(sender, RejectReason.CHUNK_DUPLICATE, f"chunk {header.index}", now)
            else:
                self._end(key, sender, RejectReason.CHUNK_INCONSISTENT,
                          f"two different chunks {header.index}", now)
            return None
        size = len(chunk)
        if self.buffered_bytes + size > self.limits.max_buffered_bytes:
            self._end(key, sender, RejectReason.CHUNK_CAPACITY,
                      f"{self.buffered_bytes} bytes buffered, limit "
                      f"{self.limits.max_buffered_bytes}", now)
            return None
        transfer.parts[header.index] = payload
        transfer.held += size
        self.buffered_bytes += size
        if len(transfer.parts) < header.count:
            return None
        return self._finish(key, sender, transfer, now)

    def expire(self, now: float) -> int:
        """Drop transfers older than the timeout; returns how many were dropped."""
        limit = self.limits.timeout_s
        stale = [key for key, t in self._transfers.items() if now - t.started > limit]
        for key in stale:
            t = self._transfers[key]
            self._end(key, key[0], RejectReason.CHUNK_INCOMPLETE,
                      f"{len(t.parts)} of {t.header.count} chunks after {now - t.started:.1f}s",
                      now)
        while self._completed and now - next(iter(self._completed.values())) > limit:
            self._completed.popitem(last=False)
        return len(stale)

    # Internals ----------------------------------------------------------------------------
    def _start(
        self, sender: str, key: tuple[str, bytes], header: ChunkHeader, now: float
    ) -> _Transfer | None:
        mine = sum(1 for s, _ in self._transfers if s == sender)
        if (len(self._transfers) >= self.limits.max_transfers
                or mine >= self.limits.max_transfers_per_sender):
            self._drop(sender, RejectReason.CHUNK_CAPACITY,
                       f"{len(self._transfers)} transfers open ({mine} from this sender)", now)
            return None
        transfer = _Transfer(header, now)
        self._transfers[key] = transfer
        return transfer

    def _finish(
        self, key: tuple[str, bytes], sender: str, transfer: _Transfer, now: float
    ) -> bytes | None:
        self._release(key)
        parts = transfer.parts
        frame = b"".join(parts[i] for i in range(transfer.header.count))
        if hashlib.sha256(frame).digest() != transfer.header.digest:
            self._drop(sender, RejectReason.CHUNK_DIGEST,
                       f"{transfer.header.count} chunks do not hash to the announced digest", now)
            return None
        self._completed[key] = now
        while len(self._completed) > _COMPLETED_MEMORY:
            self._completed.popitem(last=False)
        return frame

    def _release(self, key: tuple[str, bytes]) -> None:
        transfer = self._transfers.pop(key)
        self.buffered_bytes -= transfer.held

    def _end(
        self, key: tuple[str, bytes], sender: str, reason: RejectReason, detail: str, now: float
    ) -> None:
        self._release(key)
        self._drop(sender, reason, detail, now)

    def _drop(self, sender: str, reason: RejectReason, detail: str, now: float) -> None:
        self.drops[reason] += 1
        self._recent.append(ChunkDrop(sender, reason, detail, now))


def _shape(header: ChunkHeader) -> tuple[int, int, int, bytes]:
    """What every chunk of one transfer must agree on."""
    return header.count, header.chunk_size, header.total, header.digest
