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


# The agent's word: TelemetryBatch.unconfirmed_from (issue 12) ---------------------------
def owed(seq: int) -> tuple[int, float]:
    """``unconfirmed_from`` of an agent whose lowest reading not confirmed is ``seq``."""
    return (seq, T0 + seq)


def test_a_fresh_ingest_starts_below_what_the_agent_owes_not_below_what_it_sees() -> None:
    # The agent holds 100-150 unconfirmed (the broker lost them) and sends 151 first.
    marks = StoredWatermarks()
    marks.stored("d", r(151, 152), now=0.0, unconfirmed_from=owed(100))
    assert marks.get("d") == Watermark(99, T0 + 100)
    # The start is published at once (the agent's re-send need not wait for settle_s).
    assert marks.take_changed() == {"d": Watermark(99, T0 + 100)}
    assert marks.pending("d") == 2
    marks.stored("d", r(*range(100, 150)), now=1.0, unconfirmed_from=owed(100))
    assert marks.get("d") == Watermark(149, T0 + 149)  # 150 still missing
    marks.stored("d", r(150), now=2.0, unconfirmed_from=owed(100))
    assert marks.get("d") == Watermark(152, T0 + 152)
    assert marks.take_changed() == {"d": Watermark(152, T0 + 152)}
    assert (marks.pending("d"), marks.gaps_skipped, marks.waived) == (0, 0, 0)


def test_without_the_field_the_first_reading_seen_starts_the_watermark() -> None:
    # An agent from before the field: the old rule, and the risk that came with it.
    marks = StoredWatermarks()
    marks.stored("d", r(151, 152), now=0.0)
    assert marks.get("d") == Watermark(152, T0 + 152)


def test_the_agents_word_moves_a_stale_watermark_up_and_counts_what_it_waives() -> None:
    # Seeded from a retained ack older than the agent's own (a broker that came back
    # from an older snapshot): 42-99 were stored by the ingest before, and the agent
    # owes from 100 on. 60 and 61 come again late (a redelivery): taken in.
    marks = StoredWatermarks()
    marks.seed("d", Watermark(41, T0 + 41))
    marks.stored("d", r(60, 61), now=0.0)
    marks.take_changed()
    marks.stored("d", r(100, 101), now=1.0, unconfirmed_from=owed(100))
    assert marks.get("d") == Watermark(101, T0 + 101)
    assert marks.take_changed() == {"d": Watermark(101, T0 + 101)}
    assert marks.waived == 99 - 41 - 2  # 42-99 less 60 and 61
    assert (marks.pending("d"), marks.gaps_skipped) == (0, 0)


def test_an_agent_lagging_behind_the_watermark_changes_nothing() -> None:
    # Ingest stored through 20; the agent has not had that ack yet and still owes 11.
    marks = StoredWatermarks()
    marks.stored("d", r(*range(11, 21)), now=0.0, unconfirmed_from=owed(11))
    marks.take_changed()
    marks.stored("d", r(21), now=1.0, unconfirmed_from=owed(11))
    assert marks.get("d") == Watermark(21, T0 + 21)
    assert (marks.resets, marks.waived) == (0, 0)


def test_the_agents_word_on_a_restarted_counter_restarts_the_watermark_below_it() -> None:
    marks = StoredWatermarks()
    marks.stored("d", r(*range(1, 51)), now=0.0, unconfirmed_from=owed(1))
    assert marks.get("d") == Watermark(50, T0 + 50)
    # A new store: seqs from 1 again, later times. It owes 1-5 and sends 6 first. The
    # reading-level rule alone would restart at 6 and vouch for 1-5.
    later = T0 + 1000
    marks.stored("d", [(6, later + 6)], now=1.0, unconfirmed_from=(1, later + 1))
    assert marks.get("d") == Watermark(0, later + 1)
    assert marks.resets == 1 and marks.pending("d") == 1
    marks.stored("d", [(s, later + s) for s in range(1, 6)], now=2.0,
                 unconfirmed_from=(1, later + 1))
    assert marks.get("d") == Watermark(6, later + 6)


def test_a_watermark_below_zero_is_not_published() -> None:
    # An agent owing its seq 0: "through -1" has no StoredAck; the next move is published.
    marks = StoredWatermarks()
    marks.stored("d", r(1), now=0.0, unconfirmed_from=owed(0))
    assert marks.get("d") == Watermark(-1, T0)
    assert marks.take_changed() == {}
    marks.stored("d", r(0), now=1.0, unconfirmed_from=owed(0))
    assert marks.take_changed() == {"d": Watermark(1, T0 + 1)}


@given(
    st.integers(min_value=0, max_value=40),
    st.permutations(list(range(60))),
    st.integers(min_value=1, max_value=59),
)
def test_no_watermark_ever_covers_a_reading_the_agent_still_owes(
    owes_from: int, order: list[int], split: int
) -> None:
    # The agent owes owes_from..59 and they arrive in any order, over two batches,
    # each batch saying what it owes at the time (nothing gets confirmed meanwhile).
    sent = [s for s in order if s >= owes_from]
    marks = StoredWatermarks()
    arrived: set[int] = set()
    for part in (sent[:split], sent[split:]):
        if not part:
            continue
        marks.stored("d", r(*part), now=0.0, unconfirmed_from=owed(owes_from))
        arrived.update(part)
        mark = marks.get("d")
        assert mark is not None
        # Every owed seq the watermark covers has arrived.
        assert all(s in arrived for s in range(owes_from, mark.through_seq + 1))
    assert marks.get("d") == Watermark(59, T0 + 59)
    assert marks.waived == 0 and marks.gaps_skipped == 0


def test_the_word_of_an_older_counter_moves_nothing() -> None:
    # The store was replaced (seqs from 1 again, later times); then a batch of the old
    # store comes late, owing from 500 at an earlier time than the watermark's.
    later = T0 + 1000
    marks = StoredWatermarks()
    marks.stored("d", [(1, later + 1), (2, later + 2)], now=0.0, unconfirmed_from=(1, later + 1))
    marks.take_changed()
    marks.stored("d", r(500), now=1.0, unconfirmed_from=owed(500))
    assert marks.get("d") == Watermark(2, later + 2)
    assert (marks.waived, marks.take_changed()) == (0, {})
