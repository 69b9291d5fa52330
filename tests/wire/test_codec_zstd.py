"""Frames with an update codec and a zstd body; the zero-copy body reader.

Companion of test_codec.py (which pins the v1 plain frame): exact bytes of a
compressed frame, every zstd rejection including decompression bombs, and the
safetensors reader checked against the safetensors package itself.
"""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedge.codec import FLAG_ZSTD, FrameHeader, decode_frame, encode_frame
from fedge.compression import UpdateCodec, compress_update, decompress_update
from fedge.errors import CompressionError, FrameError, FrameTooLargeError
from fedge.safetensors_view import load_view

CODEC = UpdateCodec(dtype="int8", delta=True, error_feedback=True, top_k=0.5, zstd_level=3)
CODEC_JSON = (
    b'{"dtype":"int8","granularity":"tensor","delta":true,"error_feedback":true,'
    b'"top_k":0.5,"stochastic_rounding":false,"zstd_level":3}'
)
HEADER_JSON = (
    b'{"kind":"update","fleet":"plant-7","device":"pump-03","round_id":12,'
    b'"base_version":3,"num_examples":10,"metrics":{},"codec":' + CODEC_JSON
    + b',"created_at":1700000000.0}'
)
B = np.array([0.254, -0.1], np.float32)
W = np.array([[1.27, -0.5, 0.123], [0.0, -1.0, 0.337]], np.float32)
ZEROS = {"w": np.zeros_like(W), "b": np.zeros_like(B)}


def _header(codec: UpdateCodec | str = CODEC) -> FrameHeader:
    return FrameHeader.model_validate(
        {"kind": "update", "fleet": "plant-7", "device": "pump-03", "round_id": 12,
         "base_version": 3, "num_examples": 10, "codec": codec, "created_at": 1_700_000_000.0}
    )


def _raw(header_json: bytes, body: bytes, *, flags: int = FLAG_ZSTD) -> bytes:
    return struct.pack(">4sBBI", b"FEDG", 1, flags, len(header_json)) + header_json + body


def _encoded() -> dict[str, np.ndarray]:
    return compress_update({"w": W, "b": B}, codec=CODEC, base=ZEROS).tensors


# Exact bytes -----------------------------------------------------------------------------------


