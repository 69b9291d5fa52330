"""Chunked frames: exact chunk bytes, reassembly in any order, and every drop by reason."""

from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.chunking import (
    CHUNK_HEADER_BYTES,
    ChunkAssembler,
    ChunkLimits,
    parse_chunk,
    split_frame,
)
from fedge.errors import ChunkError, FrameError, RejectReason

R = RejectReason
TID = bytes(range(16))
FRAME = b"hello, federated world"  # 22 bytes
DIGEST = hashlib.sha256(FRAME).digest()


def _chunk(index: int, count: int, chunk_size: int, total: int, payload: bytes, *,
           tid: bytes = TID, digest: bytes = DIGEST, magic: bytes = b"FEDC", version: int = 1,
           flags: int = 0) -> bytes:
    return struct.pack(">4sBB16sIIII32s", magic, version, flags, tid, index, count,
                       chunk_size, total, digest) + payload


# Exact bytes -------------------------------------------------------------------------------


def test_chunk_bytes_are_exact() -> None:
    chunks = split_frame(FRAME, max_message_bytes=CHUNK_HEADER_BYTES + 10, transfer_id=TID)
    assert CHUNK_HEADER_BYTES == 70
    assert [len(c) for c in chunks] == [80, 80, 72]
    first = chunks[0]
    assert first[:4] == b"FEDC"
    assert first[4:6] == b"\x01\x00"  # version 1, flags 0
    assert first[6:22] == TID
    assert first[22:38] == bytes.fromhex("00000000" "00000003" "0000000a" "00000016")
    assert first[38:70] == DIGEST
    assert first[70:] == b"hello, fed"
    assert chunks[1][22:26] == b"\x00\x00\x00\x01" and chunks[1][70:] == b"erated wor"
    assert chunks[2][22:26] == b"\x00\x00\x00\x02" and chunks[2][70:] == b"ld"
    assert all(c[26:70] == first[26:70] for c in chunks)  # same count, sizes, digest


def test_default_transfer_id_is_derived_from_the_digest() -> None:
    chunks = split_frame(FRAME, max_message_bytes=100)
    assert len(chunks) == 1
    assert chunks[0][6:22] == DIGEST[:16]
    assert chunks[0] == split_frame(FRAME, max_message_bytes=100)[0]  # deterministic


def test_every_chunk_fits_the_limit() -> None:
    frame = os.urandom(10_000)
    for limit in (71, 100, 1000, 9_999, 10_070, 10_071, 50_000):
        chunks = split_frame(frame, max_message_bytes=limit)
        assert all(len(c) <= limit for c in chunks)
        assert b"".join(parse_chunk(c)[1] for c in chunks) == frame


@pytest.mark.parametrize(
    ("frame", "limit", "tid", "message"),
    [
        (FRAME, 70, None, "no room"),
        (b"", 100, None, "0 bytes"),
        (FRAME, 100, b"short", "16 bytes"),
    ],
)
def test_split_refuses_impossible_requests(frame: bytes, limit: int, tid: bytes | None,
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_frame(frame, max_message_bytes=limit, transfer_id=tid)


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (b"", "0 bytes"),
        (b"FEDC" + b"\x00" * 60, "64 bytes"),
        (_chunk(0, 1, 22, 22, FRAME, magic=b"FEDG"), "bad magic"),
        (_chunk(0, 1, 22, 22, FRAME, version=2), "unsupported chunk version 2"),
        (_chunk(0, 1, 22, 22, FRAME, flags=1), "unknown chunk flags"),
        (_chunk(0, 1, 22, 0, b""), "count 1 does not fit total 0"),
        (_chunk(0, 1, 0, 22, FRAME), "chunks of 0"),
        (_chunk(0, 2, 22, 22, FRAME), "count 2 does not fit"),
        (_chunk(3, 3, 10, 22, b"x" * 10), "index 3 of 3"),
        (_chunk(0, 3, 10, 22, b"x" * 9), "carries 9 bytes, expected 10"),
        (_chunk(2, 3, 10, 22, b"x" * 3), "carries 3 bytes, expected 2"),
    ],
)
def test_parse_chunk_rejects_malformed(chunk: bytes, message: str) -> None:
    with pytest.raises(ChunkError, match=message) as info:
        parse_chunk(chunk)
    assert info.value.reason is R.CHUNK_MALFORMED
    assert isinstance(info.value, FrameError)


# Reassembly --------------------------------------------------------------------------------


def _split(frame: bytes = FRAME, size: int = 10, tid: bytes = TID) -> list[bytes]:
    return split_frame(frame, max_message_bytes=CHUNK_HEADER_BYTES + size, transfer_id=tid)


