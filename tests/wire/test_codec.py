"""Binary model frames (wire protocol v1): exact bytes, round trips, and every rejection."""

from __future__ import annotations

import io
import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from fedge.codec import (
    ALLOWED_DTYPES,
    BODY_ALIGNMENT,
    FRAME_MAGIC,
    FRAME_VERSION,
    MAX_HEADER_BYTES,
    FrameHeader,
    align_header,
    decode_frame,
    decode_header,
    encode_frame,
)
from fedge.errors import FrameError, FrameTooLargeError, NonFiniteTensorError, ProtocolError

CREATED = 1_700_000_000.0
HEADER_JSON = (
    b'{"kind":"update","fleet":"plant-7","device":"pump-03","round_id":12,'
    b'"base_version":3,"num_examples":10,"metrics":{"train_loss":0.5},'
    b'"codec":"safetensors","created_at":1700000000.0}'
)


def _header(**overrides: object) -> FrameHeader:
    fields: dict[str, object] = {
        "kind": "update",
        "fleet": "plant-7",
        "device": "pump-03",
        "round_id": 12,
        "base_version": 3,
        "num_examples": 10,
        "metrics": {"train_loss": 0.5},
        "created_at": CREATED,
    }
    fields.update(overrides)
    return FrameHeader.model_validate(fields)


def _raw_frame(header_json: bytes, body: bytes, *, magic: bytes = b"FEDG", version: int = 1,
               flags: int = 0, header_len: int | None = None) -> bytes:
    length = len(header_json) if header_len is None else header_len
    return struct.pack(">4sBBI", magic, version, flags, length) + header_json + body


def _st_body(dtype: str, shape: list[int], data: bytes) -> bytes:
    """A hand-made safetensors buffer (8-byte little-endian header length + JSON + data)."""
    meta = json.dumps({"x": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}})
    raw = meta.encode()
    return struct.pack("<Q", len(raw)) + raw + data


VALID_BODY = _st_body("F32", [2], np.array([1.0, 2.0], "<f4").tobytes())


# Exact bytes -------------------------------------------------------------------------------


def test_prefix_bytes_and_padded_compact_header_json_are_exact() -> None:
    frame = encode_frame(_header(), {"w": np.array([1.0, 2.0], np.float32)})
    assert frame[:4] == b"FEDG"
    assert frame[4] == 1  # format version
    assert frame[5] == 0  # flags
    # Compact JSON, then two spaces before its closing brace: 10 + 182 = 192 puts the
    # body (and, safetensors padding its own header to 8, the tensors) 8-byte aligned.
    assert len(HEADER_JSON) == 180
    padded = HEADER_JSON[:-1] + b"  }"
    assert frame[6:10] == len(padded).to_bytes(4, "big")
    assert frame[:10] == b"FEDG\x01\x00\x00\x00\x00\xb6"
    assert frame[10 : 10 + 182] == padded
    # The rest is the safetensors body, starting with its own little-endian header length.
    body = frame[10 + 182 :]
    (st_header_len,) = struct.unpack("<Q", body[:8])
    assert st_header_len % 8 == 0
    assert json.loads(body[8 : 8 + st_header_len])["w"] == {
        "dtype": "F32",
        "shape": [2],
        "data_offsets": [0, 8],
    }
    assert body[8 + st_header_len :] == np.array([1.0, 2.0], "<f4").tobytes()
    assert decode_frame(frame, copy=False).tensors["w"].flags.aligned


@pytest.mark.parametrize("header_len", [2, 3, 180, 181, 185, 186])
def test_align_header_pads_before_the_closing_brace(header_len: int) -> None:
    header = b"{" + b"x" * (header_len - 2) + b"}"
    padded = align_header(header)
    assert (10 + len(padded)) % BODY_ALIGNMENT == 0
    assert padded.rstrip(b" }") == header[:-1] and len(padded) - len(header) < BODY_ALIGNMENT
    assert align_header(padded) == padded  # padding again changes nothing
    grown = align_header(header, grows_by=5)
    assert (10 + len(grown) + 5) % BODY_ALIGNMENT == 0
    with pytest.raises(ValueError, match="JSON object"):
        align_header(b"[]")


def test_frames_from_other_writers_still_decode_unaligned() -> None:
    # A compact (unpadded) header as earlier v1 writers sent it: any length is valid.
    data = _raw_frame(HEADER_JSON, VALID_BODY)
    decoded = decode_frame(data)
    assert decoded.header == _header()
    np.testing.assert_array_equal(decoded.tensors["x"], [1.0, 2.0])


