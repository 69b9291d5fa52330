"""Zero-copy reader of a safetensors buffer (numpy arrays that view the buffer).

The safetensors package only takes ``bytes`` and copies every tensor out of it, so
decoding a frame with it costs a copy of the body slice plus a copy per tensor.
This reader applies the same rules as the reference implementation (8-byte
little-endian header length, a JSON header, tensors laid back to back from offset
0 to the end of the buffer, sizes matching dtype and shape) and returns arrays
that point into the buffer. Writing stays with the safetensors package; the wire
tests check this reader against it on valid and corrupted buffers.
"""

from __future__ import annotations

import math
import struct
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fedge.errors import FrameError

__all__ = ["MAX_BODY_HEADER_BYTES", "SAFETENSORS_DTYPES", "load_view"]

MAX_BODY_HEADER_BYTES = 1 << 20
"""Largest safetensors JSON header accepted (~15,000 tensors)."""

SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
}
"""The safetensors dtypes fedge frames may carry, as numpy dtypes."""

# Valid safetensors dtypes that fedge refuses (so the error says "unsupported", not "invalid").
_KNOWN_OTHER = frozenset(
    {"BOOL", "U16", "U32", "U64", "BF16", "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E4M3",
     "F8_E5M2", "F8_E8M0"}
)
_LEN = struct.Struct("<Q")


class _Entry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    dtype: Annotated[str, Field(max_length=16)]
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=64)]
    data_offsets: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


_HEADER = TypeAdapter(dict[str, Any])
_METADATA = TypeAdapter(dict[str, str], config=ConfigDict(strict=True))


def _invalid(detail: str) -> FrameError:
    return FrameError(f"invalid safetensors body: {detail}")


def load_view(buffer: memoryview) -> dict[str, np.ndarray]:
    """Parse ``buffer`` as safetensors; arrays view it (read-only if it is).

    Raises FrameError ("invalid safetensors body: ...") for any structural problem
    and ("... unsupported dtype ...") for a valid dtype outside
    :data:`SAFETENSORS_DTYPES`.
    """
    size = buffer.nbytes
    if size < _LEN.size:
        raise _invalid(f"{size} bytes, the header length needs 8")
    (header_len,) = _LEN.unpack_from(buffer)
    if header_len > MAX_BODY_HEADER_BYTES:
        raise _invalid(f"header length {header_len} exceeds {MAX_BODY_HEADER_BYTES}")
    data_start = _LEN.size + header_len
    if data_start > size:
        raise _invalid(f"header length {header_len} runs past the {size}-byte body")
    raw = buffer[_LEN.size : data_start]
    if header_len == 0 or raw[0] != ord("{"):
        raise _invalid("header does not start with '{'")
    try:
        header = _HEADER.validate_json(bytes(raw))
        entries = {
            name: _Entry.model_validate(value)
            for name, value in header.items()
            if name != "__metadata__"
        }
        if "__metadata__" in header:
            _METADATA.validate_python(header["__metadata__"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])[:80] or "<root>"
        raise _invalid(f"header {where}: {first['msg']}") from exc

    for name, entry in entries.items():
        if entry.dtype not in SAFETENSORS_DTYPES and entry.dtype not in _KNOWN_OTHER:
            raise _invalid(f"tensor {name[:64]!r} has unknown dtype {entry.dtype[:16]!r}")
    data_len = size - data_start
    position = 0
    # Tensors must tile the data section exactly: sorted by offset, no gap, no overlap.
    for name, entry in sorted(entries.items(), key=lambda item: tuple(item[1].data_offsets)):
        begin, end = entry.data_offsets
        if begin != position or end < begin:
            raise _invalid(f"tensor {name[:64]!r} has offsets {tuple(entry.data_offsets)}, "
                           f"expected to start at {position}")
        if entry.dtype in SAFETENSORS_DTYPES:
            expected = math.prod(entry.shape) * SAFETENSORS_DTYPES[entry.dtype].itemsize
            if end - begin != expected:
                raise _invalid(f"tensor {name[:64]!r} spans {end - begin} bytes, its dtype and "
                               f"shape need {expected}")
        position = end
    if position != data_len:
        raise _invalid(f"tensors cover {position} of {data_len} data bytes")

    tensors: dict[str, np.ndarray] = {}
    for name, entry in entries.items():
        dtype = SAFETENSORS_DTYPES.get(entry.dtype)
        if dtype is None:
            raise FrameError(f"tensor {name[:64]!r} has unsupported dtype {entry.dtype}")
        count = math.prod(entry.shape)
        begin = data_start + entry.data_offsets[0]
        if count == 0:
            tensors[name] = np.zeros(entry.shape, dtype)
        else:
            flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=begin)
            tensors[name] = flat.reshape(entry.shape)
    return tensors
