"""Lives, labels and censoring on hand-made event sequences; split_lives invariants."""

from __future__ import annotations

import itertools
import math
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedge.errors import DataError, EventError, MessageError
from fedge.lives import (
    EventKind,
    MaintenanceEvent,
    horizon_labels,
    life_of,
    rul_labels,
    split_lives,
)
from fedge.messages import decode_message, encode_message

T0 = 1_700_000_000.0


def ev(
    kind: EventKind, ts: float, *, device: str = "pump-1", n: int | None = None
) -> MaintenanceEvent:
    # Deterministic uuid4-shaped ids keep the tie-break order of the tests readable.
    event_id = uuid.UUID(int=n or int(ts * 10), version=4).hex
    return MaintenanceEvent(
        fleet="f", device=device, kind=kind, ts=T0 + ts, event_id=event_id, source="cli"
    )


def times(*offsets: float) -> np.ndarray:
    return T0 + np.asarray(offsets, dtype=np.float64)


def test_no_events_is_one_running_life() -> None:
    (life,) = split_lives(times(0, 1, 2), [])
    assert (life.index, life.first, life.n_readings, life.end_kind) == (0, 0, 3, None)
    assert life.running and life.start_ts == T0 and life.end_ts is None


def test_nothing_gives_no_lives() -> None:
    assert split_lives(times(), []) == []


def test_failure_closes_a_life_and_the_reading_at_its_time_belongs_to_it() -> None:
    lives = split_lives(times(0, 1, 2, 3, 4), [ev("failure", 2)])
    assert [(lf.first, lf.n_readings, lf.end_kind) for lf in lives] == [
        (0, 3, "failure"),
        (3, 2, None),
    ]
    assert lives[0].end_ts == T0 + 2 and lives[1].start_ts == T0 + 2
    assert lives[1].opened_by == ev("failure", 2).event_id


def test_events_out_of_order_and_repeated_give_the_same_lives() -> None:
    events = [ev("repair", 5), ev("failure", 2), ev("repair", 5), ev("replace", 8)]
    ts = times(*range(11))
    a = split_lives(ts, events)
    b = split_lives(ts, list(reversed(events)))
    assert a == b
    assert [(lf.n_readings, lf.end_kind) for lf in a] == [
        (3, "failure"),
        (3, "repair"),
        (3, "replace"),
        (2, None),
    ]


def test_same_event_id_with_different_contents_is_refused() -> None:
    a = ev("failure", 2, n=7)
    b = a.model_copy(update={"note": "other"})
    with pytest.raises(EventError, match="two different events"):
        split_lives(times(0, 1, 2, 3), [a, b])


def test_events_of_two_machines_are_refused() -> None:
    with pytest.raises(EventError, match="mixed"):
        split_lives(times(0, 1), [ev("failure", 0), ev("repair", 1, device="pump-2")])


def test_failure_then_repair_with_nothing_between_is_one_failed_life() -> None:
    lives = split_lives(times(0, 1, 2, 10, 11), [ev("failure", 2), ev("repair", 6)])
    assert [(lf.n_readings, lf.end_kind) for lf in lives] == [(3, "failure"), (2, None)]
    assert lives[0].events == (ev("failure", 2).event_id, ev("repair", 6).event_id)
    # The next life began when the repair was done.
    assert lives[1].start_ts == T0 + 6
    # A reading while the machine was down (after the failure, before the repair) has no life.
    assert life_of(lives, T0 + 4) is None
    assert life_of(lives, T0 + 2) is lives[0]
    assert life_of(lives, T0 + 7) is lives[1]
    assert life_of(lives, T0 - 100) is lives[0]


def test_two_failures_in_a_row_are_one_failure_reported_twice() -> None:
    lives = split_lives(times(0, 1, 5), [ev("failure", 1), ev("failure", 3)])
    assert [(lf.n_readings, lf.end_kind) for lf in lives] == [(2, "failure"), (1, None)]
    assert len(lives[0].events) == 2


