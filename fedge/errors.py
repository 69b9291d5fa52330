"""The fedge exception tree.

Everything fedge raises on purpose derives from :class:`FedgeError`. Errors from
paho-mqtt, InfluxDB, SQLite and the operating system are translated at the
boundary (``raise ... from exc``) so callers only ever catch fedge types.

::

    FedgeError
    ├── ConfigError                 bad config file / env / CLI values
    ├── ProtocolError               anything wrong with bytes or topics from the wire
    │   ├── TopicError
    │   ├── MessageError            a JSON message that fails its schema
    │   └── FrameError              a binary model frame that cannot be decoded
    │       ├── FrameTooLargeError      (also: a body that would decompress past the limit)
    │       ├── NonFiniteTensorError
    │       ├── CompressionError        a compressed body / update encoding that is invalid
    │       └── ChunkError              a frame chunk that cannot be parsed or reassembled
    ├── UpdateRejectedError         a well-formed update that must not be aggregated
    ├── TransportError              broker connection / publish failures
    ├── StorageError                SQLite store, checkpoints, spool files
    ├── SinkError                   time-series database writes
    └── DataError                   datasets and sensor sources
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ChunkError",
    "CompressionError",
    "ConfigError",
    "DataError",
    "FedgeError",
    "FrameError",
    "FrameTooLargeError",
    "MessageError",
    "NonFiniteTensorError",
    "ProtocolError",
    "RejectReason",
    "SinkError",
    "StorageError",
    "TopicError",
    "TransportError",
    "UpdateRejectedError",
]


class FedgeError(Exception):
    """Root of every error fedge raises on purpose."""


class ConfigError(FedgeError):
    """A configuration file, environment variable or option is invalid."""


class ProtocolError(FedgeError):
    """Bytes or a topic received from the network violate wire protocol v1."""


class TopicError(ProtocolError):
    """A topic string is not a valid fedge v1 topic, or a segment is invalid."""


class MessageError(ProtocolError):
    """A JSON message does not match its schema."""


class FrameError(ProtocolError):
    """A binary model frame is malformed (magic, version, header or body)."""


class FrameTooLargeError(FrameError):
    """A frame is larger than the configured limit; it was not parsed."""


class NonFiniteTensorError(FrameError):
    """A tensor in a frame contains NaN or infinity."""


class CompressionError(FrameError):
    """A zstd body or a compressed update encoding is malformed or inconsistent."""


class ChunkError(FrameError):
    """A frame chunk is malformed or does not fit its transfer; ``reason`` says how."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class RejectReason(StrEnum):
    """Why an otherwise decodable update was not aggregated (counted per reason)."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    NON_FINITE = "non_finite"
    UNKNOWN_DEVICE = "unknown_device"
    WRONG_FLEET = "wrong_fleet"
    WRONG_ROUND = "wrong_round"
    STALE_BASE = "stale_base"
    REPLAY = "replay"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    MISSING_TENSOR = "missing_tensor"
    UNEXPECTED_TENSOR = "unexpected_tensor"
    BAD_EXAMPLES = "bad_examples"
    NORM_TOO_LARGE = "norm_too_large"
    TOPIC_MISMATCH = "topic_mismatch"
    CODEC_MISMATCH = "codec_mismatch"
    """The frame's codec is not the one the round announced."""
    # Chunked frames (fedge.chunking): why a chunk or a whole transfer was dropped.
    CHUNK_MALFORMED = "chunk_malformed"
    CHUNK_INCONSISTENT = "chunk_inconsistent"
    CHUNK_DUPLICATE = "chunk_duplicate"
    CHUNK_TOO_LARGE = "chunk_too_large"
    CHUNK_CAPACITY = "chunk_capacity"
    CHUNK_INCOMPLETE = "chunk_incomplete"
    CHUNK_DIGEST = "chunk_digest"


class UpdateRejectedError(FedgeError):
    """A model update was refused by validation; ``reason`` says why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(FedgeError):
    """The MQTT transport failed to connect, subscribe or publish."""


class StorageError(FedgeError):
    """A local store (SQLite, checkpoint, spool) failed."""


class SinkError(FedgeError):
    """Writing to a time-series sink (InfluxDB, SQLite) failed."""


class DataError(FedgeError):
    """A dataset file or sensor source is missing or malformed."""