def test_constants_match_the_spec() -> None:
    assert FRAME_MAGIC == b"FEDG"
    assert FRAME_VERSION == 1
    assert MAX_HEADER_BYTES == 65536
    assert {d.name for d in ALLOWED_DTYPES} == {
        "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    }


def test_optional_none_fields_are_omitted_from_the_header() -> None:
    frame = encode_frame(_header(device=None, metrics={}), {})
    header = json.loads(frame[10 : 10 + int.from_bytes(frame[6:10], "big")])
    assert "device" not in header
    assert "signature" not in header
    assert "version" not in header
    assert header["metrics"] == {}


# Round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES, key=lambda d: d.name), ids=str)
def test_round_trip_every_allowed_dtype(dtype: np.dtype) -> None:
    rng = np.random.default_rng(7)
    if dtype.kind == "f":
        matrix = rng.normal(size=(3, 4)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        matrix = np.array([[info.min, info.max, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]], dtype=dtype)
    tensors = {
        "matrix": matrix,
        "empty": np.zeros((0, 5), dtype=dtype),
        "vector": matrix[:, 1],  # non-contiguous view
    }
    frame = decode_frame(encode_frame(_header(), tensors))
    assert set(frame.tensors) == set(tensors)
    for name, original in tensors.items():
        got = frame.tensors[name]
        assert got.dtype == dtype, name
        assert got.shape == original.shape, name
        np.testing.assert_array_equal(got, original)
    assert frame.tensors["empty"].shape == (0, 5)
    assert frame.tensors["vector"].tolist() == matrix[:, 1].tolist()


def test_safetensors_itself_keeps_0d_arrays() -> None:
    # Precondition for the next test: the body format can carry a 0-d tensor.
    from safetensors.numpy import load, save

    assert load(save({"s": np.array(2.5, np.float32)}))["s"].shape == ()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_round_trip_0d_tensor_keeps_its_shape(dtype: type) -> None:
    frame = decode_frame(encode_frame(_header(), {"scalar": np.array(3, dtype)}))
    assert frame.tensors["scalar"].shape == ()
    assert frame.tensors["scalar"].item() == 3


def test_round_trip_preserves_the_header() -> None:
    header = _header(version=4, signature="abc", metrics={"val_rmse": 12.25, "n": 3.0})
    frame = decode_frame(encode_frame(header, {"a": np.ones(2, np.float32)}))
    assert frame.header == header
    assert frame.header.metrics == {"val_rmse": 12.25, "n": 3.0}


def test_round_trip_with_no_tensors() -> None:
    frame = decode_frame(encode_frame(_header(kind="evaluation"), {}))
    assert frame.tensors == {}
    assert frame.header.kind == "evaluation"


def test_decode_header_is_the_frames_header_without_reading_the_body() -> None:
    header = _header(version=4, metrics={"local_seconds": 0.25})
    frame = encode_frame(header, {"a": np.ones(2, np.float32)})
    assert decode_header(frame) == header == decode_frame(frame).header
    # A body decode_frame refuses (garbage, NaN) is not looked at: only the header is.
    assert decode_header(_raw_frame(HEADER_JSON, b"\x00garbage")) == decode_frame(
        _raw_frame(HEADER_JSON, _st_body("F32", [0], b""))).header
    nan = encode_frame(header, {"a": np.array([np.nan], np.float32)})
    with pytest.raises(NonFiniteTensorError):
        decode_frame(nan)
    assert decode_header(nan) == header


@pytest.mark.parametrize(
    ("frame", "error"),
    [(b"FEDG", "truncated frame"), (b"FEDH" + b"\x00" * 20, "bad magic"),
     (b"FEDG\x02\x00\x00\x00\x00\x00", "unsupported frame version 2")],
)
def test_decode_header_refuses_what_decode_frame_refuses_up_to_the_header(
    frame: bytes, error: str
) -> None:
    for decode in (decode_header, decode_frame):
        with pytest.raises(FrameError, match=error):
            decode(frame)
    with pytest.raises(FrameTooLargeError):
        decode_header(_valid_frame(), max_bytes=10)


# Rejections --------------------------------------------------------------------------------


def _valid_frame() -> bytes:
    return encode_frame(_header(), {"w": np.array([1.0, 2.0], np.float32)})


@pytest.mark.parametrize("size", [0, 1, 4, 9])
def test_truncated_prefix(size: int) -> None:
    with pytest.raises(FrameError, match="truncated frame"):
        decode_frame(_valid_frame()[:size])


def test_truncated_header() -> None:
    frame = _valid_frame()
    with pytest.raises(FrameError, match="truncated frame: header needs 182 bytes"):
        decode_frame(frame[: 10 + 100])


def test_wrong_magic() -> None:
    with pytest.raises(FrameError, match="bad magic"):
        decode_frame(b"FEDH" + _valid_frame()[4:])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(FrameError, match=f"unsupported frame version {version}"):
        decode_frame(_raw_frame(HEADER_JSON, VALID_BODY, version=version))


@pytest.mark.parametrize("flags", [0x02, 0x80, 0x81, 0xFF])
def test_reserved_flags(flags: int) -> None:
    with pytest.raises(FrameError, match="unknown frame flags"):
        decode_frame(_raw_frame(HEADER_JSON, VALID_BODY, flags=flags))


def test_zstd_flag_without_a_zstd_codec_is_refused() -> None:
    # Bit 0 means "zstd body"; a "safetensors" header says the body is plain.
    with pytest.raises(FrameError, match="flags say the body is compressed"):
        decode_frame(_raw_frame(HEADER_JSON, VALID_BODY, flags=1))


def test_header_length_over_limit_is_refused_before_reading_it() -> None:
    # The frame is short: the length field alone must be enough to refuse it.
    data = _raw_frame(b"{}", b"", header_len=MAX_HEADER_BYTES + 1)
    with pytest.raises(FrameError, match="header length 65537 exceeds 65536"):
        decode_frame(data)


def test_header_length_at_limit_is_only_truncated() -> None:
    data = _raw_frame(b"{}", b"", header_len=MAX_HEADER_BYTES)
    with pytest.raises(FrameError, match="truncated"):
        decode_frame(data)


def test_encode_refuses_an_oversized_header() -> None:
    # The schema bounds keep validated headers far below the limit; a header built without
    # validation must still not produce a frame the decoder would refuse.
    header = FrameHeader.model_construct(**{**_header().__dict__, "signature": "s" * 70_000})
    with pytest.raises(FrameError, match="exceeds 65536"):
        encode_frame(header, {})


def test_largest_schema_valid_header_fits() -> None:
    header = _header(metrics={f"{i:02d}" + "x" * 62: float(i) for i in range(64)},
                     signature="s" * 512)
    assert decode_frame(encode_frame(header, {})).header == header


@pytest.mark.parametrize(
    "header_json",
    [b"not json", b"{", b"[]", b"\xff\xfe", b""],
    ids=["text", "unterminated", "array", "invalid-utf8", "empty"],
)
def test_header_not_json(header_json: bytes) -> None:
    with pytest.raises(FrameError, match="invalid frame header"):
        decode_frame(_raw_frame(header_json, VALID_BODY))


def _header_dict() -> dict[str, object]:
    return json.loads(HEADER_JSON)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"surprise": 1}, "surprise"),
        ({"round_id": -1}, "round_id"),
        ({"base_version": -5}, "base_version"),
        ({"num_examples": -1}, "num_examples"),
        ({"kind": "pickle"}, "kind"),
        ({"fleet": "bad fleet"}, "fleet"),
        ({"device": "a/b"}, "device"),
        ({"codec": "pickle"}, "codec"),
        ({"created_at": 12.0}, "created_at"),
    ],
)
def test_header_failing_schema(change: dict[str, object], where: str) -> None:
    fields = _header_dict()
    fields.update(change)
    with pytest.raises(FrameError, match=f"invalid frame header: {where}"):
        decode_frame(_raw_frame(json.dumps(fields).encode(), VALID_BODY))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_header_with_non_finite_metric(literal: bytes) -> None:
    header_json = HEADER_JSON.replace(b'"train_loss":0.5', b'"train_loss":' + literal)
    assert literal in header_json
    with pytest.raises(FrameError, match=r"invalid frame header: metrics\.train_loss"):
        decode_frame(_raw_frame(header_json, VALID_BODY))


