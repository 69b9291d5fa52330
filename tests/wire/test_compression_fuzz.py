"""Untrusted compressed updates: every malformed encoding is a CompressionError, nothing else.

Targeted cases name each check of :func:`fedge.compression.parse_update`; then
10,000 seeded mutations of valid encodings and hypothesis-generated bodies and
frames check that nothing else can escape and that whatever is accepted decodes
to finite, bounded weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.codec import FrameHeader, decode_frame, encode_frame
from fedge.compression import (
    MAX_MAGNITUDE,
    UpdateCodec,
    accumulate_update,
    compress_update,
    parse_update,
)
from fedge.errors import CompressionError, FrameError

F32 = np.float32
TEMPLATE = {
    "w": np.zeros((40, 25), F32),
    "b": np.zeros(40, F32),
    "s": np.zeros((), F32),
}
TOTAL = 1041
BASE = {k: np.full(v.shape, 0.5, F32) for k, v in TEMPLATE.items()}
RNG = np.random.default_rng(0)
TRAINED = {k: (v + RNG.normal(size=v.shape) * 0.1).astype(F32) for k, v in BASE.items()}


def _codec(**fields: object) -> UpdateCodec:
    return UpdateCodec.model_validate(fields)


EF = {"delta": True, "error_feedback": True}
CODECS = [
    UpdateCodec(),
    _codec(dtype="float16"),
    _codec(dtype="int8"),
    _codec(dtype="int8", granularity="channel", delta=True),
    _codec(dtype="int4"),
    _codec(dtype="int4", granularity="channel"),
    _codec(delta=True),
    _codec(dtype="int8", **EF, top_k=0.3),
    _codec(dtype="int4", **EF, top_k=0.5, granularity="channel"),
    _codec(dtype="float16", **EF, top_k=0.1),
    _codec(**EF, top_k=0.01),
]


def _valid(codec: UpdateCodec) -> dict[str, np.ndarray]:
    return compress_update(TRAINED, codec=codec, base=BASE).tensors


def _with(enc: dict[str, np.ndarray], key: str, value: np.ndarray | None) -> dict[str, np.ndarray]:
    out = dict(enc)
    if value is None:
        del out[key]
    else:
        out[key] = value
    return out


INT8 = _codec(dtype="int8")
INT4 = _codec(dtype="int4")
SPARSE8 = _codec(dtype="int8", **EF, top_k=0.3)
SPARSE_IDX = _codec(**EF, top_k=0.01)  # keeps 10 + 1 + 1 entries: 48 index bytes < 131

Case = tuple[UpdateCodec, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], str]
CASES: dict[str, Case] = {
    "missing-scales": (INT8, lambda e: _with(e, "scales", None), r"missing \['scales'\]"),
    "extra-tensor": (INT8, lambda e: _with(e, "evil", np.zeros(1, F32)), r"unexpected \['evil'\]"),
    "plain-missing": (UpdateCodec(), lambda e: _with(e, "w", None), r"missing \['w'\]"),
    "plain-wrong-dtype": (UpdateCodec(), lambda e: _with(e, "w", e["w"].astype(np.float16)),
                          "dtype float16, expected float32"),
    "plain-wrong-shape": (UpdateCodec(), lambda e: _with(e, "w", e["w"].T.copy()),
                          r"shape \(25, 40\), expected \(40, 25\)"),
    "plain-nan": (UpdateCodec(), lambda e: _with(e, "b", np.full(40, np.nan, F32)), "NaN"),
    "values-dtype": (INT8, lambda e: _with(e, "values", e["values"].astype(np.int16)),
                     "dtype int16, expected int8"),
    "values-short": (INT8, lambda e: _with(e, "values", e["values"][:-1]), "shape"),
    "values-2d": (INT8, lambda e: _with(e, "values", e["values"].reshape(1, -1)), "shape"),
    "not-an-array": (INT8, lambda e: {**e, "values": [1, 2, 3]}, "not an array"),  # type: ignore[dict-item]
    "int8-minus-128": (INT8, lambda e: _with(e, "values", np.where(
        np.arange(e["values"].size) == 3, np.int8(-128), e["values"]).astype(np.int8)),
        r"int8 code -128 outside \[-127, 127\]"),
    "int4-nibble-0": (INT4, lambda e: _with(e, "values", e["values"] & np.uint8(0xF0)),
                      "nibble 0"),
    "int4-padding": (INT4, lambda e: _with(e, "values", np.concatenate(
        [e["values"][:-1], [e["values"][-1] | np.uint8(0x80)]]).astype(np.uint8)),
        "padding nibble"),
    "scale-negative": (INT8, lambda e: _with(e, "scales", -e["scales"]), "scales outside"),
    "scale-nan": (INT8, lambda e: _with(e, "scales", np.full_like(e["scales"], np.nan)), "NaN"),
    "scale-inf": (INT8, lambda e: _with(e, "scales", np.full_like(e["scales"], np.inf)), "NaN"),
    "scale-huge": (INT8, lambda e: _with(e, "scales", np.full_like(e["scales"], 1e37)),
                   "scales outside"),
    "scale-count": (INT8, lambda e: _with(e, "scales", e["scales"][:1]), "shape"),
    "float-huge": (_codec(delta=True), lambda e: _with(e, "values", np.full_like(
        e["values"], 1e31)), "values outside"),
    "float16-inf": (_codec(dtype="float16"), lambda e: _with(e, "values", np.full_like(
        e["values"], np.inf)), "NaN"),
    "mask-instead-of-indices": (SPARSE_IDX, lambda e: {
        "values": e["values"], "mask": np.zeros(131, np.uint8)}, r"missing \['indices'\]"),
    "mask-padding": (SPARSE8, lambda e: _with(e, "mask", np.concatenate(
        [e["mask"][:-1], [e["mask"][-1] | np.uint8(0x80)]]).astype(np.uint8)), "padding bits"),
    "mask-count": (SPARSE8, lambda e: _with(e, "mask", np.zeros_like(e["mask"])),
                   "entries sent, top-k keeps"),
    "mask-moved-bit": (SPARSE8, lambda e: _with(e, "mask", _move_first_bit(e["mask"])),
                       "entries sent, top-k keeps"),
    "mask-dtype": (SPARSE8, lambda e: _with(e, "mask", e["mask"].astype(np.int8)), "dtype"),
    "indices-unsorted": (SPARSE_IDX, lambda e: _with(e, "indices", e["indices"][::-1].copy()),
                         "strictly increasing"),
    "indices-duplicate": (SPARSE_IDX, lambda e: _with(e, "indices", np.repeat(
        e["indices"][:1], e["indices"].size)), "strictly increasing"),
    "indices-negative": (SPARSE_IDX, lambda e: _with(e, "indices", np.full_like(
        e["indices"], -1)), "outside"),
    "indices-past-end": (SPARSE_IDX, lambda e: _with(e, "indices", np.full_like(
        e["indices"], TOTAL)), "outside"),
    "indices-int64": (SPARSE_IDX, lambda e: _with(e, "indices", e["indices"].astype(np.int64)),
                      "dtype int64, expected int32"),
}


def _move_first_bit(mask: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(mask, bitorder="little")[:TOTAL]
    first = int(np.flatnonzero(bits)[0])
    free = int(np.flatnonzero(bits == 0)[-1])
    bits[first], bits[free] = 0, 1
    return np.packbits(bits, bitorder="little")


def test_index_case_really_uses_indices() -> None:
    assert set(_valid(SPARSE_IDX)) == {"values", "indices"}
    assert set(_valid(SPARSE8)) == {"values", "scales", "mask"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_encoding(name: str) -> None:
    codec, mutate, message = CASES[name]
    enc = mutate(_valid(codec))
    with pytest.raises(CompressionError, match=message):
        parse_update(enc, codec, template=TEMPLATE, base=BASE)
    sums = {k: np.zeros(v.shape) for k, v in TEMPLATE.items()}
    with pytest.raises(CompressionError):
        accumulate_update(sums, enc, codec, weight=1.0, base=BASE)
    assert not any(v.any() for v in sums.values())  # nothing was half-added


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.model_dump_json(exclude_defaults=True))
def test_valid_encodings_parse(codec: UpdateCodec) -> None:
    parse_update(_valid(codec), codec, template=TEMPLATE, base=BASE).decompress()


def _check_decoded(enc: dict[str, np.ndarray], codec: UpdateCodec) -> None:
    """Parse, decode and accumulate; if accepted, the result must be finite and bounded."""
    try:
        update = parse_update(enc, codec, template=TEMPLATE, base=BASE)
    except CompressionError:
        return
    decoded = update.decompress()
    for name, array in decoded.items():
        assert array.dtype == F32 and array.shape == TEMPLATE[name].shape
        assert np.isfinite(array).all()
        if not codec.plain:  # plain weights are any finite float32, as in protocol v1
            delta = np.abs(array - BASE[name] * codec.delta).max(initial=0)
            assert delta <= MAX_MAGNITUDE * 1.01
    sums = {k: np.zeros(v.shape) for k, v in TEMPLATE.items()}
    update.accumulate_into(sums, weight=1e8)
    assert all(np.isfinite(v).all() for v in sums.values())


def _mutate(enc: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    # The mutations may cast NaN to int: numpy's warning is about the test, not the decoder
    # (which runs outside this context, where warnings are errors).
    with np.errstate(all="ignore"):
        return _mutate_once(enc, rng)


def _mutate_once(enc: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = dict(enc)
    keys = sorted(out)
    if not keys:
        return {"values": np.zeros(3, np.int8)}
    key = keys[int(rng.integers(len(keys)))]
    array = out[key]
    kind = int(rng.integers(8))
    if kind == 0:  # random bytes, same dtype and shape
        raw = rng.integers(0, 256, array.nbytes, dtype=np.uint8).tobytes()
        out[key] = np.frombuffer(raw, array.dtype).reshape(array.shape)
    elif kind == 1:  # flip one byte
        raw = bytearray(array.tobytes())
        if raw:
            raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
        out[key] = np.frombuffer(bytes(raw), array.dtype).reshape(array.shape)
    elif kind == 2:  # another allowed dtype
        dtype = rng.choice(["float16", "float32", "float64", "int8", "int16", "int32", "int64",
                            "uint8"])
        out[key] = array.astype(dtype)
    elif kind == 3:  # grow or shrink
        flat = array.reshape(-1)
        out[key] = flat[:-1] if rng.integers(2) and flat.size else np.append(flat, flat[:1])
    elif kind == 4:
        del out[key]
    elif kind == 5:
        out[rng.choice(["values", "scales", "mask", "indices", "w", "x"])] = np.zeros(
            int(rng.integers(0, 40)), rng.choice(["int32", "uint8", "float32"]))
    elif kind == 6:  # extreme values
        values = np.array([0, -1, 1, 127, -128, 255, 65504, -65504, 1e30, -1e38, np.nan, np.inf])
        filler = values[rng.integers(len(values), size=array.size)].astype(array.dtype)
        out[key] = filler.reshape(array.shape)
    else:  # reshape to 2-d
        out[key] = array.reshape(1, -1)
    return out


def test_ten_thousand_mutated_encodings_raise_only_compression_errors() -> None:
    rng = np.random.default_rng(20_240_613)
    valid = [(codec, _valid(codec)) for codec in CODECS]
    accepted = 0
    for i in range(10_000):
        codec, enc = valid[i % len(valid)]
        mutated = _mutate(enc, rng)
        if rng.integers(4) == 0:
            mutated = _mutate(mutated, rng)
        try:
            parse_update(mutated, codec, template=TEMPLATE, base=BASE)
            accepted += 1
        except CompressionError:
            pass
        _check_decoded(mutated, codec)
    # Some mutations are still valid encodings (a flipped code, a reordered-equal value);
    # most are not. Both outcomes must have occurred for the test to mean anything.
    assert 100 < accepted < 9_000


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_KEYS = st.sampled_from(["values", "scales", "mask", "indices", "w", "b", "s", "other"])
_ALLOWED = st.sampled_from(["<f2", "<f4", "<f8", "i1", "<i2", "<i4", "<i8", "u1"])


@FUZZ
@given(
    st.dictionaries(
        _KEYS,
        _ALLOWED.flatmap(lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(
            min_dims=0, max_dims=2, min_side=0, max_side=40))),
        max_size=5,
    ),
    st.sampled_from(CODECS),
)
def test_fuzz_arbitrary_bodies(enc: dict[str, np.ndarray], codec: UpdateCodec) -> None:
    _check_decoded(enc, codec)


_HEADER = FrameHeader(kind="update", fleet="f", device="d", round_id=1, base_version=0,
                      num_examples=1, created_at=1_700_000_000.0,
                      codec=_codec(dtype="int4", **EF, top_k=0.5, zstd_level=3))
_FRAME = encode_frame(_HEADER, _valid(_HEADER.codec))  # type: ignore[arg-type]


@FUZZ
@given(st.data())
def test_fuzz_compressed_frame_mutations(data: st.DataObject) -> None:
    """Corrupting a compressed frame anywhere gives a FrameError, or a frame whose body
    then parses or fails with CompressionError (a FrameError too)."""
    mutated = bytearray(_FRAME)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        pos = data.draw(st.integers(0, len(mutated) - 1), label="pos")
        mutated[pos] = data.draw(st.integers(0, 255), label="byte")
    try:
        frame = decode_frame(bytes(mutated), max_bytes=1 << 16)
        parse_update(frame.tensors, frame.codec, template=TEMPLATE, base=BASE).decompress()
    except FrameError:
        pass


def test_frame_fuzz_base_is_valid() -> None:
    frame = decode_frame(_FRAME)
    parse_update(frame.tensors, frame.codec, template=TEMPLATE, base=BASE)