def test_two_failures_with_readings_between_are_two_failed_lives() -> None:
    lives = split_lives(times(0, 1, 2, 3), [ev("failure", 1), ev("failure", 3)])
    assert [(lf.n_readings, lf.end_kind) for lf in lives] == [
        (2, "failure"),
        (2, "failure"),
        (0, None),
    ]


def test_repair_then_failure_with_nothing_between_is_censored() -> None:
    lives = split_lives(times(0, 1, 9), [ev("repair", 1), ev("failure", 4)])
    assert lives[0].end_kind == "repair" and lives[0].censored


def test_equal_timestamps_put_the_failure_first() -> None:
    lives = split_lives(times(0, 1, 2), [ev("repair", 1, n=1), ev("failure", 1, n=2)])
    assert lives[0].end_kind == "failure"


def test_events_before_any_reading_close_no_life() -> None:
    lives = split_lives(times(10, 11), [ev("replace", 1), ev("repair", 3)])
    assert len(lives) == 1
    assert lives[0].running and lives[0].n_readings == 2 and lives[0].start_ts == T0 + 3


def test_an_event_after_the_last_reading_opens_an_empty_current_life() -> None:
    lives = split_lives(times(0, 1), [ev("replace", 5)])
    assert [(lf.n_readings, lf.end_kind) for lf in lives] == [(2, "replace"), (0, None)]
    assert lives[1].start_ts == T0 + 5
    assert split_lives(times(), [ev("repair", 5)])[0].n_readings == 0


def test_unsorted_readings_are_refused() -> None:
    with pytest.raises(DataError, match="non-decreasing"):
        split_lives(times(0, 2, 1), [])


def test_rul_labels_in_cycles_count_to_the_last_cycle_and_are_capped() -> None:
    life = split_lives(times(0, 1, 2, 3, 4), [ev("failure", 4)])[0]
    cycles = np.array([10, 11, 12, 13, 14])
    np.testing.assert_array_equal(rul_labels(life, cycles, unit="cycles"), [4, 3, 2, 1, 0])
    np.testing.assert_array_equal(
        rul_labels(life, cycles, unit="cycles", cap=2.5), [2.5, 2.5, 2, 1, 0]
    )


def test_rul_labels_in_hours_count_to_the_failure_event() -> None:
    ts = T0 + np.array([0.0, 3600.0, 5400.0])
    life = split_lives(
        ts,
        [
            MaintenanceEvent.new(
                fleet="f", device="d", kind="failure", ts=T0 + 7200.0, source="operator"
            )
        ],
    )[0]
    np.testing.assert_allclose(rul_labels(life, ts, unit="hours"), [2.0, 1.0, 0.5])


def test_censored_and_running_lives_have_no_rul_labels() -> None:
    censored, running = split_lives(times(0, 1, 2), [ev("repair", 1)])
    with pytest.raises(EventError, match="censored by a repair"):
        rul_labels(censored, [0, 1], unit="cycles")
    with pytest.raises(EventError, match="still running"):
        rul_labels(running, [2], unit="cycles")


def test_rul_labels_need_one_time_per_reading() -> None:
    life = split_lives(times(0, 1), [ev("failure", 1)])[0]
    with pytest.raises(DataError, match="2 readings"):
        rul_labels(life, [0, 1, 2], unit="cycles")


def test_horizon_labels_of_a_failed_life() -> None:
    life = split_lives(times(*range(6)), [ev("failure", 5)])[0]
    labels = horizon_labels(life, np.arange(6), unit="cycles", horizon=2)
    # RUL 5 4 3 2 1 0: within 2 cycles from RUL 2 on.
    np.testing.assert_array_equal(labels.target, [0, 0, 0, 1, 1, 1])
    assert labels.known.all()