def test_header_missing_required_field() -> None:
    fields = _header_dict()
    del fields["round_id"]
    with pytest.raises(FrameError, match="round_id"):
        decode_frame(_raw_frame(json.dumps(fields).encode(), VALID_BODY))


def test_frame_over_max_bytes_is_refused_unparsed() -> None:
    # Garbage from the first byte: only the size check can explain a FrameTooLargeError.
    garbage = b"\x00" * (4 << 20)
    with pytest.raises(FrameTooLargeError, match=f"frame of {4 << 20} bytes exceeds limit 1024"):
        decode_frame(garbage, max_bytes=1024)


def test_default_limit_is_16_mib() -> None:
    with pytest.raises(FrameTooLargeError):
        decode_frame(b"Z" * ((16 << 20) + 1))


def test_frame_exactly_at_max_bytes_is_accepted() -> None:
    frame = _valid_frame()
    assert decode_frame(frame, max_bytes=len(frame)).tensors["w"].tolist() == [1.0, 2.0]
    with pytest.raises(FrameTooLargeError):
        decode_frame(frame, max_bytes=len(frame) - 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_non_finite_tensor(bad: float, dtype: type) -> None:
    data = encode_frame(_header(), {"ok": np.ones(3, dtype), "bad": np.array([0.0, bad], dtype)})
    with pytest.raises(NonFiniteTensorError, match="'bad'"):
        decode_frame(data)


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_finite_check_is_exact_on_aligned_and_unaligned_bodies(aligned: bool, dtype: type) -> None:
    def frame(tensors: dict[str, np.ndarray]) -> bytes:
        if aligned:
            return encode_frame(_header(), tensors)
        # The compact 180-byte header of earlier writers: tensors start 2 bytes off.
        return _raw_frame(HEADER_JSON, st_save(tensors))

    # Large enough for the one-pass x @ x check where the array is aligned.
    values = np.linspace(-1.0, 1.0, 20_003).astype(dtype)
    assert decode_frame(frame({"w": values}), copy=False).tensors["w"].flags.aligned is aligned
    # Finite values whose squares overflow (x @ x is inf) are still finite.
    huge = np.full(20_000, np.finfo(dtype).max, dtype)
    np.testing.assert_array_equal(decode_frame(frame({"w": huge})).tensors["w"], huge)
    for bad in (np.nan, np.inf, -np.inf):
        for at in (0, 10_001, 20_002):
            spoilt = values.copy()
            spoilt[at] = bad
            with pytest.raises(NonFiniteTensorError, match="'w'"):
                decode_frame(frame({"w": spoilt}))
        with pytest.raises(NonFiniteTensorError, match="'w'"):
            decode_frame(frame({"w": np.concatenate([huge, [bad]]).astype(dtype)}))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 40_000), scale=st.sampled_from([1e-3, 1.0, 1e6, 1e18, 3e38]),
       seed=st.integers(0, 2**16))
