"""Robust reducers (median, trimmed mean, Krum, Multi-Krum), hand-computed on literal arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedge.errors import ConfigError
from fedge.strategies.reducers import (
    CoordinateMedian,
    Krum,
    MemorySpool,
    MultiKrum,
    SpooledReducer,
    TrimmedMean,
    make_reducer,
)
from fedge.strategies.reducers.krum import krum_scores


def fed(reducer: SpooledReducer, rows: list[list[float]], weights: list[float] | None = None,
        ) -> np.ndarray:
    """Add ``rows`` as single-tensor updates ``w``; the aggregate's ``w``."""
    for i, row in enumerate(rows):
        reducer.add({"w": np.asarray(row, np.float32)}, 1.0 if weights is None else weights[i])
    return reducer.result()["w"]


def zeros(n: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(n, np.float32)}


# Median ----------------------------------------------------------------------------------


def test_median_of_three() -> None:
    got = fed(CoordinateMedian(zeros(3)), [[1, 5, -2], [3, 0, 4], [2, 9, 1]])
    np.testing.assert_array_equal(got, [2, 5, 1])


def test_median_of_four_averages_the_middle_two_and_ignores_weights() -> None:
    # columns sorted: (1, 2, 3, 10) -> 2.5 and (-1, 0, 5, 9) -> 2.5
    got = fed(CoordinateMedian(zeros(2)), [[1, 5], [3, 0], [2, 9], [10, -1]],
              weights=[1, 1, 1, 1e8])
    np.testing.assert_array_equal(got, [2.5, 2.5])


def test_median_is_taken_of_deltas_from_the_global_model() -> None:
    base = {"a": np.array([10.0, 20.0], np.float32), "b": np.array([[1.0]], np.float32)}
    reducer = CoordinateMedian(base, chunk_size=1)
    for da, db in (([1, -1], 3), ([2, 0], -5), ([-4, 7], 0)):
        reducer.add({"a": base["a"] + np.float32(da), "b": base["b"] + np.float32(db)}, 1.0)
    out = reducer.result()
    np.testing.assert_array_equal(out["a"], [11.0, 20.0])
    np.testing.assert_array_equal(out["b"], [[1.0]])
    assert out["a"].dtype == np.float32 and out["b"].shape == (1, 1)


# Trimmed mean ----------------------------------------------------------------------------


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    rows = [[1, -50], [2, 3], [3, 4], [4, 5], [100, 6]]
    # k = 1 per side: column 0 keeps (2, 3, 4) -> 3; column 1 keeps (3, 4, 5) -> 4
    np.testing.assert_array_equal(fed(TrimmedMean(zeros(2), trim_count=1), rows), [3, 4])
    # trim 0.2 of 5 updates = 1 per side, same result
    np.testing.assert_array_equal(fed(TrimmedMean(zeros(2), trim=0.2), rows), [3, 4])


def test_trimmed_mean_rounds_the_fraction_down_and_clamps_to_the_median() -> None:
    rows = [[1.0], [2.0], [3.0], [10.0]]
    # 0.2 x 4 = 0.8 -> 0 trimmed: the plain mean 4.0
    np.testing.assert_array_equal(fed(TrimmedMean(zeros(1), trim=0.2), rows), [4.0])
    # 3 per side asked of 4 updates -> (4 - 1) // 2 = 1: mean of (2, 3)
    np.testing.assert_array_equal(fed(TrimmedMean(zeros(1), trim_count=3), rows), [2.5])
    assert TrimmedMean(zeros(1), trim=0.45).trimmed(10) == 4


# Krum / Multi-Krum -----------------------------------------------------------------------

# a, b, c, d near the origin, e far away. Squared distances:
#   ab 1, ac 4, ad 2, bc 5, bd 1, cd 2, ae 20000, be 19801, ce 19604, de 19602
# With n = 5, f = 1 each score sums the n - f - 2 = 2 smallest distances:
#   a 1+2 = 3, b 1+1 = 2, c 2+4 = 6, d 1+2 = 3, e 19602+19604 = 39206
KRUM_ROWS = [[0, 0], [1, 0], [0, 2], [1, 1], [100, 100]]


