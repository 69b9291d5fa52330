"""The streaming mean without model-sized temporaries: blockwise add, add_encoded, Flower parity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.compression import BLOCK, UpdateCodec, compress_update, parse_update
from fedge.strategies import BufferedReducer, Params, StreamingMean

FINITE = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


def _reference(updates: list[tuple[Params, float]]) -> dict[str, np.ndarray]:
    """The formula StreamingMean.add used before: acc += update.astype(float64) * weight."""
    sums = {k: np.zeros(v.shape, np.float64) for k, v in updates[0][0].items()}
    for tensors, weight in updates:
        for k, acc in sums.items():
            acc += np.asarray(tensors[k], np.float64) * weight
    return sums


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 4),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
)
def test_blockwise_add_is_bit_identical_to_the_float64_formula(
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
    for name, expected in _reference(updates).items():
        np.testing.assert_array_equal(acc._sums[name], expected)


def test_blockwise_add_spans_several_blocks() -> None:
    rng = np.random.default_rng(0)
    big = {"w": rng.normal(size=(3, BLOCK + 17)).astype(np.float32)}
    # A non-contiguous update (a reversed view) goes through the same path.
    other = {"w": big["w"][:, ::-1]}
    assert not other["w"].flags.c_contiguous
    acc = StreamingMean(big)
    acc.add(big, 3.0)
    acc.add(other, 7.0)
    np.testing.assert_array_equal(acc._sums["w"], _reference([(big, 3.0), (other, 7.0)])["w"])
    assert acc._scratch is not None and acc._scratch.size == BLOCK  # one block, not a tensor


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
        np.testing.assert_array_equal(streamed._sums[name], decoded._sums[name])


def test_add_encoded_refuses_a_bad_weight_and_changes_nothing() -> None:
    base = {"w": np.zeros(2, np.float32)}
    acc = StreamingMean(base)
    update = parse_update({"w": np.ones(2, np.float32)}, UpdateCodec(), template=base)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            acc.add_encoded(update, bad)
    assert acc.count == 0 and not acc._sums["w"].any()


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