def test_magnitudes_bound_every_float_entry(size: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(size) * scale).clip(-3e38, 3e38).astype(np.float32)
    frame = decode_frame(encode_frame(_header(), {"w": values, "n": np.arange(3, dtype=np.int64)}))
    assert frame.magnitudes is not None and set(frame.magnitudes) == {"w"}  # floats only
    bound = frame.magnitudes["w"]
    assert bound >= float(np.abs(values).max())
    with np.errstate(over="ignore"):
        squares = np.dot(values, values)
    if size < 16_384 or not np.isfinite(squares):
        assert bound == np.inf  # not measured (isfinite pass) or the squares overflowed
    else:
        assert bound <= 2.0 * float(np.linalg.norm(values.astype(np.float64))) * 1.001


def test_non_finite_error_is_a_frame_error() -> None:
    assert issubclass(NonFiniteTensorError, FrameError)
    assert issubclass(FrameTooLargeError, FrameError)
    assert issubclass(FrameError, ProtocolError)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00" * 8,
        b"\xff" * 64,
        struct.pack("<Q", 2) + b"{}" + b"trailing",
        _st_body("F32", [3], b"\x00" * 8),  # data shorter than the shape says
        _st_body("F32", [2], b"\x00" * 12),  # data not fully covered
        _st_body("NOPE", [2], b"\x00" * 8),
    ],
    ids=["empty", "zero-len", "ff", "trailing", "short-data", "extra-data", "unknown-dtype"],
)
def test_garbage_safetensors_body(body: bytes) -> None:
    with pytest.raises(FrameError, match="invalid safetensors body"):
        decode_frame(_raw_frame(HEADER_JSON, body))