def test_in_order() -> None:
    asm = ChunkAssembler()
    a, b, c = _split()
    assert asm.add("pump-03", a, 0.0) is None
    assert asm.add("pump-03", b, 0.1) is None
    assert asm.transfers == 1
    assert asm.buffered_bytes == 160
    assert asm.add("pump-03", c, 0.2) == FRAME
    assert asm.transfers == 0 and asm.buffered_bytes == 0
    assert not asm.drops


def test_out_of_order_and_duplicates() -> None:
    asm = ChunkAssembler()
    a, b, c = _split()
    assert asm.add("d", c, 0.0) is None
    assert asm.add("d", a, 0.0) is None
    assert asm.add("d", c, 0.0) is None  # identical duplicate: ignored, counted
    assert asm.add("d", b, 0.0) == FRAME
    assert asm.add("d", a, 0.0) is None  # late duplicate of a finished transfer
    assert asm.transfers == 0
    assert asm.drops == {R.CHUNK_DUPLICATE: 2}
    assert [d.reason for d in asm.take_drops()] == [R.CHUNK_DUPLICATE] * 2
    assert asm.take_drops() == []


def test_missing_chunk_expires() -> None:
    asm = ChunkAssembler(ChunkLimits(timeout_s=30.0))
    a, _, c = _split()
    asm.add("d", a, 100.0)
    asm.add("d", c, 110.0)
    assert asm.expire(130.0) == 0  # 30 s after the first chunk: not yet
    assert asm.transfers == 1
    assert asm.expire(130.5) == 1
    assert asm.transfers == 0 and asm.buffered_bytes == 0
    assert asm.drops == {R.CHUNK_INCOMPLETE: 1}
    (drop,) = asm.take_drops()
    assert drop.sender == "d" and drop.at == 130.5
    assert drop.detail == "2 of 3 chunks after 30.5s"


def test_add_expires_stale_transfers_first() -> None:
    asm = ChunkAssembler(ChunkLimits(timeout_s=5.0))
    a, b, c = _split()
    asm.add("d", a, 0.0)
    asm.add("d", b, 1.0)
    # The missing chunk turns up too late: the transfer was dropped, this starts afresh.
    assert asm.add("d", c, 10.0) is None
    assert asm.drops == {R.CHUNK_INCOMPLETE: 1}
    assert asm.transfers == 1
    assert asm.add("d", a, 11.0) is None
    assert asm.add("d", b, 12.0) == FRAME


def test_wrong_digest() -> None:
    bad = bytearray(_split()[1])
    bad[-1] ^= 0xFF  # a consistent-looking chunk whose content is wrong
    asm = ChunkAssembler()
    a, _, c = _split()
    for chunk in (a, bytes(bad), c):
        assert asm.add("d", chunk, 0.0) is None
    assert asm.drops == {R.CHUNK_DIGEST: 1}
    assert asm.transfers == 0 and asm.buffered_bytes == 0


def test_mixed_transfers_and_senders() -> None:
    other = b"a different frame, longer than the first one"
    tid2 = b"\xee" * 16
    first, second = _split(), _split(other, 10, tid2)
    asm = ChunkAssembler()
    done: list[tuple[str, bytes]] = []
    # Same transfer id from two senders are two transfers; two ids from one sender too.
    stream = [("x", c) for c in first] + [("y", c) for c in first] + [("x", c) for c in second]
    random.Random(3).shuffle(stream)
    for sender, chunk in stream:
        out = asm.add(sender, chunk, 0.0)
        if out is not None:
            done.append((sender, out))
    assert sorted(done) == sorted([("x", FRAME), ("y", FRAME), ("x", other)])
    assert not asm.drops


def test_inconsistent_chunk_drops_the_transfer() -> None:
    asm = ChunkAssembler()
    a, b, _ = _split()
    asm.add("d", a, 0.0)
    # Same transfer id, different total: whoever sent it, the transfer cannot be trusted.
    asm.add("d", _chunk(1, 3, 10, 23, b"x" * 10), 0.0)
    assert asm.drops == {R.CHUNK_INCONSISTENT: 1}
    assert asm.transfers == 0 and asm.buffered_bytes == 0
    asm.add("d", a, 1.0)
    forged = bytearray(b)
    forged[-1] ^= 1
    asm.add("d", b, 1.0)
    asm.add("d", bytes(forged), 1.0)  # a second, different chunk 1
    assert asm.drops == {R.CHUNK_INCONSISTENT: 2}
    assert asm.transfers == 0


def test_frame_too_large() -> None:
    asm = ChunkAssembler(ChunkLimits(max_frame_bytes=21))
    assert asm.add("d", _split()[0], 0.0) is None
    assert asm.drops == {R.CHUNK_TOO_LARGE: 1}
    assert asm.transfers == 0


