"""Reducers: the streaming mean, the feature-stats merge, the buffered base, the registry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.data.windows import FeatureStats
from fedge.errors import ConfigError, RejectReason, UpdateRejectedError
from fedge.strategies import (
    REDUCERS,
    STATS_TENSORS,
    BufferedReducer,
    FeatureStatsReducer,
    Params,
    StreamingMean,
    make_reducer,
    stats_template,
)

# Mean reducer -----------------------------------------------------------------------------


def test_mean_reducer_hand_computed_three_updates() -> None:
    template = {"w": np.zeros(2, np.float32), "b": np.zeros((1, 1), np.float32)}
    acc = StreamingMean(template)
    acc.add({"w": np.array([2.0, -4.0], np.float32), "b": np.array([[1.0]], np.float32)}, 1.0)
    acc.add({"w": np.array([6.0, 0.0], np.float32), "b": np.array([[3.0]], np.float32)}, 2.0)
    acc.add({"w": np.array([0.0, 8.0], np.float32), "b": np.array([[-1.0]], np.float32)}, 5.0)
    # w = (1*[2,-4] + 2*[6,0] + 5*[0,8]) / 8 = [14, 36] / 8 = [1.75, 4.5]
    # b = (1*1 + 2*3 + 5*-1) / 8 = 2 / 8 = 0.25
    result = acc.result()
    np.testing.assert_array_equal(result["w"], np.array([1.75, 4.5], np.float32))
    np.testing.assert_array_equal(result["b"], np.array([[0.25]], np.float32))
    assert result["w"].dtype == np.float32
    assert (acc.count, acc.total_weight) == (3, 8.0)
    assert acc.name == "mean"
    assert REDUCERS["mean"] is StreamingMean


def test_mean_reducer_result_is_fresh_each_time() -> None:
    acc = StreamingMean({"w": np.zeros(1, np.float32)})
    acc.add({"w": np.array([3.0], np.float32)}, 1.0)
    first = acc.result()
    first["w"][0] = 99.0
    np.testing.assert_array_equal(acc.result()["w"], [3.0])
    np.testing.assert_array_equal(acc.mean()["w"], [3.0])  # the old name still works


# Stats reducer ----------------------------------------------------------------------------

# Two devices' raw rows (three features). Device A: 3 rows, device B: 1 row.
ROWS_A = np.array([[1.0, 10.0, 5.0], [3.0, 10.0, 5.0], [5.0, 10.0, 5.0]])
ROWS_B = np.array([[7.0, 10.0, 5.0]])


def _reply(rows: np.ndarray) -> dict[str, np.ndarray]:
    stats = FeatureStats.from_array(rows)
    return {
        "count": np.array([stats.count], np.float64),
        "sum": np.asarray(stats.sum, np.float64),
        "sumsq": np.asarray(stats.sumsq, np.float64),
    }


def test_stats_reducer_by_hand_and_against_numpy() -> None:
    acc = FeatureStatsReducer(stats_template(3))
    acc.add(_reply(ROWS_A), 3.0)
    acc.add(_reply(ROWS_B), 1.0)
    # Pooled feature 0 is 1, 3, 5, 7: mean 4, population variance (9+1+1+9)/4 = 5.
    # Features 1 and 2 are constant: variance 0, so std is the floor 1e-6.
    merged = acc.stats
    assert merged.count == 4
    np.testing.assert_array_equal(merged.sum, [16.0, 40.0, 20.0])
    np.testing.assert_array_equal(merged.sumsq, [84.0, 400.0, 100.0])
    result = acc.result()
    assert set(result) == {"mean", "std"}
    assert result["mean"].dtype == np.float32 and result["std"].dtype == np.float32
    np.testing.assert_allclose(result["mean"], [4.0, 10.0, 5.0])
    np.testing.assert_allclose(result["std"], [np.sqrt(5.0), 1e-6, 1e-6], rtol=1e-6)
    pooled = np.concatenate([ROWS_A, ROWS_B])
    np.testing.assert_allclose(result["mean"], pooled.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(result["std"], np.maximum(pooled.std(axis=0), 1e-6), rtol=1e-6)
    assert (acc.count, acc.total_weight) == (2, 4.0)


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        hnp.arrays(
            np.float64,
            st.tuples(st.integers(1, 6), st.just(3)),
            elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_stats_reducer_matches_the_formula_it_replaced_bit_for_bit(
    parts: list[np.ndarray],
) -> None:
    # The coordinator used to sum count/sum/sumsq in float64 in arrival order and compute
    # mean = sum/count, var = max(sumsq/count - mean^2, 0), std = max(sqrt(var), 1e-6).
    replies = [_reply(rows) for rows in parts]
    count = 0.0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    acc = FeatureStatsReducer(stats_template(3))
    for reply in replies:
        count += float(reply["count"][0])
        total = reply["sum"] if total is None else total + reply["sum"]
        squares = reply["sumsq"] if squares is None else squares + reply["sumsq"]
        acc.add(reply, float(reply["count"][0]))
    assert total is not None and squares is not None
    mean = total / count
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean * mean, 0.0)), 1e-6)
    result = acc.result()
    np.testing.assert_array_equal(result["mean"], mean.astype(np.float32))
    np.testing.assert_array_equal(result["std"], std.astype(np.float32))


@pytest.mark.parametrize(
    ("count", "sumsq"),
    [(2.5, [1.0, 1.0]), (-1.0, [1.0, 1.0]), (2.0**60, [1.0, 1.0]), (2.0, [1.0, -1.0])],
    ids=["fractional", "negative", "beyond-2**53", "negative-sumsq"],
)
def test_stats_reducer_refuses_impossible_stats_and_stays_unchanged(
    count: float, sumsq: list[float]
) -> None:
    acc = FeatureStatsReducer(stats_template(2))
    good = {"count": np.array([1.0]), "sum": np.array([2.0, 4.0]), "sumsq": np.array([4.0, 16.0])}
    acc.add(good, 1.0)
    bad = {"count": np.array([count]), "sum": np.array([1.0, 1.0]), "sumsq": np.array(sumsq)}
    with pytest.raises(UpdateRejectedError) as info:
        acc.add(bad, 1.0)
    assert info.value.reason is RejectReason.MALFORMED
    assert (acc.count, acc.stats.count) == (1, 1)
    np.testing.assert_array_equal(acc.result()["mean"], [2.0, 4.0])


def test_stats_reducer_with_no_rows_has_no_result() -> None:
    acc = FeatureStatsReducer(stats_template(2))
    with pytest.raises(ValueError, match="no rows"):
        acc.result()
    acc.add({"count": np.array([0.0]), "sum": np.zeros(2), "sumsq": np.zeros(2)}, 1.0)
    assert acc.count == 1
    with pytest.raises(ValueError, match="no rows"):
        acc.result()


def test_stats_reducer_checks_its_template_and_shapes() -> None:
    assert set(stats_template(4)) == set(STATS_TENSORS)
    assert stats_template(4)["sum"].shape == (4,)
    with pytest.raises(ValueError, match="stats template"):
        FeatureStatsReducer({"w": np.zeros(2)})
    acc = FeatureStatsReducer(stats_template(2))
    with pytest.raises(ValueError, match="shapes"):
        acc.add({"count": np.array([1.0]), "sum": np.zeros(3), "sumsq": np.zeros(3)}, 1.0)
    with pytest.raises(ValueError, match="weight must be positive"):
        acc.add({"count": np.array([1.0]), "sum": np.zeros(2), "sumsq": np.zeros(2)}, 0.0)
    assert acc.count == 0


# Buffered base ----------------------------------------------------------------------------


class _UnweightedMedian(BufferedReducer):
    """A test-only buffered reducer: the coordinate-wise median, ignoring weights."""

    name = "test-median"

    def __init__(self, template: dict[str, np.ndarray], *, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError("scale must be > 0")
        super().__init__(template)
        self.scale = scale
        self.seen: list[tuple[Sequence[Params], np.ndarray]] = []

    def reduce(self, updates: Sequence[Params], weights: np.ndarray) -> Params:
        self.seen.append(([{k: v.copy() for k, v in u.items()} for u in updates], weights.copy()))
        return {
            name: np.median(np.stack([u[name] for u in updates]), axis=0) * self.scale
            for name in updates[0]
        }


def test_buffered_reducer_sees_every_update_in_order_as_copies() -> None:
    acc = _UnweightedMedian({"w": np.zeros(2, np.float32)})
    buffers = [np.array(v, np.float32) for v in ([1.0, 100.0], [2.0, -5.0], [50.0, 0.0])]
    for weight, buffer in zip((1.0, 2.0, 3.0), buffers, strict=True):
        acc.add({"w": buffer}, weight)
        buffer[:] = -1.0  # the caller reuses its buffer: the reducer kept its own copy
    result = acc.result()
    # Median of (1, 2, 50) and of (100, -5, 0): the outliers 50 and 100 do not pull it.
    np.testing.assert_array_equal(result["w"], np.array([2.0, 0.0], np.float32))
    assert result["w"].dtype == np.float32
    ((updates, weights),) = acc.seen
    assert [u["w"].tolist() for u in updates] == [[1.0, 100.0], [2.0, -5.0], [50.0, 0.0]]
    assert weights.tolist() == [1.0, 2.0, 3.0] and weights.dtype == np.float64
    assert (acc.count, acc.total_weight) == (3, 6.0)


def test_buffered_reducer_validates_like_the_mean() -> None:
    acc = _UnweightedMedian({"w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="no updates were aggregated"):
        acc.result()
    with pytest.raises(ValueError, match="do not match the template"):
        acc.add({"v": np.zeros(2, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        acc.add({"w": np.zeros(3, np.float32)}, 1.0)
    assert acc.count == 0


# Registry ---------------------------------------------------------------------------------


def test_make_reducer_binds_options_and_builds_per_round() -> None:
    factory = make_reducer("mean")
    template = {"w": np.zeros(2, np.float32)}
    first, second = factory(template), factory(template)
    assert isinstance(first, StreamingMean) and first is not second
    assert make_reducer("mean", {}) is not None


def test_make_reducer_checks_options_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REDUCERS, "test-median", _UnweightedMedian)
    factory = make_reducer("test-median", {"scale": 2.0})
    acc = factory({"w": np.zeros(1, np.float32)})
    acc.add({"w": np.array([3.0], np.float32)}, 1.0)
    np.testing.assert_array_equal(acc.result()["w"], [6.0])
    with pytest.raises(ConfigError, match="bad options for reducer 'test-median'"):
        make_reducer("test-median", {"scale": -1.0})
    with pytest.raises(ConfigError, match="bad options for reducer 'mean'"):
        make_reducer("mean", {"trim": 0.1})


@pytest.mark.parametrize("name", ["Mean", "geomedian", "", "stats"])
def test_make_reducer_unknown_name_lists_the_choices(name: str) -> None:
    choices = r"\['krum', 'mean', 'median', 'multi_krum', 'trimmed_mean'\]"
    with pytest.raises(ConfigError, match=rf"unknown reducer {name!r}; choose one of {choices}"):
        make_reducer(name)


# Properties -------------------------------------------------------------------------------

_VALUES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _updates(draw: st.DrawFn) -> list[tuple[dict[str, np.ndarray], float]]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    return [
        (
            {"w": draw(hnp.arrays(np.float32, shape, elements=_VALUES))},
            draw(st.floats(0.01, 1e4, allow_nan=False)),
        )
        for _ in range(draw(st.integers(1, 6)))
    ]


def _reduce(updates: list[tuple[dict[str, np.ndarray], float]]) -> np.ndarray:
    acc = StreamingMean(updates[0][0])
    for tensors, weight in updates:
        acc.add(tensors, weight)
    return acc.result()["w"]


@settings(max_examples=100, deadline=None)
@given(updates=_updates(), data=st.data())
def test_mean_reducer_does_not_depend_on_add_order(
    updates: list[tuple[dict[str, np.ndarray], float]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(updates))
    # Float32 partial sums: each order's n products and n additions round by up to
    # 2n * 2**-24 of the terms' magnitudes (not of the mean, which can cancel to
    # near 0), so two orders differ by at most twice that, plus the two casts.
    scale = sum(np.abs(t["w"]).astype(np.float64) * w for t, w in updates) / sum(
        w for _, w in updates)
    np.testing.assert_array_less(np.abs(_reduce(updates) - _reduce(shuffled)),
                                 (4 * len(updates) + 2) * 2.0**-24 * scale + 1e-30)


@settings(max_examples=100, deadline=None)
@given(updates=_updates())
@example(updates=[({"w": np.array([503.5], np.float32)}, 8330.553239598252)])  # CI, 2 ulps
def test_weighted_mean_lies_within_the_per_coordinate_range(
    updates: list[tuple[dict[str, np.ndarray], float]],
) -> None:
    result = _reduce(updates)
    stacked = np.stack([t["w"] for t, _ in updates])
    # The sums run in float32 partials (WeightedSums): each of the n products and n
    # additions rounds by up to 2**-24 of the terms' magnitudes, so the mean can
    # land up to about 2n * 2**-24 * max|x| past an extreme (n=1, x=503.5: two
    # ulps); the float32 cast of the mean adds one ulp; and a weighted term that
    # falls to a subnormal keeps only an absolute precision of 2**-149 (divided by
    # the total weight in the mean).
    total = sum(w for _, w in updates)
    largest = np.abs(stacked).max(axis=0).astype(np.float32)
    slack = (np.spacing(largest) + 2 * len(updates) * 2.0**-24 * largest.astype(np.float64)
             + len(updates) * 2.0**-149 / total)
    assert np.all(result >= stacked.min(axis=0) - slack)
    assert np.all(result <= stacked.max(axis=0) + slack)