@pytest.mark.parametrize(
    ("st_dtype", "itemsize"),
    [("BOOL", 1), ("U16", 2), ("U32", 4), ("U64", 8), ("C64", 8)],
)
def test_body_with_dtype_outside_the_allowed_set(st_dtype: str, itemsize: int) -> None:
    data = _raw_frame(HEADER_JSON, _st_body(st_dtype, [2], b"\x00" * (2 * itemsize)))
    with pytest.raises(FrameError, match="unsupported dtype"):
        decode_frame(data)


@pytest.mark.parametrize("st_dtype", ["BF16", "F8_E4M3", "F8_E5M2"])
def test_body_with_dtype_numpy_cannot_represent(st_dtype: str) -> None:
    itemsize = 2 if st_dtype == "BF16" else 1
    data = _raw_frame(HEADER_JSON, _st_body(st_dtype, [2], b"\x00" * (2 * itemsize)))
    with pytest.raises(FrameError):
        decode_frame(data)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, np.complex64),
        np.zeros(2, np.bool_),
        np.zeros(2, np.uint16),
        np.zeros(2, np.uint64),
        np.zeros(2, ">f4"),  # big-endian float32 is not the wire dtype
        np.array(["a"]),
    ],
    ids=["complex64", "bool", "uint16", "uint64", "big-endian-f4", "str"],
)
def test_encode_refuses_unsupported_dtype(array: np.ndarray) -> None:
    with pytest.raises(FrameError, match="unsupported dtype"):
        encode_frame(_header(), {"t": array})


def test_no_pickle_path() -> None:
    array = np.arange(6, dtype=np.float32)
    for body in (pickle.dumps(array), pickle.dumps({"w": array})):
        with pytest.raises(FrameError, match="invalid safetensors body"):
            decode_frame(_raw_frame(HEADER_JSON, body))
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FrameError, match="invalid safetensors body"):
        decode_frame(_raw_frame(HEADER_JSON, buf.getvalue()))
    # A pickled header is not JSON either.
    with pytest.raises(FrameError, match="invalid frame header"):
        decode_frame(_raw_frame(pickle.dumps(_header_dict()), VALID_BODY))


# Fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_frame_error(data: bytes) -> None:
    try:
        frame = decode_frame(data, max_bytes=1 << 16)
    except FrameError:
        return
    # If it decoded, it must satisfy every invariant the decoder promises.
    for array in frame.tensors.values():
        assert array.dtype in ALLOWED_DTYPES
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_or_frame_error(data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_bytes_after_a_valid_prefix(rest: bytes) -> None:
    _decode_or_frame_error(b"FEDG\x01\x00" + rest)


@FUZZ
@given(st.binary(max_size=256), st.binary(max_size=256))
def test_fuzz_valid_header_arbitrary_body(body: bytes, extra: bytes) -> None:
    _decode_or_frame_error(_raw_frame(HEADER_JSON, body + extra))


_FUZZ_BASE = encode_frame(
    _header(),
    {
        "w": np.array([[1.0, -2.0], [3.5, 4.0]], np.float32),
        "h": np.array([1.0, 2.0], np.float16),
        "i": np.array([7], np.int64),
        "b": np.array([1, 2, 3], np.uint8),
    },
)


@FUZZ
@given(st.data())
def test_fuzz_single_byte_mutation(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(_FUZZ_BASE) - 1), label="pos")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != _FUZZ_BASE[pos]), label="value")
    mutated = bytearray(_FUZZ_BASE)
    mutated[pos] = value
    _decode_or_frame_error(bytes(mutated))


@FUZZ
@given(st.integers(0, len(_FUZZ_BASE) - 1))
def test_fuzz_truncation(cut: int) -> None:
    # Any proper prefix of a valid frame is missing bytes the frame needs.
    with pytest.raises(FrameError):
        decode_frame(_FUZZ_BASE[:cut])


@FUZZ
@given(st.binary(min_size=1, max_size=64))
def test_fuzz_appended_bytes(extra: bytes) -> None:
    _decode_or_frame_error(_FUZZ_BASE + extra)


def test_fuzz_base_is_valid() -> None:
    frame = decode_frame(_FUZZ_BASE)
    np.testing.assert_array_equal(frame.tensors["w"], [[1.0, -2.0], [3.5, 4.0]])
    assert frame.tensors["h"].dtype == np.float16
