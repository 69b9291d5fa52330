"""The streaming mean without model-sized temporaries: float32 partials, add_encoded, Flower."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.compression import BLOCK, UpdateCodec, compress_update, parse_update
from fedge.strategies import BufferedReducer, Params, StreamingMean
from fedge.strategies.reducers.weighted_sums import PARTIAL_LIMIT, WeightedSums

FINITE = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


def _reference(updates: list[tuple[Params, float]]) -> dict[str, np.ndarray]:
    """The formula StreamingMean.add used before: acc += update.astype(float64) * weight."""
    sums = {k: np.zeros(v.shape, np.float64) for k, v in updates[0][0].items()}
    for tensors, weight in updates:
        for k, acc in sums.items():
            acc += np.asarray(tensors[k], np.float64) * weight
    return sums


def _within_float32_partials(acc: StreamingMean, updates: list[tuple[Params, float]]) -> None:
    """Totals equal the float64 formula to the float32 partials' rounding bound."""
    exact = _reference(updates)
    magnitude = _reference([({k: np.abs(v) for k, v in t.items()}, w) for t, w in updates])
    # Each entry of a partial goes through at most fold_every float32 roundings
    # (2**-24 each, relative to the magnitudes summed so far), plus the weight's.
    # BLAS may flush float32 subnormals to zero: at most float32's smallest normal
    # per addition is lost that way.
    rounding = (WeightedSums.fold_every + 2) * 2.0**-24
    flushed = len(updates) * max(w for _, w in updates) * float(np.finfo(np.float32).tiny)
    for name, total in acc._sums.totals().items():
        assert total.dtype == np.float64
        error = np.abs(total - exact[name])
        assert np.all(error <= rounding * magnitude[name] + flushed), (name, float(error.max()))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
)
def test_sums_are_the_float64_formula_within_float32_rounding(
    data: st.DataObject, n: int, shape: tuple[int, ...]
) -> None:
    updates = [
        (
            {"w": data.draw(hnp.arrays(np.float32, shape, elements=FINITE)),
             "b": data.draw(hnp.arrays(np.float32, (3,), elements=FINITE))},
            data.draw(st.floats(0.5, 1e4)),
        )
        for _ in range(n)
    ]
    acc = StreamingMean(updates[0][0])
    for tensors, weight in updates:
        acc.add(tensors, weight)
    _within_float32_partials(acc, updates)


def test_partials_fold_into_the_float64_totals_every_fold_every_updates() -> None:
    base = {"w": np.zeros(4, np.float32)}
    sums = WeightedSums(base)
    one = np.ones(4, np.float32)
    for _ in range(WeightedSums.fold_every - 1):
        sums.add_blocks("w", [(0, 4, one)], 1.0)
        sums.end_update()
    assert sums._partials["w"].any() and not sums._totals["w"].any()
    sums.add_blocks("w", [(0, 4, one)], 1.0)
    sums.end_update()
    # Folded: the float32 partial is empty again, so its rounding never spans more updates.
    assert not sums._partials["w"].any()
    np.testing.assert_array_equal(sums._totals["w"], np.full(4, float(WeightedSums.fold_every)))


def test_values_that_would_overflow_a_float32_partial_are_summed_as_in_float64() -> None:
    # 1e36 * 100 = 1e38: twenty of them overflow float32 (3.4e38) but not float64.
    big = {"w": np.array([1e36, -1e36, 3e38, 1.0], np.float32)}
    updates = [(big, 100.0)] * 20
    acc = StreamingMean(big)
    for tensors, weight in updates:
        acc.add(tensors, weight)
    totals = acc._sums.totals()["w"]
    assert np.isfinite(totals).all()
    _within_float32_partials(acc, updates)
    # The 3e38 block (bound 3e40 on its own) took the exact float64 path.
    np.testing.assert_allclose(totals[2], 20 * 100 * float(np.float32(3e38)), rtol=1e-12)
    mean = acc.result()["w"]
    assert mean[0] == np.float32(1e36) and mean[1] == np.float32(-1e36) and mean[3] == 1.0


def test_a_partial_is_folded_early_before_it_could_overflow() -> None:
    template = {"w": np.zeros(2, np.float32)}
    sums = WeightedSums(template)
    one = np.ones(2, np.float32)
    # Entries of 1 (block bound sqrt(2)) at a weight that makes the bound 4e36; the
    # entries themselves (2.8e36) and x @ x are small enough for float32.
    weight = 4e36 / math.sqrt(2)
    for _ in range(3):  # 3 x 4e36 > PARTIAL_LIMIT: the third add folds the first two
        sums.add_blocks("w", [(0, 2, one)], weight)
        sums.end_update()
    np.testing.assert_allclose(sums._totals["w"], 2 * weight, rtol=1e-7)
    np.testing.assert_allclose(sums._partials["w"], weight, rtol=1e-7)
    assert 0 < sums._bounds["w"] <= PARTIAL_LIMIT
    np.testing.assert_allclose(sums.totals()["w"], 3 * weight, rtol=1e-7)


def test_blockwise_add_spans_several_blocks() -> None:
    rng = np.random.default_rng(0)
    big = {"w": rng.normal(size=(3, BLOCK + 17)).astype(np.float32)}
    # A non-contiguous update (a reversed view) goes through the same path.
    other = {"w": big["w"][:, ::-1]}
    assert not other["w"].flags.c_contiguous
    acc = StreamingMean(big)
    acc.add(big, 3.0)
    acc.add(other, 7.0)
    _within_float32_partials(acc, [(big, 3.0), (other, 7.0)])
    assert acc._sums._scratch is None  # float32 blocks never needed the exact path


