"""TelemetryConfirm: which stored-up-to acks count, and when to re-send (pure, literal times)."""

from __future__ import annotations

import pytest

from edge_agent.telemetry_confirm import (
    MAX_BACKOFF,
    Resend,
    ResendOrder,
    TelemetryConfirm,
    Watermark,
)
from fedge.errors import RefusalReason, RefusedError
from fedge.messages import StoredAck

TS = 1_750_000_000.0


def ack(seq: int, ts: float, *, fleet: str = "f", device: str = "d") -> StoredAck:
    return StoredAck(fleet=fleet, device=device, through_seq=seq, through_ts=ts, ts=TS + 999)


def confirm(**kwargs: object) -> TelemetryConfirm:
    return TelemetryConfirm(fleet="f", device="d", **kwargs)  # type: ignore[arg-type]


def test_auto_mode_switches_on_with_the_first_ack() -> None:
    c = confirm()
    assert (c.subscribes, c.active) == (True, False)
    assert c.tick(now=100.0, unconfirmed=5) is None  # no confirmations yet: no re-sends
    assert c.on_ack(ack(7, TS + 7), now=1.0) == Watermark(7, TS + 7)
    assert (c.active, c.acks, c.watermark) == (True, 1, Watermark(7, TS + 7))


def test_modes_on_and_off() -> None:
    assert confirm(mode="on").active
    off = confirm(mode="off")
    assert (off.subscribes, off.active) == (False, False)
    assert off.on_ack(ack(7, TS), now=0.0) is None  # ignored: nothing to apply
    assert not off.active


def test_a_watermark_kept_from_an_earlier_run_starts_confirm_mode() -> None:
    assert confirm(watermark=Watermark(3, TS)).active
    assert not confirm(mode="off", watermark=Watermark(3, TS)).active


@pytest.mark.parametrize(("fleet", "device"), [("other", "d"), ("f", "other")])
def test_an_ack_for_another_fleet_or_device_is_refused(fleet: str, device: str) -> None:
    c = confirm()
    with pytest.raises(RefusedError) as info:
        c.on_ack(ack(7, TS, fleet=fleet, device=device), now=0.0)
    assert info.value.reason is RefusalReason.STORED_ACK_MISMATCH
    assert (c.active, c.watermark) == (False, None)


def test_backwards_acks_are_refused_repeats_ignored() -> None:
    c = confirm()
    c.on_ack(ack(10, TS + 10), now=0.0)
    assert c.on_ack(ack(10, TS + 10), now=1.0) is None  # the retained one again
    for seq, ts in [(9, TS + 9), (9, TS + 10), (10, TS + 9)]:
        with pytest.raises(RefusedError) as info:
            c.on_ack(ack(seq, ts), now=2.0)
        assert info.value.reason is RefusalReason.STORED_ACK_BACKWARDS
    assert (c.watermark, c.acks) == (Watermark(10, TS + 10), 1)


def test_a_restarted_counter_moves_the_watermark_back_in_seq_forward_in_time() -> None:
    c = confirm()
    c.on_ack(ack(10, TS + 10), now=0.0)
    assert c.on_ack(ack(2, TS + 50), now=1.0) == Watermark(2, TS + 50)
    # A device clock set back: a higher seq at an earlier time also moves it.
    assert c.on_ack(ack(12, TS + 40), now=2.0) == Watermark(12, TS + 40)


CONNECTED_THROUGH_9 = ResendOrder(Resend.CONNECTED, 9)
TIMEOUT = ResendOrder(Resend.TIMEOUT)


def test_after_a_connection_resend_once_the_retained_ack_came() -> None:
    c = confirm(mode="on", settle_s=2.0)
    assert c.new_connection(0)  # the first connection counts
    c.on_connection(0, now=10.0, sent_through=9)
    assert not c.new_connection(0)
    assert c.tick(now=10.5, unconfirmed=4) is None  # waiting for the retained ack
    c.on_ack(ack(3, TS), now=10.6)
    assert c.tick(now=10.7, unconfirmed=4) == CONNECTED_THROUGH_9
    assert c.tick(now=10.8, unconfirmed=4) is None  # once per connection
    assert c.new_connection(1)


