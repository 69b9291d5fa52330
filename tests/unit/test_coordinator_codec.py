"""The coordinator with compressed and chunked replies: codec in the announcement, codec
mismatch, encoded accumulation (hand-computed), chunk reassembly and drop counts."""

from __future__ import annotations

import numpy as np

from aggregator.coordinator import RoundCoordinator
from fedge.chunking import split_frame
from fedge.codec import FrameHeader, encode_frame
from fedge.compression import UpdateCodec, wire_codec
from tests.unit.test_coordinator import (
    FLEET,
    INITIAL_TENSORS,
    T0,
    TOPICS,
    TRAINABLE,
    announcement,
    make,
    online,
    publishes,
    shifted,
    summary,
)

PLAIN = UpdateCodec()
INT8 = UpdateCodec(dtype="int8", delta=True, error_feedback=True)


def _frame(device: str, round_id: int, tensors: dict[str, np.ndarray], *,
           codec: UpdateCodec = PLAIN, num_examples: int = 10) -> bytes:
    header = FrameHeader(kind="update", fleet=FLEET, device=device, round_id=round_id,
                         base_version=0, num_examples=num_examples, codec=wire_codec(codec),
                         created_at=T0)
    return encode_frame(header, tensors)


def _int8_body(code: int, scale: float) -> dict[str, np.ndarray]:
    """Every entry of every trainable tensor is ``code * scale`` (one scale per tensor)."""
    total = sum(INITIAL_TENSORS[name].size for name in TRAINABLE)
    return {"values": np.full(total, code, np.int8),
            "scales": np.full(len(TRAINABLE), scale, np.float32)}


def _open(coord: RoundCoordinator) -> int:
    ann = announcement(online(coord, "pump-01", "pump-02"))
    return ann.round_id


def test_training_rounds_announce_the_codec_and_the_message_limit() -> None:
    coord = make(codec=INT8, max_message_bytes=4096)
    ann = announcement(online(coord, "pump-01", "pump-02"))
    assert ann.task == "train"
    assert ann.codec == INT8 and ann.max_message_bytes == 4096
    assert coord.open is not None and coord.open.expect.codec == INT8


def test_a_stats_round_keeps_the_default_codec() -> None:
    coord = make(stats_done=False, round_id=-1, codec=INT8)
    ann = announcement(online(coord, "pump-01", "pump-02"))
    assert ann.task == "stats" and ann.codec == "safetensors"


def test_a_reply_in_another_codec_is_refused_as_codec_mismatch() -> None:
    coord = make(codec=INT8)
    rid = _open(coord)
    plain = _frame("pump-01", rid, shifted(0.1))
    assert coord.handle(TOPICS.update(rid, "pump-01"), plain, T0 + 1) == []
    assert coord.open is not None and coord.open.counted == 0
    assert coord.rejected_total == {"codec_mismatch": 1}


def test_int8_delta_replies_are_averaged_hand_computed() -> None:
    coord = make(codec=INT8)
    rid = _open(coord)
    # Codes +-127 at scale 2**-10 decode to exactly +-d, d = 127/1024 = 0.1240234375.
    d = np.float32(127 / 1024)
    a = _frame("pump-01", rid, _int8_body(127, 2.0**-10), codec=INT8, num_examples=10)
    b = _frame("pump-02", rid, _int8_body(-127, 2.0**-10), codec=INT8, num_examples=30)
    coord.handle(TOPICS.update(rid, "pump-01"), a, T0 + 1)
    effects = coord.handle(TOPICS.update(rid, "pump-02"), b, T0 + 2)
    s = summary(effects)
    assert (s.outcome, s.participants, s.num_examples, s.version) == ("completed", 2, 40, 1)
    for name in TRAINABLE:
        w = INITIAL_TENSORS[name]
        up, down = (w + d).astype(np.float64), (w - d).astype(np.float64)
        # (10 (w + d) + 30 (w - d)) / 40 = w - d / 2, from each client's float32 weights;
        # the reducer's float32 partial sums round each product-add (half a float32 ulp
        # of the terms' magnitudes each) before the float64 fold, the final cast once.
        expected = ((10 * up + 30 * down) / 40).astype(np.float32)
        terms = (10 * np.abs(up) + 30 * np.abs(down)) / 40
        error = np.abs(coord.tensors[name].astype(np.float64) - expected)
        assert np.all(error <= 2 * 2.0**-24 * terms + np.spacing(np.abs(expected)))


def test_a_malformed_encoded_body_is_refused_and_leaves_no_trace() -> None:
    coord = make(codec=INT8)
    rid = _open(coord)
    body = _int8_body(127, 2.0**-10)
    body["values"][0] = -128  # outside the symmetric int8 range
    coord.handle(TOPICS.update(rid, "pump-01"), _frame("pump-01", rid, body, codec=INT8), T0 + 1)
    assert coord.rejected_total == {"malformed": 1}
    assert coord.open is not None and coord.open.counted == 0 and not coord.open.received


def test_a_chunked_reply_is_reassembled_and_counted_once() -> None:
    coord = make(max_message_bytes=1024)
    rid = _open(coord)
    whole = _frame("pump-01", rid, shifted(0.5))
    chunks = split_frame(whole, max_message_bytes=512)
    assert len(chunks) > 2
    topic = TOPICS.update_chunks(rid, "pump-01")
    for chunk in reversed(chunks):  # any order; the frame they complete is journaled
        effects = coord.handle(topic, chunk, T0 + 1)
        assert [type(e).__name__ for e in effects] in ([], ["JournalUpdate"])
    assert coord.open is not None
    assert coord.open.received == {"pump-01"} and coord.open.counted == 1
    assert coord.open.bytes_received == sum(len(c) for c in chunks)
    assert coord.rejected_total == {}
    effects = coord.handle(TOPICS.update(rid, "pump-02"), _frame("pump-02", rid, shifted(0.5)),
                           T0 + 2)
    assert summary(effects).participants == 2
    for name in TRAINABLE:
        np.testing.assert_allclose(coord.tensors[name], INITIAL_TENSORS[name] + 0.5, rtol=1e-6)


def test_chunk_drops_are_counted_by_reason_in_the_round_summary() -> None:
    coord = make(max_message_bytes=1024, round_timeout_s=60.0)
    rid = _open(coord)
    chunks = split_frame(_frame("pump-01", rid, shifted(0.5)), max_message_bytes=512)
    topic = TOPICS.update_chunks(rid, "pump-01")
    coord.handle(topic, chunks[0], T0 + 1)
    coord.handle(topic, chunks[0], T0 + 1)  # duplicate
    coord.handle(topic, b"FEDC" + bytes(10), T0 + 1)  # malformed
    # The rest never comes: the transfer is dropped once the chunk timeout (60 s) passes.
    effects = coord.tick(T0 + 62)
    s = summary(effects)
    assert s.outcome == "failed"
    assert s.rejected_by_reason == {
        "chunk_duplicate": 1, "chunk_malformed": 1, "chunk_incomplete": 1,
    }
    assert coord.chunks.transfers == 0 and coord.chunks.buffered_bytes == 0
    assert publishes(effects, TOPICS.global_model) == []
