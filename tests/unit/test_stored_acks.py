"""StoredWatermarks: contiguous stored-up-to seqs per device, gaps, resets, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.stored_acks import StoredWatermarks, Watermark

T0 = 1_750_000_000.0


def r(*seqs: int) -> list[tuple[int, float]]:
    """Readings whose device time is T0 + seq (seq and time rise together)."""
    return [(s, T0 + s) for s in seqs]


def test_first_reading_starts_the_watermark_and_contiguous_ones_advance_it() -> None:
    marks = StoredWatermarks()
    assert marks.get("d") is None
    marks.stored("d", r(7, 8, 9), now=0.0)
    assert marks.get("d") == Watermark(9, T0 + 9)
    assert marks.take_changed() == {"d": Watermark(9, T0 + 9)}
    assert marks.take_changed() == {}


def test_a_gap_holds_the_watermark_until_it_is_filled() -> None:
    marks = StoredWatermarks()
    marks.stored("d", r(0, 1, 2), now=0.0)
    marks.take_changed()
    marks.stored("d", r(5, 6), now=1.0)  # 3 and 4 lost on the way (broker restart)
    assert marks.get("d") == Watermark(2, T0 + 2)
    assert marks.pending("d") == 2 and marks.take_changed() == {}
    marks.stored("d", r(4), now=2.0)
    assert marks.get("d") == Watermark(2, T0 + 2)
    marks.stored("d", r(3), now=3.0)  # re-sent by the agent: 3, then 4-6 already there
    assert marks.get("d") == Watermark(6, T0 + 6)
    assert marks.pending("d") == 0
    assert marks.take_changed() == {"d": Watermark(6, T0 + 6)}


def test_resent_readings_below_the_watermark_change_nothing() -> None:
    marks = StoredWatermarks()
    marks.stored("d", r(0, 1, 2, 3), now=0.0)
    marks.take_changed()
    marks.stored("d", r(1, 2), now=1.0)
    assert marks.get("d") == Watermark(3, T0 + 3) and marks.take_changed() == {}


def test_a_restarted_counter_restarts_the_watermark() -> None:
    marks = StoredWatermarks()
    marks.stored("d", r(0, 1, 2, 3), now=0.0)
    # The agent was reinstalled: seq 0 again, but later than the watermark's reading.
    marks.stored("d", [(0, T0 + 100), (1, T0 + 101)], now=1.0)
    assert marks.get("d") == Watermark(1, T0 + 101)
    assert marks.resets == 1


def test_a_gap_open_too_long_is_given_up_and_counted() -> None:
    marks = StoredWatermarks(gap_timeout_s=60.0)
    marks.stored("d", r(0, 1), now=0.0)
    marks.stored("d", r(5, 6), now=10.0)  # gap 2-4 opens at t=10
    marks.expire(now=69.0)
    assert marks.get("d") == Watermark(1, T0 + 1)
    marks.expire(now=70.0)
    assert marks.get("d") == Watermark(6, T0 + 6)
    assert marks.gaps_skipped == 3  # seqs 2, 3, 4


def test_after_a_skip_the_next_gap_gets_its_own_time() -> None:
    marks = StoredWatermarks(gap_timeout_s=60.0)
    marks.stored("d", r(0), now=0.0)
    marks.stored("d", r(2, 4), now=0.0)  # gaps at 1 and at 3
    marks.expire(now=60.0)  # gives up 1, then 2 is in; gap 3 restarts its clock at 60
    assert marks.get("d") == Watermark(2, T0 + 2)
    marks.expire(now=119.0)
    assert marks.get("d") == Watermark(2, T0 + 2)
    marks.expire(now=120.0)
    assert marks.get("d") == Watermark(4, T0 + 4) and marks.gaps_skipped == 2


def test_too_many_waiting_seqs_give_up_the_gap() -> None:
    marks = StoredWatermarks(max_pending=3)
    marks.stored("d", r(0), now=0.0)
    marks.stored("d", r(10, 11, 12), now=0.0)
    assert marks.get("d") == Watermark(0, T0)
    marks.stored("d", r(14), now=0.0)  # a fourth waiting seq: gap 1-9 given up
    assert marks.get("d") == Watermark(12, T0 + 12)
    assert marks.gaps_skipped == 9 and marks.pending("d") == 1


def test_seed_only_for_unknown_devices_and_devices_are_bounded() -> None:
    marks = StoredWatermarks(max_devices=2)
    marks.seed("a", Watermark(41, T0 + 41))
    marks.stored("a", r(42), now=0.0)
    assert marks.get("a") == Watermark(42, T0 + 42)
    marks.seed("a", Watermark(5, T0 + 5))  # known already: ignored
    assert marks.get("a") == Watermark(42, T0 + 42)
    marks.stored("b", r(0), now=0.0)
    marks.stored("c", r(0), now=0.0)  # "a" is the least recently seen: forgotten
    assert marks.devices == ["b", "c"] and marks.get("a") is None


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        StoredWatermarks(max_pending=0)


@given(st.permutations(list(range(30))), st.integers(min_value=1, max_value=29))
def test_any_delivery_order_ends_at_the_last_seq(order: list[int], split: int) -> None:
    marks = StoredWatermarks()
    marks.stored("d", r(0), now=0.0)  # the first reading seen starts the watermark
    marks.stored("d", r(*order[:split]), now=1.0)
    marks.stored("d", r(*order[split:]), now=2.0)
    assert marks.get("d") == Watermark(29, T0 + 29)
    assert marks.pending("d") == 0 and marks.gaps_skipped == 0
