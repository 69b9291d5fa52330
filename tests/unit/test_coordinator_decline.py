"""Decline frames: a device that cannot answer a round says why; the round stops waiting."""

from __future__ import annotations

import numpy as np

from fedge.codec import FrameHeader, encode_frame
from tests.unit.test_coordinator import (
    FLEET,
    T0,
    TOPICS,
    frame,
    make,
    reply,
    shifted,
    summary,
    three_expected,
)


def decline(device: str, round_id: int, reason: str = "missing_feature",
            detail: str = "device pump-03 lacks feature bearing_temp") -> bytes:
    header = FrameHeader(
        kind="decline", fleet=FLEET, device=device, round_id=round_id, base_version=0,
        created_at=T0, reason=reason, detail=detail,
    )
    return encode_frame(header, {})


def test_a_decline_is_counted_by_its_reason_and_the_round_stops_waiting() -> None:
    coord = make()
    rid = three_expected(coord)
    assert coord.open is not None
    assert reply(coord, "pump-03", decline("pump-03", rid)) == []  # nothing published
    assert "pump-03" not in coord.open.expected
    reply(coord, "pump-01", frame("pump-01", rid, shifted(1.0)))
    effects = reply(coord, "pump-02", frame("pump-02", rid, shifted(3.0)))
    closed = summary(effects)  # closed at once: nobody waits for pump-03's deadline
    assert closed.outcome == "completed"
    assert closed.participants == 2
    assert closed.rejected_by_reason == {"missing_feature": 1}
    assert closed.duration_s < 2.0
    # The aggregate is the two real updates only: (1 + 3) / 2 = 2 above the initial weights.
    name = next(iter(coord.trainable))
    np.testing.assert_allclose(
        coord.tensors[name], shifted(2.0)[name], rtol=0, atol=1e-6
    )


def test_declines_for_another_round_or_device_or_twice_are_refused() -> None:
    coord = make()
    rid = three_expected(coord)
    assert coord.open is not None
    reply(coord, "pump-03", decline("pump-03", rid + 5), round_id=rid)
    coord.handle(TOPICS.update(rid, "pump-02"), decline("pump-03", rid), T0 + 1)
    reply(coord, "pump-03", decline("pump-03", rid))
    # The same bytes again are a QoS 1 redelivery (counted once, no rejection); a
    # different second answer from the same device is a replay.
    reply(coord, "pump-03", decline("pump-03", rid))
    assert coord.open.duplicates == 1
    reply(coord, "pump-03", decline("pump-03", rid, detail="again"))
    assert dict(coord.open.rejected) == {
        "wrong_round": 1,
        "topic_mismatch": 1,
        "missing_feature": 1,
        "replay": 1,
    }


def test_a_decline_reason_is_counted_as_the_device_gives_it() -> None:
    coord = make()
    rid = three_expected(coord)
    assert coord.open is not None
    reply(coord, "pump-03", decline("pump-03", rid, reason="busy_elsewhere", detail="x"))
    assert dict(coord.open.rejected) == {"busy_elsewhere": 1}
