"""ReadingStore: sequence numbers, store-and-forward, the size bound, RUL labels, reopening."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.store import ReadingStore
from fedge.errors import StorageError

TS = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ReadingStore]:
    s = ReadingStore(tmp_path / "agent.sqlite", n_features=3, max_readings=1000)
    yield s
    s.close()


def _values(i: float) -> np.ndarray:
    return np.array([i, i + 0.5, -i], np.float32)


def test_sequence_numbers_strictly_increase(store: ReadingStore) -> None:
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(5)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert all(b == a + 1 for a, b in itertools.pairwise(seqs))
    assert len(store) == 5


def test_unsent_and_mark_sent(store: ReadingStore) -> None:
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(5)]
    assert store.unsent_count() == 5
    first = store.unsent(limit=2)
    assert [r.seq for r in first] == seqs[:2]
    assert first[0].unit == 1
    assert first[1].cycle == 1
    assert first[1].ts == TS + 1
    np.testing.assert_array_equal(first[1].values, [1.0, 1.5, -1.0])
    store.mark_sent([r.seq for r in first])
    assert store.unsent_count() == 3
    assert [r.seq for r in store.unsent(limit=100)] == seqs[2:]
    store.mark_sent(seqs)  # marking twice is harmless
    assert store.unsent(limit=100) == []
    assert store.unsent_count() == 0
    assert len(store) == 5  # sent readings stay for training


def test_unsent_values_are_writable_copies(store: ReadingStore) -> None:
    store.append(unit=1, cycle=0, ts=TS, values=_values(2))
    values = store.unsent(limit=1)[0].values
    values[0] = 99.0  # must not raise (not a read-only view of the SQLite blob)
    assert store.unsent(limit=1)[0].values[0] == 2.0


def test_bound_drops_sent_rows_first(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "s.sqlite", n_features=3, max_readings=10)
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(10)]
    store.mark_sent(seqs[5:])  # the newest five are sent, the oldest five are not
    new = store.append(unit=1, cycle=10, ts=TS + 10, values=_values(10))
    # 11 > 10: prune the excess (1) plus 1% of the bound (at least 1) = 2 rows, sent first.
    assert len(store) == 9
    assert store.dropped_unsent == 0
    remaining = [r.seq for r in store.unsent(limit=100)]
    assert remaining == [*seqs[:5], new]  # every unsent reading survived
    assert store.unit_data(1).cycles.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10]
    store.close()


def test_bound_counts_dropped_unsent_rows(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "s.sqlite", n_features=3, max_readings=10)
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(10)]
    store.mark_sent(seqs[:1])
    store.append(unit=1, cycle=10, ts=TS + 10, values=_values(10))
    # Two rows go: the single sent one, then the oldest unsent one (counted).
    assert len(store) == 9
    assert store.dropped_unsent == 1
    assert store.unsent(limit=1)[0].seq == seqs[2]
    store.close()


def test_sequence_numbers_are_not_reused_after_pruning(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "s.sqlite", n_features=3, max_readings=10)
    seqs = [store.append(unit=1, cycle=c, ts=TS, values=_values(c)) for c in range(30)]
    assert seqs == list(range(seqs[0], seqs[0] + 30))
    assert len(store) <= 10
    assert store.dropped_unsent == 30 - len(store)
    # Prune everything that is left, then append again: numbering carries on.
    store.mark_sent([r.seq for r in store.unsent(limit=100)])
    more = [store.append(unit=2, cycle=c, ts=TS, values=_values(c)) for c in range(15)]
    assert min(more) > max(seqs)
    assert more == list(range(max(seqs) + 1, max(seqs) + 16))
    store.close()


def test_append_unit_bulk_and_rul_labels(store: ReadingStore) -> None:
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.append_unit(unit=7, values=values, ts=[TS + i for i in range(4)], failed=True)
    assert store.failed_units() == [7]
    data = store.unit_data(7)
    assert data.unit == 7
    assert data.n_cycles == 4
    assert data.cycles.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(data.values, values)
    # RUL of cycle c in a unit that failed after 4 cycles: 3, 2, 1, 0.
    np.testing.assert_array_equal(data.rul(), np.array([3.0, 2.0, 1.0, 0.0], np.float32))
    assert data.rul().dtype == np.float32
    assert store.unsent_count() == 0  # history logged before the agent ran counts as sent


def test_mark_failed_labels_streamed_readings(store: ReadingStore) -> None:
    for c in (2, 0, 1):  # out of order on purpose: unit_data sorts by cycle
        store.append(unit=3, cycle=c, ts=TS + c, values=_values(c))
    running = store.unit_data(3)
    assert running.n_cycles is None
    with pytest.raises(ValueError, match="has not failed"):
        running.rul()
    store.mark_failed(3, 5)
    data = store.unit_data(3)
    assert data.cycles.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(data.values[:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(data.rul(), [4.0, 3.0, 2.0])
    assert store.failed_units() == [3]


def test_unknown_unit_is_empty(store: ReadingStore) -> None:
    data = store.unit_data(42)
    assert data.values.shape == (0, 3)
    assert data.cycles.shape == (0,)
    assert data.n_cycles is None
    assert store.latest(42, 5).shape == (0, 3)


def test_latest_returns_the_last_readings_in_cycle_order(store: ReadingStore) -> None:
    for c in range(6):
        store.append(unit=1, cycle=c, ts=TS + c, values=_values(c))
    last = store.latest(1, 3)
    assert last.shape == (3, 3)
    np.testing.assert_array_equal(last[:, 0], [3.0, 4.0, 5.0])
    assert store.latest(1, 100).shape == (6, 3)


def test_reopening_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    store = ReadingStore(path, n_features=3, max_readings=1000)
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(4)]
    store.mark_sent(seqs[:2])
    store.mark_failed(1, 4)
    store.close()

    again = ReadingStore(path, n_features=3, max_readings=1000)
    assert len(again) == 4
    assert [r.seq for r in again.unsent(limit=10)] == seqs[2:]
    assert again.failed_units() == [1]
    np.testing.assert_array_equal(again.unit_data(1).rul(), [3.0, 2.0, 1.0, 0.0])
    assert again.append(unit=1, cycle=4, ts=TS, values=_values(4)) == seqs[-1] + 1
    again.close()


def test_wrong_feature_count_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    ReadingStore(path, n_features=3).close()
    with pytest.raises(StorageError, match="holds 3 features per reading, source has 4"):
        ReadingStore(path, n_features=4)


@pytest.mark.parametrize(
    "values",
    [np.zeros(2), np.zeros(4), np.zeros((1, 3)), np.zeros((3, 1)), np.float32(1.0)],
    ids=["short", "long", "row", "column", "scalar"],
)
def test_wrong_shaped_reading(store: ReadingStore, values: np.ndarray) -> None:
    with pytest.raises(StorageError, match=r"store expects \(3,\)"):
        store.append(unit=1, cycle=0, ts=TS, values=values)
    assert len(store) == 0


def test_wrong_shaped_unit(store: ReadingStore) -> None:
    with pytest.raises(StorageError, match=r"store expects \(3,\)"):
        store.append_unit(unit=1, values=np.zeros((4, 2)), ts=[TS] * 4, failed=True)
    assert len(store) == 0
    assert store.failed_units() == []


def test_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open reading store"):
        ReadingStore(path, n_features=3)


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open reading store"):
        ReadingStore(tmp_path / "no" / "such" / "dir" / "agent.sqlite", n_features=3)


def test_values_are_stored_as_float32(store: ReadingStore) -> None:
    store.append(unit=1, cycle=0, ts=TS, values=np.array([1 / 3, 2.0, 3.0], np.float64))
    stored = store.unsent(limit=1)[0].values
    assert stored.dtype == np.float32
    assert stored[0] == np.float32(1 / 3)


def test_head_keeps_the_first_cycles_of_each_unit(store: ReadingStore) -> None:
    for c in range(70):
        store.append(unit=4, cycle=c, ts=TS + c, values=_values(c))
    head = store.head(4)
    assert head.shape == (64, 3)  # MAX_BASELINE_CYCLES
    np.testing.assert_array_equal(head[:2], [[0.0, 0.5, -0.0], [1.0, 1.5, -1.0]])
    assert store.head(99).shape == (0, 3)


def test_head_of_a_bulk_unit(store: ReadingStore) -> None:
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    store.append_unit(unit=2, values=values, ts=[TS + i for i in range(10)], failed=True)
    np.testing.assert_array_equal(store.head(2), values)


def test_head_stops_at_the_first_missing_cycle(store: ReadingStore) -> None:
    for c in (0, 1, 3, 4):  # cycle 2 never arrived
        store.append(unit=1, cycle=c, ts=TS + c, values=_values(c))
    np.testing.assert_array_equal(store.head(1), [_values(0), _values(1)])
    store.append(unit=7, cycle=5, ts=TS, values=_values(5))  # agent installed mid-life
    assert store.head(7).shape == (0, 3)


def test_head_survives_pruning_while_its_unit_has_readings(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "s.sqlite", n_features=3, max_readings=10)
    seqs = [store.append(unit=1, cycle=c, ts=TS + c, values=_values(c)) for c in range(10)]
    store.mark_sent(seqs)
    store.append(unit=1, cycle=10, ts=TS + 10, values=_values(10))
    assert store.unit_data(1).cycles.tolist()[0] == 2  # cycles 0 and 1 were pruned
    assert store.head(1).shape == (11, 3)  # ... but the baseline still has them
    np.testing.assert_array_equal(store.head(1)[0], _values(0))
    # Once every reading of unit 1 is gone, so is its head.
    seqs = [store.append(unit=2, cycle=c, ts=TS + c, values=_values(c)) for c in range(12)]
    store.mark_sent(seqs)
    store.append(unit=2, cycle=12, ts=TS, values=_values(12))
    assert store.unit_data(1).cycles.tolist() == []
    assert store.head(1).shape == (0, 3)
    assert store.head(2).shape[0] == 13
    store.close()


def test_store_from_before_unit_heads_gets_them_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = ReadingStore(path, n_features=3)
    for c in range(5):
        store.append(unit=3, cycle=c, ts=TS + c, values=_values(c))
    store._db.execute("DELETE FROM unit_head")  # what an older agent version left behind
    store.close()
    reopened = ReadingStore(path, n_features=3)
    np.testing.assert_array_equal(reopened.head(3), [_values(c) for c in range(5)])
    reopened.close()


def test_the_model_floor_is_read_once_and_kept_in_step_with_every_write(tmp_path: Path) -> None:
    path = tmp_path / "floor.sqlite"
    store = ReadingStore(path, n_features=3, max_readings=10)
    reads: list[str] = []
    store._db.set_trace_callback(
        lambda sql: reads.append(sql) if "key = 'model_version'" in sql else None
    )
    assert store.model_floor() is None
    store.save_model(5, b"v5")
    store.save_model(3, b"v3")  # the floor never goes down
    assert store.model_floor() == 5
    store.set_meta({"model_version": "7"})
    assert store.model_floor() == 7
    store.set_meta({"model_version": None})
    assert store.model_floor() is None
    store.save_model(2, b"v2")
    assert store.model_floor() == 2
    # One SELECT in all (the first call, and save_model's first floor check is cached
    # by then); every later answer came from the kept value, and it matches the file.
    assert len([q for q in reads if q.lstrip().upper().startswith("SELECT")]) == 1
    store.close()
    again = ReadingStore(path, n_features=3, max_readings=10)
    assert again.model_floor() == 2
    again.close()
