"""Binary model frames (pure functions over bytes and numpy arrays).

Layout of a v1 frame, all integers big-endian::

    offset  size  field
    0       4     magic  b"FEDG"
    4       1     frame format version (1)
    5       1     flags: bit 0 = body is zstd-compressed; bits 1-7 reserved, must be 0
    6       4     header length H (uint32)
    10      H     header: UTF-8 JSON, validated by :class:`FrameHeader`
    10+H    ...   body: safetensors bytes (tensor name -> array), or one zstd frame
                  holding them when flags bit 0 is set

Writers pad the header with spaces before its closing brace so that the body starts
at a multiple of :data:`BODY_ALIGNMENT` bytes (:func:`align_header`); safetensors
pads its own header to 8 bytes, so the tensors of a frame held in an aligned buffer
(a Python ``bytes``) are aligned too, and numpy reads them at full speed (unaligned
float32 arrays take a buffered path ~2x slower to check for NaN). Readers accept any
header length: the padding is JSON whitespace.

The header's ``codec`` is ``"safetensors"`` (plain float32 tensors, as in the first
v1 frames, which still decode byte for byte) or an
:class:`~fedge.compression.UpdateCodec` describing how the body encodes an update.
The body is compressed exactly when the codec has a ``zstd_level``; the flag bit
must agree, so the prefix alone tells a reader what follows.

Decoding never unpickles: the header is JSON through pydantic, the body is parsed
by :func:`fedge.safetensors_view.load_view`, which only ever yields plain arrays.
Sizes are checked before any parsing: the frame against ``max_bytes``, and a
compressed body's declared size against the decompressed limit before it is
inflated (a decompression bomb is refused without allocating it). Float tensors
must be finite.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import numpy as np
import zstandard
from pydantic import Field, ValidationError
from safetensors.numpy import save as st_save

from fedge.compression.scheme import CodecField, UpdateCodec, resolve_codec
from fedge.errors import CompressionError, FrameError, FrameTooLargeError, NonFiniteTensorError
from fedge.messages import Identifier, NonNegInt, Timestamp, WireModel
from fedge.safetensors_view import load_view
from fedge.spec import ModelSpec

__all__ = [
    "ALLOWED_DTYPES",
    "BODY_ALIGNMENT",
    "DEFAULT_MAX_FRAME_BYTES",
    "FLAG_ZSTD",
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "MAX_HEADER_BYTES",
    "Frame",
    "FrameHeader",
    "FrameKind",
    "Tensors",
    "align_header",
    "contiguous",
    "decode_frame",
    "decode_header",
    "encode_frame",
]

FRAME_MAGIC = b"FEDG"
FRAME_VERSION = 1
FLAG_ZSTD: Final = 0x01
_KNOWN_FLAGS: Final = FLAG_ZSTD
_PREFIX = struct.Struct(">4sBBI")
MAX_HEADER_BYTES = 64 * 1024
BODY_ALIGNMENT: Final = 8
_DOT_MIN: Final = 1 << 14  # measured crossover of x @ x vs isfinite(x).all()
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
    codec: CodecField = "safetensors"
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
    magnitudes: Mapping[str, float] | None = None
    """Per float tensor, an upper bound on the magnitude of its entries (its L2 norm,
    or infinity when unknown), where decoding computed one on the way (see
    :func:`decode_frame`); the aggregator's mean uses it to skip a pass."""

    @property
    def codec(self) -> UpdateCodec:
        """How the body encodes its tensors (``"safetensors"`` resolves to the default)."""
        return resolve_codec(self.header.codec)


def contiguous(array: np.ndarray) -> np.ndarray:
    """C-contiguous copy if needed; keeps 0-d shapes (np.ascontiguousarray makes them 1-d)."""
    arr = np.asarray(array)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def align_header(header: bytes, *, grows_by: int = 0) -> bytes:
    """``header`` (a JSON object) padded so that the body after it starts aligned.

    Spaces go before the closing brace (any already there are replaced), as many as
    make ``prefix + header`` a multiple of :data:`BODY_ALIGNMENT` bytes once the
    header has grown by ``grows_by`` more (a signature appended after its last key).
    """
    if not header.endswith(b"}"):
        raise ValueError("a frame header is a JSON object")
    core = header[:-1].rstrip(b" ")
    pad = -(_PREFIX.size + len(core) + 1 + grows_by) % BODY_ALIGNMENT
    return core + b" " * pad + b"}"


def _finite_bound(array: np.ndarray) -> float | None:
    """None if a float array holds NaN or infinity, else a bound on ``|entry|``.

    For aligned float32/float64 arrays, ``x @ x`` (one BLAS pass, no temporary) is
    NaN or infinite if any entry is, and is finite otherwise unless huge finite
    entries overflow it, which the exact ``isfinite`` pass then settles. Its square
    root, the L2 norm, bounds every entry; where it is not computed (below
    :data:`_DOT_MIN` entries ``isfinite`` is the cheaper pass) or overflows, the
    bound is infinity (unknown).
    """
    if array.size >= _DOT_MIN and array.dtype.itemsize >= 4 and array.flags.aligned:
        flat = array.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            squares = float(np.dot(flat, flat))
        if math.isfinite(squares):
            # A float32 sum of n squares can come out low by up to n * 2**-24 of
            # itself: doubling the root covers that for n up to 2**25 entries.
            return math.sqrt(squares) * 2.0
    return math.inf if bool(np.isfinite(array).all()) else None