def test_krum_distances_and_scores_by_hand() -> None:
    reducer = Krum(zeros(2), f=1, chunk_size=1)
    got = fed(reducer, KRUM_ROWS)
    assert reducer.distances is not None
    expected = np.array([
        [0, 1, 4, 2, 20000],
        [1, 0, 5, 1, 19801],
        [4, 5, 0, 2, 19604],
        [2, 1, 2, 0, 19602],
        [20000, 19801, 19604, 19602, 0],
    ], np.float64)
    np.testing.assert_allclose(reducer.distances, expected, atol=1e-6)
    np.testing.assert_allclose(krum_scores(expected, 1), [3, 2, 6, 3, 39206])
    assert reducer.selected == [1]
    np.testing.assert_array_equal(got, [1, 0])


def test_multi_krum_averages_the_m_best_with_their_weights() -> None:
    reducer = MultiKrum(zeros(2), f=1, m=3)
    # best three: b (2), a (3), d (3); weights a 1, b 2, d 1:
    # (0*1 + (1, 0)*2 + (1, 1)*1) / 4 = (0.75, 0.25)
    got = fed(reducer, KRUM_ROWS, weights=[1, 2, 5, 1, 1e8])
    assert reducer.selected == [0, 1, 3]
    np.testing.assert_allclose(got, [0.75, 0.25])


def test_multi_krum_keeps_n_minus_f_by_default() -> None:
    reducer = MultiKrum(zeros(2), f=1)
    got = fed(reducer, KRUM_ROWS)
    assert reducer.selected == [0, 1, 2, 3]  # e is the one left out
    np.testing.assert_allclose(got, [0.5, 0.75])


def test_krum_refuses_a_round_too_small_for_its_guarantee() -> None:
    reducer = Krum(zeros(2), f=2)  # needs n > 2f + 2 = 6
    for row in KRUM_ROWS:
        reducer.add({"w": np.asarray(row, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="needs more than 6 updates, got 5"):
        reducer.result()


# Options, chunking, spools ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("trimmed_mean", {"trim": 0.5}),
        ("trimmed_mean", {"trim": 0.1, "trim_count": 1}),
        ("trimmed_mean", {"trim_count": 1.5}),
        ("krum", {"f": -1}),
        ("krum", {"f": 0.5}),
        ("multi_krum", {"m": 0}),
        ("median", {"chunk_size": 0}),
        ("median", {"trim": 0.1}),
    ],
)
def test_bad_options_fail_at_configuration(name: str, options: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=f"bad options for reducer '{name}'"):
        make_reducer(name, options)


def test_nothing_added_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no updates"):
        CoordinateMedian(zeros(2)).result()


def test_mismatched_update_leaves_the_reducer_unchanged() -> None:
    reducer = CoordinateMedian(zeros(2))
    with pytest.raises(ValueError, match="shape"):
        reducer.add({"w": np.zeros(3, np.float32)}, 1.0)
    assert reducer.count == 0 and reducer.weights == []


def test_spool_cannot_change_after_the_first_update() -> None:
    reducer = CoordinateMedian(zeros(2))
    reducer.use_spool(MemorySpool)
    reducer.add({"w": np.ones(2, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="cannot change"):
        reducer.use_spool(MemorySpool)


_ROWS = arrays(np.float32, st.tuples(st.integers(1, 9), st.integers(1, 40)),
               elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=60, deadline=None)
@given(rows=_ROWS, chunk=st.integers(1, 50))
def test_chunked_reduction_equals_the_whole_array(rows: np.ndarray, chunk: int) -> None:
    n, p = rows.shape
    median = CoordinateMedian(zeros(p), chunk_size=chunk)
    trimmed = TrimmedMean(zeros(p), trim_count=1, chunk_size=chunk)
    for row in rows:
        median.add({"w": row}, 1.0)
        trimmed.add({"w": row}, 1.0)
    np.testing.assert_allclose(median.result()["w"], np.median(rows, axis=0), rtol=1e-6)
    k = min(1, (n - 1) // 2)
    expected = np.sort(rows.astype(np.float64), axis=0)[k : n - k].mean(axis=0)
    np.testing.assert_allclose(trimmed.result()["w"], expected, rtol=1e-5, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(rows=_ROWS, chunk=st.integers(1, 50))
def test_chunked_distances_equal_the_direct_ones(rows: np.ndarray, chunk: int) -> None:
    reducer = Krum(zeros(rows.shape[1]), f=0, chunk_size=chunk)
    for row in rows:
        reducer.add({"w": row}, 1.0)
    r64 = rows.astype(np.float64)
    direct = ((r64[:, None, :] - r64[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(reducer.pairwise_distances(), direct, rtol=1e-6, atol=1e-2)
