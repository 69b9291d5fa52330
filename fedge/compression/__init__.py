"""Update compression: float16, int8/int4 quantisation, deltas, top-k with error feedback.

Pure numpy, no I/O. A device calls :func:`compress_update` and puts the result's
tensors into the frame body, with the codec in ``FrameHeader.codec``; the
aggregator calls :func:`parse_update` (validation of untrusted input) and then
``accumulate_into`` its running float64 sums, or :func:`decompress_update`.

One module per concern: :mod:`.scheme` (the wire schema), :mod:`.layout` (where a
tensor sits in the flat body), :mod:`.quantize` (scalar codecs), :mod:`.encode`
and :mod:`.decode`.
"""

from fedge.compression.decode import (
    BLOCK,
    EncodedUpdate,
    accumulate_update,
    add_scaled,
    decompress_update,
    flat_blocks,
    parse_update,
)
from fedge.compression.encode import CompressedUpdate, compress_update
from fedge.compression.layout import kept_count
from fedge.compression.scheme import (
    LEGACY_CODEC,
    MAX_MAGNITUDE,
    CodecField,
    UpdateCodec,
    resolve_codec,
    wire_codec,
)

__all__ = [
    "BLOCK",
    "LEGACY_CODEC",
    "MAX_MAGNITUDE",
    "CodecField",
    "CompressedUpdate",
    "EncodedUpdate",
    "UpdateCodec",
    "accumulate_update",
    "add_scaled",
    "compress_update",
    "decompress_update",
    "flat_blocks",
    "kept_count",
    "parse_update",
    "resolve_codec",
    "wire_codec",
]