def test_compressed_frame_prefix_header_and_body_are_exact() -> None:
    enc = _encoded()
    frame = encode_frame(_header(), enc)
    assert len(HEADER_JSON) == 280
    # Six spaces before the closing brace: 10 + 286 starts the body 8-byte aligned.
    assert frame[:10] == b"FEDG\x01\x01\x00\x00\x01\x1e"  # flags bit 0: zstd body
    assert frame[10 : 10 + 286] == HEADER_JSON[:-1] + b"      }"
    body = frame[10 + 286 :]
    assert body[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    params = zstandard.get_frame_parameters(body)
    plain = st_save(enc)
    assert params.content_size == len(plain)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().decompress(body) == plain
    # The plain body: safetensors JSON, then the data, widest dtype first: scales, values, mask.
    (meta_len,) = struct.unpack("<Q", plain[:8])
    assert json.loads(plain[8 : 8 + meta_len]) == {
        "scales": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "values": {"dtype": "I8", "shape": [4], "data_offsets": [8, 12]},
        "mask": {"dtype": "U8", "shape": [1], "data_offsets": [12, 13]},
    }
    assert plain[8 + meta_len :].hex() == "6f12033b0ad7233c" + "7f7fce9c" + "4d"


def test_compressed_frame_round_trip_decodes_to_the_update() -> None:
    frame = decode_frame(encode_frame(_header(), _encoded()))
    assert frame.header == _header()
    assert frame.codec == CODEC
    decoded = decompress_update(frame.tensors, frame.codec, template=ZEROS, base=ZEROS)
    # Sent: b[0] = 127 * 0.002 and w's top 3; the rest waits in the device's residual.
    np.testing.assert_allclose(decoded["b"], [0.254, 0.0], rtol=1e-6)
    np.testing.assert_allclose(decoded["w"], [[1.27, -0.5, 0], [0, -1.0, 0]], rtol=1e-6)


def test_codec_without_zstd_leaves_the_body_plain() -> None:
    codec = UpdateCodec(dtype="int8")
    enc = compress_update({"w": W, "b": B}, codec=codec).tensors
    frame = encode_frame(_header(codec), enc)
    assert frame[5] == 0
    header_len = int.from_bytes(frame[6:10], "big")
    assert frame[10 + header_len :] == st_save(enc)
    assert decode_frame(frame).codec == codec


def test_plain_weights_with_zstd() -> None:
    codec = UpdateCodec(zstd_level=19)
    tensors = {"w": np.zeros((64, 64), np.float32)}
    frame = encode_frame(_header(codec), tensors)
    assert len(frame) < 500  # 16 KiB of zeros
    np.testing.assert_array_equal(decode_frame(frame).tensors["w"], tensors["w"])


def test_header_and_flag_must_agree() -> None:
    enc = _encoded()
    compressed = encode_frame(_header(), enc)
    cleared = compressed[:5] + b"\x00" + compressed[6:]
    with pytest.raises(FrameError, match="flags say the body is not compressed"):
        decode_frame(cleared)
    plain = encode_frame(_header("safetensors"), {"w": W})
    with pytest.raises(FrameError, match="flags say the body is compressed"):
        decode_frame(plain[:5] + b"\x01" + plain[6:])


# Decompression limits ---------------------------------------------------------------------------


def test_zstandard_alone_would_allocate_a_declared_size_past_max_output_size() -> None:
    # Why decode_frame checks the declared size itself: max_output_size does not bound
    # a frame that declares its content size.
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\x00" * (8 << 20))
    out = zstandard.ZstdDecompressor().decompress(bomb, max_output_size=1 << 20)
    assert len(out) == 8 << 20


def test_decompression_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\x00" * (64 << 20))
    data = _raw(HEADER_JSON, bomb)
    assert len(data) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLargeError, match=r"decompress to 67108864 bytes, limit"):
            decode_frame(data, max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_decompressed_limit_is_inclusive_and_separate_from_the_wire_limit() -> None:
    enc = {"w": np.zeros(1000, np.float32)}
    codec = UpdateCodec(zstd_level=1)
    frame = encode_frame(_header(codec), enc)
    header_len = int.from_bytes(frame[6:10], "big")
    inflated = 10 + header_len + len(st_save(enc))
    assert len(frame) < inflated
    decode_frame(frame, max_bytes=inflated)
    with pytest.raises(FrameTooLargeError, match="decompress"):
        decode_frame(frame, max_bytes=inflated - 1)
    decode_frame(frame, max_bytes=len(frame), max_decompressed_bytes=inflated)
    with pytest.raises(FrameTooLargeError, match="decompress"):
        decode_frame(frame, max_bytes=inflated * 2, max_decompressed_bytes=inflated - 1)
    with pytest.raises(FrameTooLargeError, match="frame of"):
        decode_frame(frame, max_bytes=len(frame) - 1, max_decompressed_bytes=inflated)


def _zstd_plain_body() -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(st_save(_encoded()))


def _patch_content_size(frame: bytes, size: int) -> bytes:
    out = bytearray(frame)
    descriptor = out[4]
    assert descriptor >> 6 == 0 and descriptor & 0x20  # 1-byte size, single segment
    out[5] = size
    return bytes(out)


def _no_size_body() -> bytes:
    obj = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    return obj.compress(st_save(_encoded())) + obj.flush()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "invalid zstd body"),
        (b"not zstd at all", "invalid zstd body"),
        (b"\x28\xb5\x2f\xfd", "invalid zstd body"),
        (_zstd_plain_body()[:-3], "invalid zstd body"),
        (_zstd_plain_body() + b"junk", "invalid zstd body"),
        (_zstd_plain_body() * 2, "invalid zstd body"),
        (_patch_content_size(_zstd_plain_body(), 10), "invalid zstd body"),
        (_no_size_body(), "does not declare its decompressed size"),
        # A skippable frame declares nothing to decode.
        (b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"abcd", "invalid zstd body"),
    ],
    ids=["empty", "garbage", "magic-only", "truncated", "trailing", "two-frames",
         "lying-size", "no-size", "skippable"],
)
def test_bad_zstd_bodies(body: bytes, message: str) -> None:
    with pytest.raises(CompressionError, match=message):
        decode_frame(_raw(HEADER_JSON, body))


