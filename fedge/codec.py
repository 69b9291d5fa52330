"""Binary model frames (pure functions over bytes and numpy arrays).

Layout of a v1 frame, all integers big-endian::

    offset  size  field
    0       4     magic  b"FEDG"
    4       1     frame format version (1)
    5       1     flags (reserved, must be 0)
    6       4     header length H (uint32)
    10      H     header: UTF-8 JSON, validated by :class:`FrameHeader`
    10+H    ...   body: safetensors bytes (tensor name -> array)

Decoding never unpickles: the header is JSON through pydantic, the body is parsed
by safetensors, which only ever yields plain arrays. Sizes are checked before any
parsing, and float tensors must be finite.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedge.errors import FrameError, FrameTooLargeError, NonFiniteTensorError
from fedge.messages import Identifier, NonNegInt, Timestamp, WireModel
from fedge.spec import ModelSpec

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_MAX_FRAME_BYTES",
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "MAX_HEADER_BYTES",
    "Frame",
    "FrameHeader",
    "FrameKind",
    "Tensors",
    "contiguous",
    "decode_frame",
    "encode_frame",
]

FRAME_MAGIC = b"FEDG"
FRAME_VERSION = 1
_PREFIX = struct.Struct(">4sBBI")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
ALLOWED_DTYPES = frozenset(
    np.dtype(t)
    for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
)

Tensors = dict[str, np.ndarray]
FrameKind = Literal["update", "global", "evaluation", "stats", "decline"]


class FrameHeader(WireModel):
    """The JSON header of a model frame."""

    kind: FrameKind
    fleet: Identifier
    device: Identifier | None = None
    round_id: NonNegInt
    base_version: NonNegInt
    version: NonNegInt | None = None
    num_examples: NonNegInt = 0
    metrics: dict[Annotated[str, Field(max_length=64)], float] = Field(
        default_factory=dict, max_length=64
    )
    codec: Literal["safetensors"] = "safetensors"
    model: ModelSpec | None = None
    created_at: Timestamp = Field(default_factory=time.time)
    signature: Annotated[str, Field(max_length=512)] | None = None
    # A "decline" frame (empty body) says why a device cannot answer the round: a
    # RejectReason value (e.g. "missing_feature") and a sentence for the operator.
    reason: Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")] | None = None
    detail: Annotated[str, Field(max_length=300)] | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: validated header plus named tensors."""

    header: FrameHeader
    tensors: Tensors


def contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous copy if needed; keeps 0-d shapes (np.ascontiguousarray makes them 1-d)."""
    arr = np.asarray(array)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def encode_frame(header: FrameHeader, tensors: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a header and tensors into one v1 frame."""
    for name, array in tensors.items():
        if np.dtype(array.dtype) not in ALLOWED_DTYPES:
            raise FrameError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    header_bytes = header.model_dump_json(exclude_none=True).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    # safetensors wants C-contiguous arrays; ascontiguousarray is a no-op when they are.
    body = st_save({k: contiguous(v) for k, v in tensors.items()})
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, 0, len(header_bytes)) + header_bytes + body


def decode_frame(data: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Decode an untrusted v1 frame.

    Raises FrameTooLargeError before looking at the bytes if ``data`` is over
    ``max_bytes``; FrameError for anything malformed; NonFiniteTensorError if a
    float tensor holds NaN or infinity.
    """
    size = len(data)
    if size > max_bytes:
        raise FrameTooLargeError(f"frame of {size} bytes exceeds limit {max_bytes}")
    if size < _PREFIX.size:
        raise FrameError(f"truncated frame: {size} bytes, prefix needs {_PREFIX.size}")
    magic, version, flags, header_len = _PREFIX.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise FrameError(f"bad magic {magic!r}, expected {FRAME_MAGIC!r}")
    if version != FRAME_VERSION:
        raise FrameError(f"unsupported frame version {version}")
    if flags != 0:
        raise FrameError(f"unknown frame flags 0x{flags:02x}")
    if header_len > MAX_HEADER_BYTES:
        raise FrameError(f"header length {header_len} exceeds {MAX_HEADER_BYTES}")
    body_start = _PREFIX.size + header_len
    if body_start > size:
        raise FrameError(f"truncated frame: header needs {header_len} bytes")
    try:
        header = FrameHeader.model_validate_json(data[_PREFIX.size : body_start])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise FrameError(f"invalid frame header: {where}: {first['msg']}") from exc
    try:
        tensors = st_load(bytes(data[body_start:]))
    except (SafetensorError, ValueError, TypeError, KeyError) as exc:
        # KeyError: safetensors.numpy has no numpy dtype for BF16/F8 tensors.
        raise FrameError(f"invalid safetensors body: {exc!r}") from exc
    for name, array in tensors.items():
        if array.dtype not in ALLOWED_DTYPES:
            raise FrameError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise NonFiniteTensorError(f"tensor {name!r} contains NaN or infinity")
    return Frame(header=header, tensors=tensors)
