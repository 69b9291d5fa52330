"""FedAvg, the streaming weighted mean and the strategy registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.errors import ConfigError
from fedge.strategies import STRATEGIES, FedAvg, StreamingMean, make_strategy, weighted_mean

CLIENT_A = {"w": np.array([1.0, 2.0, 3.0], np.float32), "b": np.array([[0.0]], np.float32)}
CLIENT_B = {"w": np.array([5.0, 6.0, 11.0], np.float32), "b": np.array([[4.0]], np.float32)}


def test_weighted_mean_hand_computed() -> None:
    # 10 and 30 examples: weights 1/4 and 3/4.
    #   w = (10*[1,2,3] + 30*[5,6,11]) / 40 = [160, 200, 360] / 40 = [4, 5, 9]
    #   b = (10*0 + 30*4) / 40 = 3
    mean = weighted_mean([(CLIENT_A, 10), (CLIENT_B, 30)])
    assert set(mean) == {"w", "b"}
    np.testing.assert_array_equal(mean["w"], np.array([4.0, 5.0, 9.0], np.float32))
    np.testing.assert_array_equal(mean["b"], np.array([[3.0]], np.float32))
    assert mean["w"].dtype == np.float32
    assert mean["b"].shape == (1, 1)


def test_fedavg_returns_the_client_mean_as_float32_copies() -> None:
    current = {"w": np.zeros(3, np.float32), "b": np.zeros((1, 1), np.float32)}
    client_mean = {"w": np.array([4.0, 5.0, 9.0]), "b": np.array([[3.0]])}
    new = FedAvg().aggregate(current, client_mean)
    np.testing.assert_array_equal(new["w"], [4.0, 5.0, 9.0])
    assert new["w"].dtype == np.float32
    new["w"][0] = 100.0
    assert client_mean["w"][0] == 4.0  # a copy, not a view of the input


def test_fedavg_end_to_end_with_literal_numbers() -> None:
    acc = StreamingMean(CLIENT_A)
    acc.add(CLIENT_A, 10)
    acc.add(CLIENT_B, 30)
    new = FedAvg().aggregate(CLIENT_A, acc.mean())
    np.testing.assert_array_equal(new["w"], [4.0, 5.0, 9.0])
    np.testing.assert_array_equal(new["b"], [[3.0]])


def test_streaming_mean_equals_weighted_mean() -> None:
    rng = np.random.default_rng(3)
    updates = [
        ({"x": rng.normal(size=(4, 2)).astype(np.float32), "y": rng.normal(size=5)}, float(n))
        for n in (3, 17, 1, 250)
    ]
    acc = StreamingMean(updates[0][0])
    for tensors, n in updates:
        acc.add(tensors, n)
    assert acc.count == 4
    assert acc.total_weight == 271.0
    streaming = acc.mean()
    batch = weighted_mean(updates)
    for name in ("x", "y"):
        np.testing.assert_array_equal(streaming[name], batch[name])
        expected = sum(t[name].astype(np.float64) * n for t, n in updates) / 271.0
        np.testing.assert_allclose(streaming[name], expected, rtol=1e-6)


def test_streaming_mean_does_not_keep_references_to_updates() -> None:
    update = {"w": np.array([2.0, 4.0], np.float32)}
    acc = StreamingMean(update)
    acc.add(update, 1)
    update["w"][:] = 1000.0  # the caller reuses its buffer
    np.testing.assert_array_equal(acc.mean()["w"], [2.0, 4.0])


def test_streaming_mean_empty_raises() -> None:
    with pytest.raises(ValueError, match="no updates were aggregated"):
        StreamingMean(CLIENT_A).mean()
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([])


@pytest.mark.parametrize("weight", [0, -1, float("nan")])
def test_non_positive_weight_raises(weight: float) -> None:
    with pytest.raises(ValueError, match="weight must be positive"):
        StreamingMean(CLIENT_A).add(CLIENT_A, weight)


def test_shape_mismatch_raises() -> None:
    acc = StreamingMean(CLIENT_A)
    with pytest.raises(ValueError):
        acc.add({"w": np.zeros(4, np.float32), "b": np.zeros((1, 1), np.float32)}, 1)
    with pytest.raises(ValueError):
        weighted_mean([(CLIENT_A, 1), ({"w": np.zeros((3, 1)), "b": np.zeros((1, 1))}, 1)])


@pytest.mark.parametrize(
    "tensors",
    [
        {"w": CLIENT_A["w"]},
        {**CLIENT_A, "extra": np.zeros(1)},
        {"w": CLIENT_A["w"], "c": np.zeros(1)},
    ],
    ids=["missing", "extra", "renamed"],
)
def test_name_mismatch_raises(tensors: dict[str, np.ndarray]) -> None:
    acc = StreamingMean(CLIENT_A)
    with pytest.raises(ValueError, match="do not match the template"):
        acc.add(tensors, 1)
    assert acc.count == 0
    assert acc.total_weight == 0.0


def test_single_client_returns_its_own_weights() -> None:
    mean = weighted_mean([(CLIENT_B, 7)])
    for name, value in CLIENT_B.items():
        np.testing.assert_array_equal(mean[name], value)


def test_fedavg_keeps_no_state() -> None:
    strategy = FedAvg()
    assert strategy.state() == {}
    assert strategy.client_options() == {}
    strategy.load_state({})
    with pytest.raises(ValueError, match="fedavg keeps no state"):
        strategy.load_state({"momentum": np.zeros(1)})


def test_make_strategy() -> None:
    assert isinstance(make_strategy("fedavg"), FedAvg)
    assert isinstance(make_strategy("fedavg", {}), FedAvg)
    assert STRATEGIES["fedavg"] is FedAvg


@pytest.mark.parametrize("name", ["FedAvg", "fedprox-typo", "", "pickle"])
def test_make_strategy_unknown_name(name: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown strategy {name!r}; choose one of"):
        make_strategy(name)


def test_make_strategy_bad_options() -> None:
    with pytest.raises(ConfigError, match="bad options for strategy 'fedavg'"):
        make_strategy("fedavg", {"momentum": 0.9})


# Properties --------------------------------------------------------------------------------

_FLOATS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def _client_updates(draw: st.DrawFn) -> list[tuple[dict[str, np.ndarray], float]]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    n = draw(st.integers(1, 6))
    updates = []
    for _ in range(n):
        w = draw(hnp.arrays(np.float32, shape, elements=_FLOATS))
        b = draw(hnp.arrays(np.float32, (2,), elements=_FLOATS))
        weight = draw(st.integers(1, 10_000))
        updates.append(({"w": w, "b": b}, float(weight)))
    return updates


@settings(max_examples=100, deadline=None)
@given(updates=_client_updates(), data=st.data())
def test_order_independence(updates: list[tuple[dict[str, np.ndarray], float]],
                            data: st.DataObject) -> None:
    permuted = data.draw(st.permutations(updates))
    a, b = weighted_mean(updates), weighted_mean(permuted)
    total = sum(w for _, w in updates)
    for name in a:
        # The float32 partial sums round differently per order: each order's n products
        # and n additions are within 2n * 2**-24 of the terms' magnitudes (the mean
        # itself can cancel to near 0), so two orders within twice that, plus the casts.
        scale = sum(np.abs(t[name]).astype(np.float64) * w for t, w in updates) / total
        error = np.abs(a[name].astype(np.float64) - b[name])
        assert np.all(error <= (4 * len(updates) + 2) * 2.0**-24 * scale + 1e-30), name


@settings(max_examples=100, deadline=None)
@given(updates=_client_updates(), scale=st.sampled_from([0.001, 0.5, 3.0, 1000.0]))
def test_invariance_to_scaling_all_weights(updates: list[tuple[dict[str, np.ndarray], float]],
                                           scale: float) -> None:
    a = weighted_mean(updates)
    b = weighted_mean([(t, w * scale) for t, w in updates])
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None)
@given(updates=_client_updates())
def test_mean_lies_within_client_range(updates: list[tuple[dict[str, np.ndarray], float]]) -> None:
    mean = weighted_mean(updates)
    for name in mean:
        stacked = np.stack([t[name] for t, _ in updates])
        assert (mean[name] >= stacked.min(axis=0) - 1e-3).all()
        assert (mean[name] <= stacked.max(axis=0) + 1e-3).all()


@settings(max_examples=50, deadline=None)
@given(updates=_client_updates())
def test_single_client_property(updates: list[tuple[dict[str, np.ndarray], float]]) -> None:
    tensors, weight = updates[0]
    mean = weighted_mean([(tensors, weight)])
    for name in tensors:
        np.testing.assert_allclose(mean[name], tensors[name], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(updates=_client_updates())
def test_equal_weights_give_the_plain_mean(
    updates: list[tuple[dict[str, np.ndarray], float]],
) -> None:
    mean = weighted_mean([(t, 5.0) for t, _ in updates])
    for name in mean:
        expected = np.mean(np.stack([t[name].astype(np.float64) for t, _ in updates]), axis=0)
        np.testing.assert_allclose(mean[name], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(1,), ()])
def test_broadcastable_shape_mismatch_raises(shape: tuple[int, ...]) -> None:
    acc = StreamingMean(CLIENT_A)
    with pytest.raises(ValueError):
        acc.add({"w": np.ones(shape, np.float32), "b": CLIENT_A["b"]}, 1)


def test_failed_add_leaves_the_accumulator_unchanged() -> None:
    acc = StreamingMean(CLIENT_A)  # template order: "w", then "b"
    with pytest.raises(ValueError):
        acc.add({"w": np.full(3, 100.0, np.float32), "b": np.zeros((2, 2), np.float32)}, 1)
    acc.add(CLIENT_B, 1)
    np.testing.assert_array_equal(acc.mean()["w"], CLIENT_B["w"])