def encode_frame(header: FrameHeader, tensors: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a header and tensors into one v1 frame (zstd body if the codec says so).

    The header is compact JSON padded to align the body (:func:`align_header`).
    """
    for name, array in tensors.items():
        if np.dtype(array.dtype) not in ALLOWED_DTYPES:
            raise FrameError(f"tensor {name!r} has unsupported dtype {array.dtype}")
    header_bytes = align_header(header.model_dump_json(exclude_none=True).encode())
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise FrameError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    # safetensors wants C-contiguous arrays; ascontiguousarray is a no-op when they are.
    body = st_save({k: contiguous(v) for k, v in tensors.items()})
    level = resolve_codec(header.codec).zstd_level
    flags = 0
    if level is not None:
        flags |= FLAG_ZSTD
        body = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True
        ).compress(body)
    return _PREFIX.pack(FRAME_MAGIC, FRAME_VERSION, flags, len(header_bytes)) + header_bytes + body


def _inflate(body: memoryview, limit: int) -> memoryview:
    """Decompress a zstd body whose declared size must be at most ``limit`` bytes."""
    try:
        params = zstandard.get_frame_parameters(body)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"invalid zstd body: {exc}") from exc
    size = params.content_size
    if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise CompressionError("zstd body does not declare its decompressed size")
    if size > limit:
        # Checked before decompress(): with a declared size, zstandard allocates it
        # whatever max_output_size says.
        raise FrameTooLargeError(f"body would decompress to {size} bytes, limit {limit}")
    if params.dict_id:
        raise CompressionError("zstd body needs a dictionary")
    # The window never needs to exceed the output (one-shot frames use the content size).
    window = 1 << max(10, (max(size, 1) - 1).bit_length())
    try:
        out = zstandard.ZstdDecompressor(max_window_size=window).decompress(
            body, max_output_size=max(size, 1), allow_extra_data=False
        )
    except (zstandard.ZstdError, ValueError) as exc:
        raise CompressionError(f"invalid zstd body: {exc}") from exc
    if len(out) != size:
        raise CompressionError(f"zstd body decompressed to {len(out)} bytes, declared {size}")
    return memoryview(out)


def _read_header(view: memoryview, *, max_bytes: int) -> tuple[int, FrameHeader, int]:
    """Check the prefix and validate the header: (flags, header, offset of the body)."""
    size = view.nbytes
    if size > max_bytes:
        raise FrameTooLargeError(f"frame of {size} bytes exceeds limit {max_bytes}")
    if size < _PREFIX.size:
        raise FrameError(f"truncated frame: {size} bytes, prefix needs {_PREFIX.size}")
    magic, version, flags, header_len = _PREFIX.unpack_from(view)
    if magic != FRAME_MAGIC:
        raise FrameError(f"bad magic {magic!r}, expected {FRAME_MAGIC!r}")
    if version != FRAME_VERSION:
        raise FrameError(f"unsupported frame version {version}")
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown frame flags 0x{flags:02x}")
    if header_len > MAX_HEADER_BYTES:
        raise FrameError(f"header length {header_len} exceeds {MAX_HEADER_BYTES}")
    body_start = _PREFIX.size + header_len
    if body_start > size:
        raise FrameError(f"truncated frame: header needs {header_len} bytes")
    try:
        header = FrameHeader.model_validate_json(bytes(view[_PREFIX.size : body_start]))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise FrameError(f"invalid frame header: {where}: {first['msg']}") from exc
    return flags, header, body_start


def decode_header(
    data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> FrameHeader:
    """The validated header of an untrusted v1 frame, its body left unread.

    For a reader that needs only who sent what (a monitor, a log); the same checks
    and errors as :func:`decode_frame` up to the header. Not a substitute for it
    before any tensor is used: the body is not even looked at.
    """
    return _read_header(memoryview(data).cast("B"), max_bytes=max_bytes)[1]


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_decompressed_bytes: int | None = None,
    copy: bool = True,
) -> Frame:
    """Decode an untrusted v1 frame.

    Raises FrameTooLargeError before looking at the bytes if ``data`` is over
    ``max_bytes``, and before inflating a zstd body if the frame would then exceed
    ``max_decompressed_bytes`` (default ``max_bytes``); CompressionError for a bad
    zstd body; FrameError for anything else malformed; NonFiniteTensorError if a
    float tensor holds NaN or infinity.

    ``copy=False`` returns arrays that view ``data`` (or the inflated body) without
    copying: read-only when ``data`` is ``bytes``. The default copies each tensor
    once into writable arrays of its own.
    """
    view = memoryview(data).cast("B")
    flags, header, body_start = _read_header(view, max_bytes=max_bytes)
    compressed = bool(flags & FLAG_ZSTD)
    if compressed != (resolve_codec(header.codec).zstd_level is not None):
        raise FrameError(
            f"flags say the body is {'' if compressed else 'not '}compressed, the header's "
            "codec says otherwise"
        )
    body = view[body_start:]
    if compressed:
        limit = max_bytes if max_decompressed_bytes is None else max_decompressed_bytes
        body = _inflate(body, max(0, limit - body_start))
    tensors = load_view(body)
    magnitudes: dict[str, float] = {}
    for name, array in tensors.items():
        if array.dtype not in ALLOWED_DTYPES:
            raise FrameError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        if array.dtype.kind == "f":
            bound = _finite_bound(array)
            if bound is None:
                raise NonFiniteTensorError(f"tensor {name!r} contains NaN or infinity")
            magnitudes[name] = bound
    if copy:
        tensors = {name: array.copy() for name, array in tensors.items()}
    return Frame(header=header, tensors=tensors, magnitudes=magnitudes)