def test_a_stale_ack_after_a_reconnect_also_ends_the_wait() -> None:
    c = confirm(settle_s=2.0)
    c.on_ack(ack(10, TS + 10), now=0.0)
    c.on_connection(1, now=5.0, sent_through=9)
    with pytest.raises(RefusedError):
        c.on_ack(ack(8, TS + 8), now=5.1)  # a broker back from an older snapshot
    assert c.tick(now=5.2, unconfirmed=3) == CONNECTED_THROUGH_9


def test_without_an_ack_the_resend_goes_after_settle_s() -> None:
    c = confirm(mode="on", settle_s=2.0)
    c.on_connection(3, now=10.0, sent_through=9)
    assert c.tick(now=11.9, unconfirmed=1) is None
    assert c.tick(now=12.0, unconfirmed=1) == CONNECTED_THROUGH_9


def test_nothing_unconfirmed_nothing_to_resend_after_a_connection() -> None:
    c = confirm(mode="on", settle_s=0.0)
    c.on_connection(0, now=0.0, sent_through=None)
    # Readings acknowledged on the new connection are not re-sent after it.
    assert c.tick(now=0.0, unconfirmed=2) is None
    c.on_connection(1, now=1.0, sent_through=9)
    assert c.tick(now=1.0, unconfirmed=0) is None
    c.on_connection(2, now=2.0, sent_through=9)
    assert c.tick(now=2.0, unconfirmed=2) == CONNECTED_THROUGH_9


def test_auto_mode_resends_after_the_connection_once_the_first_ack_switched_it_on() -> None:
    c = confirm(settle_s=2.0)
    c.on_connection(0, now=0.0, sent_through=9)  # readings from before a restart
    assert c.tick(now=5.0, unconfirmed=4) is None  # no ack yet: not confirming
    c.on_ack(ack(7, TS), now=6.0)
    assert c.tick(now=6.1, unconfirmed=2) == CONNECTED_THROUGH_9


def test_timeout_resend_only_while_the_watermark_does_not_move() -> None:
    c = confirm(mode="on", timeout_s=30.0)
    assert c.tick(now=0.0, unconfirmed=5) is None  # unconfirmed since 0
    assert c.tick(now=29.9, unconfirmed=5) is None
    assert c.tick(now=30.0, unconfirmed=5) == TIMEOUT
    # No progress since: the next wait is twice as long (60 s from the re-send).
    assert c.next_timeout_s == 60.0
    assert c.tick(now=89.9, unconfirmed=5) is None
    assert c.tick(now=90.0, unconfirmed=5) == TIMEOUT
    assert c.next_timeout_s == 120.0
    # The watermark moves at 100: back to 30 s, counted from then.
    c.on_ack(ack(5, TS), now=100.0)
    assert c.next_timeout_s == 30.0
    assert c.tick(now=129.9, unconfirmed=5) is None
    assert c.tick(now=130.0, unconfirmed=5) == TIMEOUT


def test_timeout_counts_from_when_readings_became_unconfirmed() -> None:
    c = confirm(mode="on", timeout_s=30.0)
    assert c.tick(now=0.0, unconfirmed=0) is None
    assert c.tick(now=50.0, unconfirmed=2) is None  # just sent: the clock starts now
    assert c.tick(now=79.0, unconfirmed=2) is None
    assert c.tick(now=80.0, unconfirmed=2) == TIMEOUT
    assert c.tick(now=81.0, unconfirmed=0) is None  # all confirmed: the clock stops


def test_backoff_is_capped() -> None:
    c = confirm(mode="on", timeout_s=1.0)
    now = 0.0
    c.tick(now=now, unconfirmed=1)
    for _ in range(10):
        now += c.next_timeout_s
        assert c.tick(now=now, unconfirmed=1) == TIMEOUT
    assert c.next_timeout_s == MAX_BACKOFF * 1.0


def test_a_resend_after_a_connection_restarts_the_timeout() -> None:
    c = confirm(mode="on", timeout_s=30.0, settle_s=0.0)
    c.tick(now=0.0, unconfirmed=1)
    c.on_connection(1, now=25.0, sent_through=9)
    assert c.tick(now=25.0, unconfirmed=1) == CONNECTED_THROUGH_9
    assert c.tick(now=54.9, unconfirmed=1) is None
    assert c.tick(now=55.0, unconfirmed=1) == TIMEOUT


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        confirm(timeout_s=0.0)
