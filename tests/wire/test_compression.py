"""Update compression: exact encodings, hand-computed quantisation, error bounds, error feedback.

The literal update used throughout (sorted names: ``b`` comes first in the flat layout)::

    b = [0.254, -0.1]                       max|b| = 0.254 -> int8 scale 0.002
    w = [[1.27, -0.5, 0.123],               max|w| = 1.27  -> int8 scale 0.01
         [0.0,  -1.0, 0.337]]
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from fedge.compression import (
    BLOCK,
    UpdateCodec,
    accumulate_update,
    compress_update,
    decompress_update,
    kept_count,
    parse_update,
    resolve_codec,
    wire_codec,
)
from fedge.errors import CompressionError
from fedge.strategies import StreamingMean

B = np.array([0.254, -0.1], np.float32)
W = np.array([[1.27, -0.5, 0.123], [0.0, -1.0, 0.337]], np.float32)
UPDATE = {"w": W, "b": B}
ZEROS = {"w": np.zeros_like(W), "b": np.zeros_like(B)}
F32 = np.float32


def _codec(**fields: object) -> UpdateCodec:
    return UpdateCodec.model_validate(fields)


SPARSE = {"delta": True, "error_feedback": True, "top_k": 0.5}


# The schema --------------------------------------------------------------------------------


def test_default_codec_is_plain_float32_and_the_v1_string() -> None:
    codec = UpdateCodec()
    assert (codec.dtype, codec.granularity, codec.delta, codec.top_k, codec.zstd_level) == (
        "float32", "tensor", False, None, None,
    )
    assert codec.plain and codec.is_default
    assert resolve_codec("safetensors") == codec
    assert wire_codec(codec) == "safetensors"
    fancy = _codec(dtype="int4", **SPARSE, zstd_level=3)
    assert wire_codec(fancy) is fancy
    assert resolve_codec(fancy) is fancy


def test_codec_json_is_exact_and_round_trips() -> None:
    codec = _codec(dtype="int4", granularity="channel", **SPARSE, zstd_level=3)
    assert codec.model_dump_json(exclude_none=True) == (
        '{"dtype":"int4","granularity":"channel","delta":true,"error_feedback":true,'
        '"top_k":0.5,"stochastic_rounding":false,"zstd_level":3}'
    )
    assert UpdateCodec.model_validate_json(codec.model_dump_json()) == codec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": "int3"}, "dtype"),
        ({"granularity": "channel"}, "granularity 'channel' needs dtype int8 or int4"),
        ({"dtype": "float16", "stochastic_rounding": True}, "stochastic_rounding needs"),
        ({"error_feedback": True}, "error_feedback needs delta"),
        ({"delta": True, "top_k": 0.1}, "top_k needs error_feedback"),
        ({**SPARSE, "top_k": 0.0}, "greater than 0"),
        ({**SPARSE, "top_k": 1.5}, "less than or equal to 1"),
        ({**SPARSE, "top_k": float("nan")}, "finite"),
        ({"zstd_level": 0}, "greater than or equal to 1"),
        ({"zstd_level": 20}, "less than or equal to 19"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_codec_refuses_inconsistent_or_unbounded_fields(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        UpdateCodec.model_validate(fields)


def test_kept_count_rounds_and_keeps_at_least_one() -> None:
    assert kept_count(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004 must not become 4
    assert kept_count(6, 0.5) == 3
    assert kept_count(2, 0.5) == 1
    assert kept_count(5, 0.01) == 1
    assert kept_count(0, 0.5) == 0
    assert kept_count(7, None) == 7
    assert kept_count(7, 1.0) == 7


# Exact encodings (hand-computed) ---------------------------------------------------------------


def _encode(codec: UpdateCodec, **kw: object) -> dict[str, np.ndarray]:
    return compress_update(UPDATE, codec=codec, **kw).tensors  # type: ignore[arg-type]


def test_plain_float32_is_the_weights_by_name() -> None:
    out = compress_update(UPDATE, codec=UpdateCodec())
    assert set(out.tensors) == {"w", "b"}
    assert out.tensors["w"].dtype == F32
    np.testing.assert_array_equal(out.tensors["w"], W)
    assert out.residual is None


def test_int8_per_tensor_by_hand() -> None:
    enc = _encode(_codec(dtype="int8"))
    assert set(enc) == {"values", "scales"}
    # b: 0.254/0.002 = 127, -0.1/0.002 = -50; w: /0.01 -> 127 -50 12.3 0 -100 33.7.
    assert enc["values"].dtype == np.int8
    assert enc["values"].tolist() == [127, -50, 127, -50, 12, 0, -100, 34]
    assert enc["values"].tobytes() == bytes.fromhex("7fce7fce0c009c22")
    assert enc["scales"].dtype == F32
    assert enc["scales"].tolist() == [F32(0.254) / F32(127), F32(1.27) / F32(127)]
    np.testing.assert_allclose(enc["scales"], [0.002, 0.01], rtol=1e-6)
    assert enc["scales"].tobytes() == np.array([0.002, 0.01], "<f4").tobytes()


def test_int8_per_channel_by_hand() -> None:
    enc = _encode(_codec(dtype="int8", granularity="channel"))
    # b is a vector: one scale. w: row 0 max 1.27 -> 0.01; row 1 max 1.0 -> 1/127,
    # 0.337 * 127 = 42.8 -> 43.
    assert enc["values"].tolist() == [127, -50, 127, -50, 12, 0, -127, 43]
    np.testing.assert_allclose(enc["scales"], [0.002, 0.01, 1 / 127], rtol=1e-6)
    decoded = decompress_update(enc, _codec(dtype="int8", granularity="channel"),
                                template=UPDATE)
    np.testing.assert_allclose(decoded["w"][1], [0.0, -1.0, 43 / 127], rtol=1e-6)


def test_int4_per_tensor_by_hand() -> None:
    enc = _encode(_codec(dtype="int4"))
    # scale = max/7: b -> 0.254/7, w -> 1.27/7 = 0.18143.
    # q_b = [7, rint(-2.756) = -3]; q_w = [7, -3, rint(0.678) = 1, 0, rint(-5.512) = -6,
    # rint(1.857) = 2]. Nibbles q + 8 = [15, 5, 15, 5, 9, 8, 2, 10], low nibble first.
    assert enc["values"].dtype == np.uint8
    assert enc["values"].tobytes() == bytes([0x5F, 0x5F, 0x89, 0xA2])
    np.testing.assert_allclose(enc["scales"], [0.254 / 7, 1.27 / 7], rtol=1e-6)
    decoded = decompress_update(enc, _codec(dtype="int4"), template=UPDATE)
    np.testing.assert_allclose(decoded["b"], [0.254, -3 * 0.254 / 7], rtol=1e-6)
    np.testing.assert_allclose(
        decoded["w"].ravel(), np.array([7, -3, 1, 0, -6, 2]) * (1.27 / 7), rtol=1e-6
    )


def test_int4_odd_count_pads_with_nibble_zero() -> None:
    enc = compress_update({"v": np.array([1.0, -1.0, 0.3], F32)}, codec=_codec(dtype="int4"))
    # scale 1/7: q = [7, -7, rint(2.1) = 2] -> nibbles [15, 1, 10] + padding nibble 0.
    assert enc.tensors["values"].tobytes() == bytes([0x1F, 0x0A])


def test_float16_by_hand() -> None:
    enc = _encode(_codec(dtype="float16"))
    assert set(enc) == {"values"}
    assert enc["values"].dtype == np.float16
    expected = np.array([0.254, -0.1, 1.27, -0.5, 0.123, 0.0, -1.0, 0.337], np.float16)
    assert enc["values"].tobytes() == expected.tobytes()
    assert enc["values"].tobytes().hex() == "103466ae143d00b8df2f000000bc6435"


def test_float16_saturates_instead_of_overflowing() -> None:
    enc = compress_update({"v": np.array([1e6, -1e6], F32)}, codec=_codec(dtype="float16"))
    assert enc.tensors["values"].tolist() == [65504.0, -65504.0]


def test_top_k_float32_with_a_mask_by_hand() -> None:
    out = compress_update(UPDATE, codec=_codec(**SPARSE), base=ZEROS)
    # b keeps round(0.5 * 2) = 1 entry: 0.254 (flat 0). w keeps 3: |1.27|, |-1.0|, |-0.5|
    # at w-positions 0, 4, 1 -> flat 2, 6, 3. Positions {0, 2, 3, 6}: mask bits, little
    # bit order, = 1 + 4 + 8 + 64 = 0x4D. 4 * 4 index bytes >= 1 mask byte: mask wins.
    assert set(out.tensors) == {"values", "mask"}
    assert out.tensors["mask"].tobytes() == b"\x4d"
    assert out.tensors["values"].tolist() == [F32(0.254), F32(1.27), -0.5, -1.0]
    assert out.residual is not None
    np.testing.assert_array_equal(out.residual["b"], [0.0, F32(-0.1)])
    np.testing.assert_array_equal(out.residual["w"], [[0, 0, F32(0.123)], [0, 0, F32(0.337)]])


def test_top_k_int8_by_hand() -> None:
    out = compress_update(UPDATE, codec=_codec(dtype="int8", **SPARSE), base=ZEROS)
    # Scales over the kept values only: b 0.254 -> 0.002; w 1.27 -> 0.01.
    assert out.tensors["values"].tolist() == [127, 127, -50, -100]
    np.testing.assert_allclose(out.tensors["scales"], [0.002, 0.01], rtol=1e-6)
    assert out.tensors["mask"].tobytes() == b"\x4d"


def test_top_k_int4_per_channel_by_hand() -> None:
    codec = _codec(dtype="int4", granularity="channel", **SPARSE)
    out = compress_update(UPDATE, codec=codec, base=ZEROS)
    # b: 0.254 -> q 7. w row 0 keeps 1.27, -0.5: scale 1.27/7, q [7, -3]; row 1 keeps
    # -1.0: scale 1/7, q -7. Nibbles [15, 15, 5, 1] -> bytes 0xFF, 0x15.
    assert out.tensors["values"].tobytes() == b"\xff\x15"
    np.testing.assert_allclose(out.tensors["scales"], [0.254 / 7, 1.27 / 7, 1 / 7], rtol=1e-6)
    assert out.residual is not None
    np.testing.assert_allclose(out.residual["w"][0], [0.0, -0.5 + 3 * 1.27 / 7, 0.123],
                               rtol=1e-5)


def test_top_k_uses_indices_when_they_are_smaller() -> None:
    v = np.zeros(100, F32)
    v[[5, 10, 77]] = [0.5, 3.0, -1.5]
    codec = _codec(**{**SPARSE, "top_k": 0.02})
    out = compress_update({"v": v}, codec=codec, base={"v": np.zeros(100, F32)})
    # 2 kept * 4 bytes = 8 < 13 mask bytes.
    assert set(out.tensors) == {"values", "indices"}
    assert out.tensors["indices"].dtype == np.int32
    assert out.tensors["indices"].tobytes() == np.array([10, 77], "<i4").tobytes()
    assert out.tensors["values"].tolist() == [3.0, -1.5]


def test_delta_encodes_the_difference_to_the_base() -> None:
    base = {"w": W - F32(0.01), "b": B + F32(0.5)}
    codec = _codec(dtype="int8", delta=True)
    enc = compress_update(UPDATE, codec=codec, base=base).tensors
    # Deltas: b = [-0.5, -0.5], w = 0.01 everywhere -> every code is +-127.
    assert enc["values"].tolist() == [-127, -127] + [127] * 6
    decoded = decompress_update(enc, codec, template=UPDATE, base=base)
    np.testing.assert_allclose(decoded["w"], W, atol=1e-6)
    np.testing.assert_allclose(decoded["b"], B, atol=1e-6)


def test_all_zero_tensor_gets_scale_zero() -> None:
    enc = compress_update({"z": np.zeros(4, F32)}, codec=_codec(dtype="int8")).tensors
    assert enc["scales"].tolist() == [0.0]
    assert enc["values"].tolist() == [0, 0, 0, 0]
    assert decompress_update(enc, _codec(dtype="int8"), template={"z": np.zeros(4)})["z"].tolist(
    ) == [0.0] * 4


def test_stochastic_rounding_is_deterministic_by_seed_and_unbiased() -> None:
    codec = _codec(dtype="int8", stochastic_rounding=True)
    v = np.full(20_000, 0.3, F32)
    v[0] = 1.0  # scale 1/127: 0.3 * 127 = 38.1 -> code 39 with probability 0.1, else 38
    x = {"v": v}
    a = compress_update(x, codec=codec, seed=7).tensors["values"]
    b = compress_update(x, codec=codec, seed=7).tensors["values"]
    c = compress_update(x, codec=codec, seed=8).tensors["values"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0] == 127
    assert set(a[1:].tolist()) == {38, 39}
    share = float(np.mean(a[1:] == 39))
    assert abs(share - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 20_000)
    decoded = decompress_update({"values": a, "scales": np.array([1 / 127], F32)}, codec,
                                template=x)["v"]
    # Unbiased: the mean is 0.3 within 4 standard errors (nearest rounding would give
    # 38/127 = 0.2992, 7 standard errors off).
    assert abs(float(decoded[1:].mean()) - 0.3) < 4 * np.sqrt(0.09) / 127 / np.sqrt(20_000)
    nearest = compress_update(x, codec=_codec(dtype="int8")).tensors["values"]
    assert set(nearest[1:].tolist()) == {38}


# Decoding and accumulation -------------------------------------------------------------------


ALL_CODECS = [
    UpdateCodec(),
    _codec(dtype="float16"),
    _codec(dtype="int8"),
    _codec(dtype="int8", granularity="channel"),
    _codec(dtype="int4"),
    _codec(dtype="int4", granularity="channel", delta=True),
    _codec(dtype="float32", delta=True, error_feedback=True),
    _codec(dtype="int8", **SPARSE),
    _codec(dtype="int4", granularity="channel", **{**SPARSE, "top_k": 0.1}),
    _codec(dtype="float16", **{**SPARSE, "top_k": 0.01}),
    _codec(dtype="int8", stochastic_rounding=True, delta=True, error_feedback=True),
]


def _random_update(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = {"conv": (8, 3, 5), "dense": (400, 350), "bias": (8,), "scalar": (), "empty": (0, 4)}
    base = {k: rng.normal(size=s).astype(F32) for k, s in shapes.items()}
    update = {k: (v + 0.01 * rng.normal(size=v.shape)).astype(F32) for k, v in base.items()}
    return base, update


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.model_dump_json(exclude_none=True))
def test_accumulate_equals_the_float64_formula_on_the_decoded_update_bit_for_bit(
    codec: UpdateCodec,
) -> None:
    base, update = _random_update(1)
    enc = compress_update(update, codec=codec, base=base, seed=5).tensors
    decoded = decompress_update(enc, codec, template=base, base=base)
    assert {k: v.dtype for k, v in decoded.items()} == {k: np.dtype(F32) for k in base}
    sums = {k: np.zeros(v.shape, np.float64) for k, v in base.items()}
    accumulate_update(sums, enc, codec, weight=3.5, base=base)
    accumulate_update(sums, enc, codec, weight=1.25, base=base)
    for name, value in decoded.items():
        expected = value.astype(np.float64) * 3.5
        expected += value.astype(np.float64) * 1.25
        np.testing.assert_array_equal(sums[name], expected, err_msg=name)
    # The streaming mean (float32 partials) agrees to float32 rounding.
    reference = StreamingMean(base)
    reference.add_encoded(parse_update(enc, codec, template=base, base=base), 3.5)
    reference.add(decoded, 1.25)
    for name, expected in reference.mean().items():
        np.testing.assert_allclose((sums[name] / 4.75).astype(F32), expected, rtol=1e-6,
                                   atol=1e-7, err_msg=name)
    # The (dense) tensor spans several decode blocks: the boundaries are exercised.
    assert base["dense"].size > BLOCK


@pytest.mark.parametrize("codec", [_codec(dtype="int8", granularity="channel"),
                                   _codec(dtype="int4", granularity="channel", **SPARSE)],
                         ids=["dense", "sparse"])
def test_rows_longer_than_a_block(codec: UpdateCodec) -> None:
    # Per-channel blocks are whole rows: a row longer than BLOCK is one (longer) block.
    rng = np.random.default_rng(3)
    base = {"wide": rng.normal(size=(3, BLOCK + 7)).astype(F32), "b": np.zeros(3, F32)}
    update = {k: v + F32(0.01) for k, v in base.items()}
    enc = compress_update(update, codec=codec, base=base).tensors
    decoded = decompress_update(enc, codec, template=base, base=base)
    sums = {k: np.zeros(v.shape) for k, v in base.items()}
    accumulate_update(sums, enc, codec, weight=2.0, base=base)
    for name in base:
        np.testing.assert_array_equal(sums[name], decoded[name].astype(np.float64) * 2.0)


def test_distance_is_the_l2_norm_of_the_decoded_delta() -> None:
    base, update = _random_update(2)
    codec = _codec(dtype="int8", delta=True)
    enc = compress_update(update, codec=codec, base=base).tensors
    parsed = parse_update(enc, codec, template=base, base=base)
    decoded = parsed.decompress()
    expected = np.sqrt(sum(np.sum((decoded[k].astype(np.float64) - base[k]) ** 2) for k in base))
    assert parsed.distance(base) == pytest.approx(float(expected), rel=1e-9)


def test_accumulating_a_2m_parameter_update_allocates_no_copy_of_it() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    base = {"big": rng.normal(size=(2000, 1000)).astype(F32), "bias": np.zeros(1000, F32)}
    update = {k: v + F32(0.01) for k, v in base.items()}
    sums = {k: np.zeros(v.shape, np.float64) for k, v in base.items()}
    float32_copy = 4 * sum(v.size for v in base.values())
    for codec in (UpdateCodec(), _codec(dtype="int8", delta=True),
                  _codec(dtype="int4", **{**SPARSE, "top_k": 0.1})):
        enc = compress_update(update, codec=codec, base=base).tensors
        tracemalloc.start()
        try:
            accumulate_update(sums, enc, codec, weight=2.0, base=base)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # A float32 copy of the update would be 8 MB, a float64 one 16 MB. Decoding
        # needs a few block-sized buffers (the float64 scratch is 8 bytes a block
        # entry, each float32 temporary 4); top-k also keeps its positions (8 bytes
        # an entry sent).
        positions = 8 * round(0.1 * base["big"].size + 0.1 * 1000) if codec.top_k else 0
        limit = 24 * BLOCK + positions
        assert limit < float32_copy
        assert peak < limit, (codec, peak)


def test_accumulate_refuses_bad_accumulators_and_weights() -> None:
    enc = _encode(_codec(dtype="int8"))
    codec = _codec(dtype="int8")
    good = {"w": np.zeros((2, 3)), "b": np.zeros(2)}
    parsed = parse_update(enc, codec, template=good)
    with pytest.raises(ValueError, match="weight"):
        parsed.accumulate_into(good, weight=0.0)
    with pytest.raises(ValueError, match="weight"):
        parsed.accumulate_into(good, weight=float("nan"))
    with pytest.raises(ValueError, match="do not match"):
        parsed.accumulate_into({"w": good["w"]}, weight=1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        parsed.accumulate_into({"w": np.zeros((3, 2)).T, "b": good["b"]}, weight=1.0)
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        parsed.accumulate_into({"w": good["w"], "b": frozen}, weight=1.0)
    assert parsed.scratch_size() == 6
    for scratch in (np.zeros(5), np.zeros(6, np.float32), np.zeros((6, 1))):
        with pytest.raises(ValueError, match="scratch"):
            parsed.accumulate_into(good, weight=1.0, scratch=scratch)
    assert not good["w"].any()


def test_a_reused_scratch_gives_the_same_sums() -> None:
    codec = _codec(dtype="int8", granularity="channel")
    base, update = _random_update(4)
    enc = compress_update(update, codec=codec, base=base).tensors
    parsed = parse_update(enc, codec, template=base, base=base)
    fresh = {k: np.zeros(v.shape) for k, v in base.items()}
    reused = {k: np.zeros(v.shape) for k, v in base.items()}
    scratch = np.full(parsed.scratch_size() + 3, np.nan)  # stale contents must not leak
    for weight in (2.0, 0.75):
        parsed.accumulate_into(fresh, weight=weight)
        parsed.accumulate_into(reused, weight=weight, scratch=scratch)
    for name in base:
        np.testing.assert_array_equal(reused[name], fresh[name])


def test_delta_codecs_need_a_matching_base() -> None:
    codec = _codec(dtype="int8", delta=True)
    with pytest.raises(ValueError, match="base"):
        compress_update(UPDATE, codec=codec)
    enc = compress_update(UPDATE, codec=codec, base=ZEROS).tensors
    with pytest.raises(ValueError, match="base"):
        parse_update(enc, codec, template=UPDATE)
    with pytest.raises(ValueError, match="base"):
        parse_update(enc, codec, template=UPDATE, base={"w": W})
    with pytest.raises(ValueError, match="shape"):
        parse_update(enc, codec, template=UPDATE, base={"w": W.T, "b": B})


def test_encoder_refuses_non_finite_and_huge_updates() -> None:
    with pytest.raises(CompressionError, match="NaN"):
        compress_update({"v": np.array([np.nan], F32)}, codec=_codec(dtype="int8"))
    with pytest.raises(CompressionError, match="magnitude"):
        compress_update({"v": np.array([3e38], F32)}, codec=_codec(dtype="int8"))
    with pytest.raises(ValueError, match="residual"):
        compress_update(UPDATE, codec=_codec(**SPARSE), base=ZEROS, residual={"w": W})


# Error bounds (hypothesis) --------------------------------------------------------------------

BOUNDS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9)


@st.composite
def _updates(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.sampled_from(["a", "b.w", "c.bias", "d"]), min_size=1,
                          max_size=4, unique=True))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3]))
    out = {}
    for name in names:
        values = draw(hnp.arrays(F32, _shapes, elements=st.floats(-1, 1, width=32)))
        out[name] = values * F32(scale)
    return out


def _group_scales(x: dict[str, np.ndarray], qmax: int, channel: bool) -> dict[str, np.ndarray]:
    """Per-element scale each value was quantised with (hand definition)."""
    out = {}
    for name, v in x.items():
        if channel and v.ndim >= 2:
            row = np.abs(v.reshape(v.shape[0], -1)).max(axis=1) / qmax
            out[name] = np.broadcast_to(row.reshape((-1,) + (1,) * (v.ndim - 1)), v.shape)
        else:
            out[name] = np.full(v.shape, np.abs(v).max() / qmax if v.size else 0.0)
    return out


@BOUNDS
@given(_updates(), st.sampled_from(["int8", "int4"]), st.booleans(), st.booleans())
def test_quantisation_error_is_at_most_half_a_step(
    x: dict[str, np.ndarray], dtype: str, channel: bool, stochastic: bool
) -> None:
    codec = _codec(dtype=dtype, granularity="channel" if channel else "tensor",
                   stochastic_rounding=stochastic)
    enc = compress_update(x, codec=codec, seed=1).tensors
    decoded = decompress_update(enc, codec, template=x)
    steps = _group_scales(x, 127 if dtype == "int8" else 7, channel)
    for name, original in x.items():
        err = np.abs(decoded[name].astype(np.float64) - original)
        # Stochastic rounding may go to either neighbour: one step; nearest: half.
        allowed = steps[name] * (1.0 if stochastic else 0.5) * (1 + 1e-5) + 1e-30
        assert np.all(err <= allowed), name


@BOUNDS
@given(_updates())
def test_float16_error_is_half_an_ulp(x: dict[str, np.ndarray]) -> None:
    codec = _codec(dtype="float16")
    decoded = decompress_update(compress_update(x, codec=codec).tensors, codec, template=x)
    for name, original in x.items():
        err = np.abs(decoded[name].astype(np.float64) - original)
        # float16: 11 significant bits; subnormal spacing 2**-24 below 2**-14.
        assert np.all(err <= np.maximum(np.abs(original) * 2.0**-11, 2.0**-25)), name


@BOUNDS
@given(_updates())
def test_plain_and_float32_delta_round_trip_exactly(x: dict[str, np.ndarray]) -> None:
    plain = UpdateCodec()
    assert all(
        np.array_equal(v, x[k])
        for k, v in decompress_update(compress_update(x, codec=plain).tensors, plain,
                                      template=x).items()
    )
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    delta = _codec(delta=True)
    out = decompress_update(compress_update(x, codec=delta, base=zeros).tensors, delta,
                            template=x, base=zeros)
    assert all(np.array_equal(v, x[k]) for k, v in out.items())


@BOUNDS
@given(_updates(), st.sampled_from(["float32", "float16", "int8", "int4"]),
       st.floats(0.01, 1.0), st.booleans())
def test_top_k_sends_the_largest_entries_and_keeps_the_rest(
    x: dict[str, np.ndarray], dtype: str, top_k: float, channel: bool
) -> None:
    quantised = dtype in ("int8", "int4")
    codec = _codec(dtype=dtype, granularity="channel" if channel and quantised else "tensor",
                   delta=True, error_feedback=True, top_k=top_k)
    zeros = {k: np.zeros_like(v) for k, v in x.items()}
    out = compress_update(x, codec=codec, base=zeros)
    decoded = decompress_update(out.tensors, codec, template=x, base=zeros)
    assert out.residual is not None
    for name, original in x.items():
        sent = decoded[name]
        kept = np.count_nonzero(sent) if not quantised else None
        # Sent + residual is the update, up to float32 rounding of the subtraction.
        np.testing.assert_allclose(sent + out.residual[name], original,
                                   atol=float(np.abs(original).max(initial=0)) * 1e-6 + 1e-37)
        if kept is not None:
            assert kept <= kept_count(original.size, top_k)
        # Every entry left out is no larger than every entry sent (by the true magnitude).
        flat, flat_sent = np.abs(original).ravel(), sent.ravel()
        mask = np.zeros(flat.size, bool)
        if out.tensors.get("mask") is not None or out.tensors.get("indices") is not None:
            positions = _positions_of(out.tensors, x, name)
            mask[positions] = True
        if mask.any() and (~mask).any():
            assert flat[~mask].max() <= flat[mask].min()
        assert np.count_nonzero(flat_sent[~mask]) == 0


def _positions_of(enc: dict[str, np.ndarray], x: dict[str, np.ndarray], name: str) -> np.ndarray:
    total = sum(v.size for v in x.values())
    if "indices" in enc:
        flat_positions = enc["indices"].astype(np.int64)
    else:
        flat_positions = np.flatnonzero(np.unpackbits(enc["mask"], count=total,
                                                      bitorder="little"))
    offset = 0
    for other in sorted(x):
        if other == name:
            local = flat_positions[(flat_positions >= offset)
                                   & (flat_positions < offset + x[name].size)]
            return local - offset
        offset += x[other].size
    raise AssertionError(name)


# Error feedback -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["float32", "float16", "int8", "int4"]),
       st.sampled_from([0.05, 0.1, 0.5, None]), st.integers(2, 12))
def test_error_feedback_loses_nothing(seed: int, dtype: str, top_k: float | None,
                                      rounds: int) -> None:
    """Sum over rounds of what was transmitted, plus the final residual, is the sum of the
    true updates: whatever quantisation and top-k held back is sent later."""
    rng = np.random.default_rng(seed)
    codec = _codec(dtype=dtype, delta=True, error_feedback=True, top_k=top_k,
                   stochastic_rounding=dtype in ("int8", "int4") and seed % 2 == 0)
    shapes = {"w": (16, 12), "b": (16,)}
    base = {k: rng.normal(size=s).astype(F32) for k, s in shapes.items()}
    residual = None
    true_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    sent_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    for r in range(rounds):
        delta = {k: (rng.normal(size=s) * 0.01).astype(F32) for k, s in shapes.items()}
        trained = {k: base[k] + delta[k] for k in shapes}
        out = compress_update(trained, codec=codec, base=base, residual=residual, seed=r)
        decoded = decompress_update(out.tensors, codec, template=base, base=base)
        for k in shapes:
            true_sum[k] += trained[k].astype(np.float64) - base[k]
            sent_sum[k] += decoded[k].astype(np.float64) - base[k]
        residual = out.residual
        base = decoded  # the next round starts from what the aggregator now holds
    assert residual is not None
    for k in shapes:
        # float32 rounding of base + delta at |base| ~ 1: ~6e-8 per round.
        np.testing.assert_allclose(sent_sum[k] + residual[k], true_sum[k], atol=1e-6 * rounds)


def test_top_k_without_error_feedback_would_lose_most_of_the_update() -> None:
    # Why top_k requires error_feedback: one round of top-10% keeps a minority of the
    # energy of a Gaussian update, and error feedback delivers the rest within rounds.
    rng = np.random.default_rng(4)
    delta = {"w": rng.normal(size=10_000).astype(F32)}
    zeros = {"w": np.zeros(10_000, F32)}
    codec = _codec(**{**SPARSE, "top_k": 0.1})
    out = compress_update(delta, codec=codec, base=zeros)
    sent = decompress_update(out.tensors, codec, template=zeros, base=zeros)["w"]
    lost = np.linalg.norm(delta["w"] - sent) / np.linalg.norm(delta["w"])
    assert 0.6 < lost < 0.8
    assert out.residual is not None
    np.testing.assert_allclose(sent + out.residual["w"], delta["w"], atol=1e-6)


# Each scheme's body for the literal update (base = zeros): dtype, shape and the raw
# little-endian bytes of every tensor. Hand-checked: see the by-hand tests above for
# the int8/int4/mask values; float32 0.254 = 0x3e820c4a, 1.27 = 0x3fa28f5c.
EXPECTED_BODIES = {
    "{}": {
        "b": ("float32", [2], "4a0c823ecdccccbd"),
        "w": ("float32", [2, 3], "5c8fa23f000000bf6de7fb3d00000000000080bf448bac3e"),
    },
    '{"dtype":"float16"}': {"values": ("float16", [8], "103466ae143d00b8df2f000000bc6435")},
    '{"dtype":"int8"}': {
        "scales": ("float32", [2], "6f12033b0ad7233c"),
        "values": ("int8", [8], "7fce7fce0c009c22"),
    },
    '{"dtype":"int8","granularity":"channel"}': {
        "scales": ("float32", [3], "6f12033b0ad7233c0402013c"),
        "values": ("int8", [8], "7fce7fce0c00812b"),
    },
    '{"dtype":"int4"}': {
        "scales": ("float32", [2], "55a0143d69c8393e"),
        "values": ("uint8", [4], "5f5f89a2"),
    },
    # w row 1 = [0, -1, 0.337] with scale 1/7: q [0, -7, 2] -> nibbles 8, 1, 10.
    '{"dtype":"int4","granularity":"channel","delta":true}': {
        "scales": ("float32", [3], "55a0143d69c8393e2549123e"),
        "values": ("uint8", [4], "5f5f89a1"),
    },
    '{"delta":true,"error_feedback":true}': {
        "values": ("float32", [8],
                   "4a0c823ecdccccbd5c8fa23f000000bf6de7fb3d00000000000080bf448bac3e"),
    },
    '{"dtype":"int8","delta":true,"error_feedback":true,"top_k":0.5}': {
        "mask": ("uint8", [1], "4d"),
        "scales": ("float32", [2], "6f12033b0ad7233c"),
        "values": ("int8", [4], "7f7fce9c"),
    },
    # top 10%: b keeps 0.254 (flat 0), w keeps 1.27 (flat 2): mask 0b101; w row 1 sends
    # nothing, so its scale is 0.
    '{"dtype":"int4","granularity":"channel","delta":true,"error_feedback":true,"top_k":0.1}': {
        "mask": ("uint8", [1], "05"),
        "scales": ("float32", [3], "55a0143d69c8393e00000000"),
        "values": ("uint8", [1], "ff"),
    },
    '{"dtype":"float16","delta":true,"error_feedback":true,"top_k":0.01}': {
        "mask": ("uint8", [1], "05"),
        "values": ("float16", [2], "1034143d"),
    },
}


@pytest.mark.parametrize("codec", ALL_CODECS[:10], ids=lambda c: c.model_dump_json(
    exclude_defaults=True))
def test_pinned_body_of_every_scheme(codec: UpdateCodec) -> None:
    enc = compress_update(UPDATE, codec=codec, base=ZEROS, seed=0).tensors
    got = {k: (v.dtype.name, list(v.shape), v.tobytes().hex()) for k, v in sorted(enc.items())}
    assert got == EXPECTED_BODIES[codec.model_dump_json(exclude_defaults=True)]
    # And it decodes back to within the scheme's bound of the literal update.
    decoded = decompress_update(enc, codec, template=UPDATE, base=ZEROS)
    assert set(decoded) == {"w", "b"}