def test_horizon_labels_of_a_censored_life_are_negatives_far_from_the_repair_only() -> None:
    life = split_lives(times(*range(6)), [ev("repair", 5)])[0]
    labels = horizon_labels(life, np.arange(6), unit="cycles", horizon=2)
    # Distance to the censoring 5 4 3 2 1 0: known negatives only where it exceeds 2.
    np.testing.assert_array_equal(labels.known, [True, True, True, False, False, False])
    np.testing.assert_array_equal(labels.target, [0, 0, 0, 0, 0, 0])
    with pytest.raises(EventError):
        horizon_labels(split_lives(times(0), [])[0], [0], unit="cycles", horizon=2)


def test_event_wire_format_and_bounds() -> None:
    event = ev("failure", 2, n=1)
    payload = encode_message(event)
    assert payload == (
        b'{"fleet":"f","device":"pump-1","kind":"failure","ts":1700000002.0,"note":"",'
        b'"event_id":"00000000000040008000000000000001","source":"cli"}'
    )
    assert decode_message(MaintenanceEvent, payload) == event
    for bad in (
        payload.replace(b'"failure"', b'"explosion"'),
        payload.replace(b"1700000002.0", b"12.0"),  # a broken clock
        payload.replace(b"00000000000040008000000000000001", b"not-a-uuid"),
        payload.replace(b'"note":""', b'"note":"' + b"x" * 501 + b'"'),
        payload.replace(b'"cli"', b'"mqtt"'),
    ):
        with pytest.raises(MessageError):
            decode_message(MaintenanceEvent, bad)
    fresh = MaintenanceEvent.new(fleet="f", device="d", kind="repair", ts=T0, source="operator")
    assert uuid.UUID(fresh.event_id).version == 4


@st.composite
def histories(draw: st.DrawFn) -> tuple[np.ndarray, list[MaintenanceEvent]]:
    offsets = sorted(draw(st.lists(st.integers(0, 60), max_size=30)))
    kinds = st.sampled_from(["failure", "repair", "replace"])
    raw = draw(st.lists(st.tuples(kinds, st.integers(-5, 65)), max_size=10))
    events = [ev(k, float(t), n=i + 1) for i, (k, t) in enumerate(raw)]
    dupes = draw(st.lists(st.sampled_from(events), max_size=3)) if events else []
    return times(*offsets), draw(st.permutations(events + dupes))


@settings(max_examples=300, deadline=None)
@given(histories())
def test_split_lives_invariants(history: tuple[np.ndarray, list[MaintenanceEvent]]) -> None:
    ts, events = history
    lives = split_lives(ts, events)
    # Every reading is in exactly one life, and life_of agrees with the split.
    owner = np.full(ts.shape[0], -1)
    for life in lives:
        assert (owner[life.readings] == -1).all()
        owner[life.readings] = life.index
        for t in ts[life.readings]:
            assert life.contains(float(t))
            assert life_of(lives, float(t)) is life
    assert (owner >= 0).all()
    # Lives are in order, contiguous in the reading array, not overlapping in time.
    assert [lf.index for lf in lives] == list(range(len(lives)))
    assert sum(lf.n_readings for lf in lives) == ts.shape[0]
    for a, b in itertools.pairwise(lives):
        assert a.end_ts is not None and b.start_ts >= a.end_ts
        assert b.first == a.first + a.n_readings
    # Only the last life runs, only the running life may be empty.
    assert all(not lf.running for lf in lives[:-1])
    assert all(lf.n_readings > 0 for lf in lives if not lf.running)
    # The order events arrive in does not matter.
    assert split_lives(ts, list(reversed(events))) == lives
    # Failed lives label every reading, down to 0 at the last one.
    for life in lives:
        if life.failed:
            rul = rul_labels(life, np.arange(life.n_readings), unit="cycles", cap=math.inf)
            assert rul[-1] == 0 and (np.diff(rul) == -1).all()
