"""The agent store's telemetry states: unsent -> sent (PUBACK) -> stored (ingest's watermark)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.store import ReadingStore, TelemetryState
from edge_agent.store_status import read_store_status
from fedge_app.status_views import store_lines

TS = 1_700_000_000.0
UNSENT, SENT, STORED = TelemetryState.UNSENT, TelemetryState.SENT, TelemetryState.STORED


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReadingStore]:
    s = ReadingStore(tmp_path / "agent.sqlite", n_features=2, max_readings=1000)
    yield s
    s.close()


def _append(store: ReadingStore, ts: list[float]) -> list[int]:
    return [
        store.append(unit=1, cycle=c, ts=t, values=np.array([c, -c], np.float32))
        for c, t in enumerate(ts)
    ]


def _states(store: ReadingStore) -> dict[int, int]:
    return dict(store.db.execute("SELECT seq, sent FROM readings ORDER BY seq").fetchall())


def test_a_reading_goes_unsent_sent_stored(store: ReadingStore) -> None:
    seqs = _append(store, [TS, TS + 1, TS + 2])
    assert seqs == [1, 2, 3]
    assert _states(store) == {1: UNSENT, 2: UNSENT, 3: UNSENT}
    store.mark_sent([1, 2])
    assert _states(store) == {1: SENT, 2: SENT, 3: UNSENT}
    assert (store.unsent_count(), store.unconfirmed_count()) == (1, 2)
    assert store.confirm_stored(1, TS) == 1
    assert _states(store) == {1: STORED, 2: SENT, 3: UNSENT}
    assert (store.unsent_count(), store.unconfirmed_count()) == (1, 1)


def test_unconfirmed_from_is_the_lowest_reading_not_stored_and_only_rises(
    store: ReadingStore,
) -> None:
    assert store.unconfirmed_from() is None  # empty store
    _append(store, [TS, TS + 1, TS + 2, TS + 3])
    assert store.unconfirmed_from() == (1, TS)  # unsent readings are owed too
    store.mark_sent([1, 2, 3])
    assert store.unconfirmed_from() == (1, TS)
    store.confirm_stored(2, TS + 1)
    assert store.unconfirmed_from() == (3, TS + 2)  # 3 sent, 4 unsent
    store.resend_unconfirmed()  # 3 back to unsent: still owed from 3
    assert store.unconfirmed_from() == (3, TS + 2)
    store.mark_sent([3, 4])
    store.confirm_stored(4, TS + 3)
    assert store.unconfirmed_from() is None


def test_unconfirmed_from_skips_what_the_size_bound_pruned(tmp_path: Path) -> None:
    small = ReadingStore(tmp_path / "small.sqlite", n_features=2, max_readings=100)
    try:
        _append(small, [TS + i for i in range(100)])
        small.mark_sent(range(1, 101))  # none confirmed: the bound prunes sent ones
        _append(small, [TS + 100])
        # 1 + 100 // 100 pruned beyond the bound: seqs 1 and 2 are gone.
        assert small.dropped_unconfirmed == 2
        assert small.unconfirmed_from() == (3, TS + 2)
    finally:
        small.close()


def test_watermark_covers_sent_rows_up_to_its_seq_and_time_only(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1, TS + 2, TS + 3, TS + 4])
    store.mark_sent([1, 2, 3, 5])  # 4 is still in flight
    # Through seq 4 at TS + 3: 1, 2, 3 are covered; 4 was never acknowledged by the
    # broker (UNSENT: the watermark cannot vouch for it), 5 is beyond the seq.
    assert store.confirm_stored(4, TS + 3) == 3
    assert _states(store) == {1: STORED, 2: STORED, 3: STORED, 4: UNSENT, 5: SENT}


def test_a_reading_later_than_the_watermark_belongs_to_a_new_counter(
    store: ReadingStore,
) -> None:
    # The ack is of an earlier store (counter) whose seq 10 had time TS + 100: readings
    # of this store with lower seqs but later times are not covered.
    _append(store, [TS + 50, TS + 150, TS + 200])
    store.mark_sent([1, 2, 3])
    assert store.confirm_stored(10, TS + 100) == 1
    assert _states(store) == {1: STORED, 2: SENT, 3: SENT}


def test_resend_moves_only_unconfirmed_rows_back(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1, TS + 2, TS + 3])
    store.mark_sent([1, 2, 3])
    store.confirm_stored(1, TS)
    assert store.resend_unconfirmed() == 2
    assert _states(store) == {1: STORED, 2: UNSENT, 3: UNSENT, 4: UNSENT}
    assert [r.seq for r in store.unsent(limit=10)] == [2, 3, 4]
    assert store.resend_unconfirmed() == 0


def test_resend_after_a_connection_stops_at_a_seq(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1, TS + 2, TS + 3])
    assert store.newest_unconfirmed() is None
    store.mark_sent([1, 2, 4])
    assert store.newest_unconfirmed() == 4
    assert store.resend_unconfirmed(through_seq=2) == 2
    assert _states(store) == {1: UNSENT, 2: UNSENT, 3: UNSENT, 4: SENT}


def test_mark_sent_never_takes_a_stored_reading_back(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1])
    store.mark_sent([1])
    store.confirm_stored(1, TS)
    store.mark_sent([1, 2])  # 1 again: a re-send acknowledged after the ack covered it
    assert _states(store) == {1: STORED, 2: SENT}


def test_without_confirmations_the_puback_stores_a_reading(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1])
    store.mark_sent([2], confirmed=True)
    assert _states(store) == {1: UNSENT, 2: STORED}
    assert store.unconfirmed_count() == 0


def test_history_is_stored_from_the_start(store: ReadingStore) -> None:
    store.append_unit(
        unit=1, values=np.zeros((3, 2), np.float32), ts=[TS, TS + 1, TS + 2], failed=True
    )
    assert set(_states(store).values()) == {STORED}


def test_watermark_is_kept_across_a_reopen(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "a.sqlite", n_features=2)
    assert store.stored_watermark() is None
    _append(store, [TS, TS + 1])
    store.mark_sent([1, 2])
    store.confirm_stored(2, TS + 1.25)
    store.close()
    again = ReadingStore(tmp_path / "a.sqlite", n_features=2)
    assert again.stored_watermark() == (2, TS + 1.25)
    assert _states(again) == {1: STORED, 2: STORED}
    again.close()


def test_bound_drops_stored_then_unconfirmed_then_unsent(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "s.sqlite", n_features=2, max_readings=10)
    _append(store, [TS + i for i in range(10)])
    store.mark_sent([1, 2])
    store.confirm_stored(1, TS)  # 1 stored, 2 sent, 3..10 unsent
    store.append(unit=1, cycle=10, ts=TS + 10, values=np.zeros(2, np.float32))
    # 11 > 10: the excess (1) plus 1% of the bound (at least 1) = 2 rows go: the
    # stored one, then the unconfirmed one.
    assert sorted(_states(store)) == list(range(3, 12))
    assert (store.dropped_unconfirmed, store.dropped_unsent) == (1, 0)
    for cycle in (11, 12):  # 10 rows, then 11: two go again
        store.append(unit=1, cycle=cycle, ts=TS + cycle, values=np.zeros(2, np.float32))
    # Only unsent rows are left: the two oldest go, counted.
    assert sorted(_states(store)) == list(range(5, 14))
    assert (store.dropped_unconfirmed, store.dropped_unsent) == (1, 2)
    store.close()


def test_every_state_is_training_history(store: ReadingStore) -> None:
    _append(store, [TS, TS + 1, TS + 2])
    store.mark_sent([1, 2])
    store.confirm_stored(1, TS)
    np.testing.assert_array_equal(store.unit_data(1).cycles, [0, 1, 2])


def test_agent_status_shows_unsent_unconfirmed_and_the_watermark(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "a.sqlite", n_features=2)
    _append(store, [TS, TS + 1, TS + 2, TS + 3])
    store.mark_sent([1, 2, 3])
    store.confirm_stored(1, TS)
    status = read_store_status(tmp_path / "a.sqlite")  # read-only, next to the open store
    store.close()
    assert (status.unsent, status.unconfirmed, status.confirmed_through_seq) == (1, 2, 1)
    assert store_lines(status)[1] == (
        "telemetry: unconfirmed 2 (acknowledged by the broker, not yet confirmed stored by "
        "ingest), confirmed through seq 1"
    )


def _old_store(path: Path) -> None:
    """A store as the agent before the telemetry states left it: ``sent`` 1 = the broker
    acknowledged it, no ``telemetry_states`` key in meta."""
    ReadingStore(path, n_features=2).close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'telemetry_states'")
    blob = np.zeros(2, "<f4").tobytes()
    db.executemany(
        "INSERT INTO readings (unit, cycle, ts, vals, sent) VALUES (1, ?, ?, ?, ?)",
        [(0, TS, blob, 1), (1, TS + 1, blob, 1), (2, TS + 2, blob, 0)],
    )
    db.commit()
    db.close()


def test_a_store_from_before_the_states_counts_its_sent_rows_as_confirmed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    _old_store(path)
    # Read before any agent opened (and migrated) it: sent rows are not "unconfirmed".
    old = read_store_status(path)
    assert (old.unsent, old.unconfirmed, old.confirmed_through_seq) == (1, 0, None)
    store = ReadingStore(path, n_features=2)
    # The old agent forgot the broker-acknowledged rows: stored. The unsent one waits.
    assert _states(store) == {1: STORED, 2: STORED, 3: UNSENT}
    store.mark_sent([3])
    store.close()
    again = ReadingStore(path, n_features=2)
    assert _states(again) == {1: STORED, 2: STORED, 3: SENT}  # migrated once only
    again.close()