def test_zstd_of_a_non_safetensors_body() -> None:
    body = zstandard.ZstdCompressor().compress(b"\x00" * 64)
    with pytest.raises(FrameError, match="invalid safetensors body"):
        decode_frame(_raw(HEADER_JSON, body))


# Zero copy -------------------------------------------------------------------------------------


def test_copy_false_views_the_payload() -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int8)}
    frame = encode_frame(_header("safetensors"), tensors)
    view = decode_frame(frame, copy=False).tensors
    assert not view["a"].flags.writeable
    assert not view["a"].flags.owndata
    np.testing.assert_array_equal(view["a"], tensors["a"])
    mutable = bytearray(frame)
    shared = decode_frame(mutable, copy=False).tensors["a"]
    mutable[-len(tensors["b"]) - 4 : -len(tensors["b"])] = np.float32(42).tobytes()
    assert shared[1, 2] == 42.0  # no copy: the array is the payload's memory
    owned = decode_frame(frame).tensors["a"]
    assert owned.flags.writeable and owned.flags.owndata


def test_copy_false_allocates_nothing_the_size_of_the_body() -> None:
    tensors = {"w": np.zeros((1000, 1000), np.float32)}
    frame = encode_frame(_header("safetensors"), tensors)
    tracemalloc.start()
    try:
        decode_frame(frame, copy=False)
        _, view_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decode_frame(frame)
        _, copy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The finiteness check needs one byte per entry; a copy needs all four.
    assert view_peak < 1.2e6
    assert 4e6 <= copy_peak < 5.5e6


# The body reader against the safetensors package ------------------------------------------------

ST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DTYPES = st.sampled_from(["<f2", "<f4", "<f8", "i1", "<i2", "<i4", "<i8", "u1"])


@st.composite
def _tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text("abc._:", min_size=1, max_size=6), max_size=4, unique=True))
    return {
        name: draw(hnp.arrays(np.dtype(draw(_DTYPES)),
                              hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
        for name in names
    }


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        and a[k].tobytes() == b[k].tobytes() for k in a
    )


@ST
@given(_tensor_dicts())
def test_reader_matches_safetensors_on_valid_bodies(tensors: dict[str, np.ndarray]) -> None:
    body = st_save(tensors)
    assert _same(load_view(memoryview(body)), st_load(body))


def _reference(body: bytes) -> dict[str, np.ndarray] | None:
    try:
        return st_load(body)
    except Exception:  # the oracle's failure modes (SafetensorError, KeyError ...) vary
        return None


@ST
@given(_tensor_dicts(), st.data())
def test_reader_agrees_with_safetensors_on_corrupted_bodies(
    tensors: dict[str, np.ndarray], data: st.DataObject
) -> None:
    body = bytearray(st_save(tensors))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        pos = data.draw(st.integers(0, len(body) - 1), label="pos")
        body[pos] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        body = body[: data.draw(st.integers(0, len(body)), label="cut")]
    reference = _reference(bytes(body))
    try:
        mine = load_view(memoryview(bytes(body)))
    except FrameError:
        mine = None
    if mine is not None:
        # Anything the reader accepts, the reference accepts, with the same arrays.
        assert reference is not None
        assert _same(mine, reference)
    elif reference is not None:
        # The reader may only be stricter about dtypes fedge does not carry, or about
        # duplicate or odd header keys the reference tolerates.
        text = bytes(body[8 : 8 + int.from_bytes(body[:8], "little")])
        assert any(np.dtype(a.dtype).name not in {"float16", "float32", "float64", "int8",
                                                 "int16", "int32", "int64", "uint8"}
                   for a in reference.values()) or b"__metadata__" in text or text.count(
            b'"dtype"') != len(reference), text