def test_capacity_limits() -> None:
    asm = ChunkAssembler(ChunkLimits(max_transfers=2, max_transfers_per_sender=1))
    frames = [os.urandom(30) for _ in range(4)]
    firsts = [_split(f, 10, bytes([i]) * 16)[0] for i, f in enumerate(frames)]
    asm.add("a", firsts[0], 0.0)
    asm.add("a", firsts[1], 0.0)  # a second transfer from "a": per-sender limit
    asm.add("b", firsts[2], 0.0)
    asm.add("c", firsts[3], 0.0)  # third transfer overall
    assert asm.drops == {R.CHUNK_CAPACITY: 2}
    assert asm.transfers == 2
    # The byte budget: a chunk that would pass it drops its transfer.
    small = ChunkAssembler(ChunkLimits(max_buffered_bytes=200))
    a, b, _ = _split()
    small.add("d", a, 0.0)
    small.add("d", b, 0.0)
    assert small.buffered_bytes == 160
    other = _split(os.urandom(30), 10, b"\x01" * 16)
    small.add("e", other[0], 0.0)
    assert small.drops == {R.CHUNK_CAPACITY: 1}
    assert small.buffered_bytes == 160 and small.transfers == 1


def test_malformed_chunks_are_counted_not_raised() -> None:
    asm = ChunkAssembler()
    for junk in (b"", b"FEDC", b"\x00" * 200, _chunk(5, 3, 10, 22, b"x" * 10)):
        assert asm.add("d", junk, 0.0) is None
    assert asm.drops == {R.CHUNK_MALFORMED: 4}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ChunkLimits(timeout_s=0.0)
    with pytest.raises(ValueError, match="positive"):
        ChunkLimits(max_transfers=0)


# Fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
_FRAMES = [os.urandom(n) for n in (1, 70, 333, 1000)]


@FUZZ
@given(st.data())
def test_fuzz_shuffled_dropped_duplicated_and_corrupted_chunk_sets(data: st.DataObject) -> None:
    limits = ChunkLimits(max_frame_bytes=900, max_transfers=3, max_transfers_per_sender=2,
                         max_buffered_bytes=1500, timeout_s=10.0)
    asm = ChunkAssembler(limits)
    stream: list[tuple[str, bytes]] = []
    for i, frame in enumerate(_FRAMES):
        size = data.draw(st.integers(40, 400), label="chunk size")
        sender = data.draw(st.sampled_from(["a", "b"]), label="sender")
        for chunk in split_frame(frame, max_message_bytes=CHUNK_HEADER_BYTES + size,
                                 transfer_id=bytes([i]) * 16):
            edit = data.draw(st.sampled_from(["keep", "keep", "keep", "drop", "dup", "flip",
                                              "cut"]), label="edit")
            if edit == "drop":
                continue
            if edit == "flip":
                pos = data.draw(st.integers(0, len(chunk) - 1), label="pos")
                chunk = chunk[:pos] + bytes([chunk[pos] ^ 0x5A]) + chunk[pos + 1 :]
            if edit == "cut":
                chunk = chunk[: data.draw(st.integers(0, len(chunk)), label="cut")]
            stream.append((sender, chunk))
            if edit == "dup":
                stream.append((sender, chunk))
    stream += [("c", data.draw(st.binary(max_size=120), label="junk"))]
    order = data.draw(st.permutations(range(len(stream))), label="order")
    now = 0.0
    for i in order:
        sender, chunk = stream[i]
        now += data.draw(st.floats(0.0, 3.0), label="dt")
        out = asm.add(sender, chunk, now)
        # Only real frames come out, never more bytes are held than allowed.
        assert out is None or out in _FRAMES
        assert asm.buffered_bytes <= limits.max_buffered_bytes
        assert asm.transfers <= limits.max_transfers
    asm.expire(now + 10.1)
    assert asm.transfers == 0 and asm.buffered_bytes == 0
    assert set(asm.drops) <= {r for r in R if r.value.startswith("chunk_")}


def test_ten_thousand_random_chunks_never_raise() -> None:
    rng = random.Random(11)
    asm = ChunkAssembler(ChunkLimits(max_transfers=8, timeout_s=1.0))
    valid = _split(os.urandom(500), 50)
    for i in range(10_000):
        chunk = bytearray(rng.choice(valid))
        for _ in range(rng.randint(0, 3)):
            if chunk:
                chunk[rng.randrange(len(chunk))] = rng.randrange(256)
        if rng.random() < 0.1:
            chunk = chunk[: rng.randrange(len(chunk) + 1)]
        asm.add(rng.choice("abcd"), bytes(chunk), i * 0.01)
        assert asm.buffered_bytes <= asm.limits.max_buffered_bytes
    assert sum(asm.drops.values()) > 1000
    assert R.CHUNK_MALFORMED in asm.drops