def test_mean_hand_computed_through_add_encoded_int8() -> None:
    # Deltas of +-d with d = 127 / 1024 quantise exactly: scale 2**-10, codes +-127.
    d = 127 / 1024
    base = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
    codec = UpdateCodec(dtype="int8", delta=True)
    acc = StreamingMean(base)
    for sign, weight in ((1, 10.0), (-1, 30.0)):
        body = {"values": np.full(3, sign * 127, np.int8),
                "scales": np.array([2.0**-10], np.float32)}
        acc.add_encoded(parse_update(body, codec, template=base, base=base), weight)
    # (10 * (w + d) + 30 * (w - d)) / 40 = w - d / 2; each client's weights are float32.
    up = (base["w"] + np.float32(d)).astype(np.float64)
    down = (base["w"] - np.float32(d)).astype(np.float64)
    expected = ((10 * up + 30 * down) / 40).astype(np.float32)
    np.testing.assert_array_equal(acc.result()["w"], expected)
    np.testing.assert_allclose(expected, base["w"] - d / 2, rtol=1e-6)
    assert (acc.count, acc.total_weight) == (2, 40.0)


@pytest.mark.parametrize(
    "codec",
    [UpdateCodec(), UpdateCodec(dtype="int8", delta=True, error_feedback=True),
     UpdateCodec(dtype="int4", granularity="channel", delta=True, error_feedback=True,
                 top_k=0.25)],
    ids=["plain", "int8-delta", "int4-top25"],
)
def test_add_encoded_equals_add_of_the_decoded_update(codec: UpdateCodec) -> None:
    rng = np.random.default_rng(1)
    base = {"conv": rng.normal(size=(4, 3, 5)).astype(np.float32),
            "bias": rng.normal(size=(7,)).astype(np.float32)}
    streamed, decoded = StreamingMean(base), StreamingMean(base)
    for weight in (3.0, 11.0):
        trained = {k: (v + rng.normal(size=v.shape) * 0.01).astype(np.float32)
                   for k, v in base.items()}
        body = compress_update(trained, codec=codec, base=base).tensors
        update = parse_update(body, codec, template=base, base=base)
        streamed.add_encoded(update, weight)
        decoded.add(update.decompress(), weight)
    for name in base:
        np.testing.assert_array_equal(streamed._sums.totals()[name], decoded._sums.totals()[name])


def test_add_encoded_refuses_a_bad_weight_and_changes_nothing() -> None:
    base = {"w": np.zeros(2, np.float32)}
    acc = StreamingMean(base)
    update = parse_update({"w": np.ones(2, np.float32)}, UpdateCodec(), template=base)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            acc.add_encoded(update, bad)
    assert acc.count == 0 and not acc._sums.totals()["w"].any()


class _Median(BufferedReducer):
    name = "median-test"

    def reduce(self, updates: object, weights: np.ndarray) -> Params:
        return {"w": np.median(np.stack([u["w"] for u in updates]), axis=0)}  # type: ignore[attr-defined]


def test_a_buffered_reducer_gets_encoded_updates_decoded() -> None:
    base = {"w": np.zeros(3, np.float32)}
    codec = UpdateCodec(dtype="int8", delta=True)
    acc = _Median(base)
    for code in (127, -127, 0):
        body = {"values": np.full(3, code, np.int8), "scales": np.array([0.5], np.float32)}
        acc.add_encoded(parse_update(body, codec, template=base, base=base), 1.0)
    # Decoded: +63.5, -63.5, 0 per entry; the median is 0.
    np.testing.assert_array_equal(acc.result()["w"], np.zeros(3, np.float32))


def test_streaming_mean_equals_flowers_fedavg() -> None:
    flwr_aggregate = pytest.importorskip("flwr.server.strategy.aggregate")
    rng = np.random.default_rng(2)
    shapes = {"a": (5, 4), "b": (4,), "c": (2, 3, 3)}
    clients = [
        ({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()},
         int(rng.integers(1, 500)))
        for _ in range(7)
    ]
    acc = StreamingMean(clients[0][0])
    for tensors, n in clients:
        acc.add(tensors, float(n))
    ours = acc.result()
    names = sorted(shapes)
    theirs = flwr_aggregate.aggregate([([t[k] for k in names], n) for t, n in clients])
    for name, value in zip(names, theirs, strict=True):
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6)


def test_parse_update_finite_skips_only_the_nan_pass_of_plain_bodies() -> None:
    from fedge.errors import CompressionError

    template = {"w": np.zeros(2, np.float32)}
    nan = {"w": np.array([np.nan, 1.0], np.float32)}
    with pytest.raises(CompressionError, match="NaN"):
        parse_update(nan, UpdateCodec(), template=template)
    # decode_frame refused NaN already: the validator says so and the pass is skipped.
    parse_update(nan, UpdateCodec(), template=template, finite=True)
    # Ranges of compressed values are checked either way.
    codec = UpdateCodec(dtype="float32", delta=True)
    huge = {"values": np.array([1e31, 0.0], np.float32)}
    for finite in (False, True):
        with pytest.raises(CompressionError, match="outside"):
            parse_update(huge, codec, template=template, base=template, finite=finite)
