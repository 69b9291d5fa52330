"""Windows, RUL targets and mergeable feature statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.data import FeatureStats, last_window, make_windows, rul_targets
from fedge.errors import DataError


def test_rul_targets_piecewise_linear() -> None:
    assert rul_targets(5).tolist() == [4, 3, 2, 1, 0]
    assert rul_targets(6, cap=3).tolist() == [3, 3, 3, 2, 1, 0]
    assert rul_targets(3, cap=math.inf).tolist() == [2, 1, 0]
    assert rul_targets(5).dtype == np.float32
    assert rul_targets(0).shape == (0,)
    long = rul_targets(300)
    assert long[0] == 125.0 and long[-126] == 125.0 and long[-125] == 124.0


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_rul_targets_rejects_bad_length(bad: object) -> None:
    with pytest.raises(DataError):
        rul_targets(bad)  # type: ignore[arg-type]


def test_rul_targets_rejects_bad_cap() -> None:
    with pytest.raises(DataError):
        rul_targets(5, cap=0)


# Six cycles, two features: row t is [2t, 2t+1].
UNIT = np.arange(12, dtype=np.float64).reshape(6, 2)


def test_make_windows_literal() -> None:
    x, y = make_windows(UNIT, rul_targets(6, cap=3), window=3)
    assert x.shape == (4, 3, 2) and x.dtype == np.float32
    assert x[0].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert x[1].tolist() == [[2, 3], [4, 5], [6, 7]]
    assert x[3].tolist() == [[6, 7], [8, 9], [10, 11]]
    # Label = capped RUL at the window's last cycle (cycles 2..5 -> 3, 2, 1, 0).
    assert y.tolist() == [3, 2, 1, 0]
    assert y.dtype == np.float32


def test_make_windows_stride_is_anchored_at_the_last_cycle() -> None:
    x, y = make_windows(UNIT, rul_targets(6), window=3, stride=2)
    # Ends at cycles 5 and 3 (never dropping the window nearest failure), chronological.
    assert x[:, -1, 0].tolist() == [6, 10]
    assert y.tolist() == [2, 0]


def test_make_windows_without_targets_and_full_length_window() -> None:
    x, y = make_windows(UNIT, None, window=6)
    assert y is None
    assert x.shape == (1, 6, 2)
    np.testing.assert_array_equal(x[0], UNIT)


def test_make_windows_short_unit_yields_no_windows() -> None:
    x, y = make_windows(UNIT[:2], rul_targets(2), window=3)
    assert x.shape == (0, 3, 2) and x.dtype == np.float32
    assert y is not None and y.shape == (0,)


def test_make_windows_copies_input() -> None:
    data = UNIT.copy()
    x, _ = make_windows(data, None, window=2)
    data[:] = -1
    assert x[0].tolist() == [[0, 1], [2, 3]]


@pytest.mark.parametrize(
    ("sensors", "targets", "kwargs"),
    [
        (np.zeros(6), None, {}),  # 1-D sensors
        (UNIT, np.zeros(5), {"window": 2}),  # target length mismatch
        (UNIT, None, {"window": 0}),
        (UNIT, None, {"window": 2, "stride": 0}),
        (np.array([["a", "b"]]), None, {"window": 1}),
    ],
)
def test_make_windows_rejects_bad_input(
    sensors: np.ndarray, targets: np.ndarray | None, kwargs: dict[str, int]
) -> None:
    with pytest.raises(DataError):
        make_windows(sensors, targets, **kwargs)


def test_last_window_takes_the_tail() -> None:
    w = last_window(UNIT, window=2)
    assert w.tolist() == [[8, 9], [10, 11]]
    assert w.dtype == np.float32


def test_last_window_pads_short_units_with_first_row() -> None:
    w = last_window(np.array([[1.0, 2.0], [3.0, 4.0]]), window=4)
    assert w.tolist() == [[1, 2], [1, 2], [1, 2], [3, 4]]


def test_last_window_rejects_empty_unit() -> None:
    with pytest.raises(DataError):
        last_window(np.empty((0, 3)), window=4)


def test_feature_stats_literal() -> None:
    stats = FeatureStats.from_array(np.array([[1.0, 2.0], [3.0, 6.0]]))
    assert stats.count == 2
    assert stats.sum.tolist() == [4, 8]
    assert stats.sumsq.tolist() == [10, 40]
    assert stats.mean.tolist() == [2, 4]
    assert stats.std.tolist() == [1, 2]
    assert stats.normalise(np.array([[3.0, 8.0]])).tolist() == [[1, 2]]


def test_feature_stats_constant_feature_std_is_floored() -> None:
    stats = FeatureStats.from_array(np.full((10, 1), 7.0))
    assert stats.std.tolist() == [1e-6]


def test_feature_stats_is_immutable() -> None:
    source = np.array([[1.0, 2.0]])
    stats = FeatureStats.from_array(source)
    with pytest.raises(ValueError, match="read-only"):
        stats.sum[0] = 5.0


def test_feature_stats_errors() -> None:
    a = FeatureStats.from_array(np.ones((3, 2)))
    with pytest.raises(DataError):
        a.merge(FeatureStats.from_array(np.ones((3, 3))))
    with pytest.raises(DataError):
        FeatureStats.combine([])
    with pytest.raises(DataError):
        _ = FeatureStats.empty(2).mean
    with pytest.raises(DataError):
        FeatureStats.from_array(np.array([[np.nan]]))
    with pytest.raises(DataError):
        FeatureStats(-1, np.zeros(1), np.zeros(1))
    with pytest.raises(DataError):
        FeatureStats(1, np.zeros(1), np.array([-1.0]))


def test_feature_stats_dict_round_trip_and_validation() -> None:
    stats = FeatureStats.from_array(np.array([[1.5, -2.0], [0.5, 4.0]]))
    back = FeatureStats.from_dict(stats.to_dict())
    assert back.count == 2
    np.testing.assert_array_equal(back.sum, stats.sum)
    np.testing.assert_array_equal(back.sumsq, stats.sumsq)
    bad_payloads: list[object] = [
        {},
        {"count": 1, "sum": [1.0], "sumsq": "x"},
        {"count": 1, "sum": ["1"], "sumsq": [1.0]},
        {"count": 1, "sum": [1.0], "sumsq": [1.0, 2.0]},
        {"count": 1.5, "sum": [1.0], "sumsq": [1.0]},
        {"count": 1, "sum": [float("inf")], "sumsq": [1.0]},
        {"count": 1, "sum": [0.0] * 5, "sumsq": [0.0] * 5},
        None,
    ]
    for payload in bad_payloads:
        with pytest.raises(DataError):
            FeatureStats.from_dict(payload, max_features=4)  # type: ignore[arg-type]


@st.composite
def _parts(draw: st.DrawFn) -> list[np.ndarray]:
    n_features = draw(st.integers(1, 4))
    n_parts = draw(st.integers(1, 5))
    elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    return [
        draw(hnp.arrays(np.float64, (draw(st.integers(0, 12)), n_features), elements=elements))
        for _ in range(n_parts)
    ]


@settings(max_examples=150, deadline=None)
@given(_parts())
def test_merged_stats_equal_stats_of_concatenation(parts: list[np.ndarray]) -> None:
    merged = FeatureStats.combine(FeatureStats.from_array(p) for p in parts)
    pairwise = FeatureStats.from_array(parts[0])
    for p in parts[1:]:
        pairwise = pairwise.merge(FeatureStats.from_array(p))
    pooled = np.concatenate(parts)
    direct = FeatureStats.from_array(pooled)

    for stats in (merged, pairwise):
        assert stats.count == direct.count == pooled.shape[0]
        np.testing.assert_allclose(stats.sum, direct.sum, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(stats.sumsq, direct.sumsq, rtol=1e-12, atol=1e-6)
        if pooled.shape[0] > 0:
            np.testing.assert_allclose(stats.mean, pooled.mean(axis=0), rtol=1e-9, atol=1e-9)
            # E[x²]-E[x]² loses ~eps·E[x²] (≤ 1e-10 here) to cancellation.
            np.testing.assert_allclose(stats.var, pooled.var(axis=0), rtol=1e-7, atol=1e-8)
            np.testing.assert_allclose(
                stats.std, np.maximum(pooled.std(axis=0), 1e-6), rtol=1e-6, atol=1e-4
            )


def test_splits_partition_every_unit_once_with_skew() -> None:
    from fedge.data.simulator import UnitRun
    from fedge.data.splits import split_iid, split_noniid

    runs = [
        UnitRun(
            unit=i,
            fault_mode="x",
            regimes=np.zeros(n, np.int64),
            sensors=np.zeros((n, 2), np.float32),
        )
        for i, n in enumerate(range(100, 200, 2))  # 50 units, lifetimes 100..198
    ]
    rng = np.random.default_rng(0)
    for parts in (split_iid(runs, 10, rng), split_noniid(runs, 10, rng)):
        assert sorted(r.unit for p in parts for r in p) == list(range(50))
    iid = split_iid(runs, 10, np.random.default_rng(1))
    assert {len(p) for p in iid} == {5}
    skewed = split_noniid(runs, 10, np.random.default_rng(1))
    assert min(len(p) for p in skewed) >= 3 and len({len(p) for p in skewed}) > 1
    # Contiguous lifetime ranges: every unit of client c outlives every unit of client c-1.
    for lower, upper in itertools.pairwise(skewed):
        assert max(r.n_cycles for r in lower) <= min(r.n_cycles for r in upper)
