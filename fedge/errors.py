"""The fedge exception tree.

Everything fedge raises on purpose derives from :class:`FedgeError`. Errors from
paho-mqtt, InfluxDB, SQLite and the operating system are translated at the
boundary (``raise ... from exc``) so callers only ever catch fedge types.

Rejections carry their reason as data: every :class:`ProtocolError` class has a
``reason`` class attribute and every :class:`UpdateRejectedError` a ``reason``
instance attribute, both a :class:`RejectReason`, so a receiver writes
``except (ProtocolError, UpdateRejectedError) as exc: count(exc.reason)``.

::

    FedgeError
    ├── ConfigError                 bad config file / env / CLI values
    ├── ProtocolError               anything wrong with bytes or topics from the wire
    │   ├── TopicError                  reason MALFORMED
    │   ├── MessageError                reason MALFORMED (a JSON message that fails its schema)
    │   └── FrameError                  reason MALFORMED (a binary frame that cannot be decoded)
    │       ├── FrameTooLargeError      reason TOO_LARGE (also a body that would inflate past it)
    │       ├── NonFiniteTensorError    reason NON_FINITE
    │       ├── CompressionError        reason MALFORMED (invalid compressed body / encoding)
    │       └── ChunkError              reason per instance (chunk_*: a chunk set that fails)
    │   └── SignatureError              reason per instance: unsigned, forged, replayed, stale
    ├── RefusedError                an announcement, global model or stored ack an agent
    │                               will not act on
    ├── UpdateRejectedError         a well-formed update that must not be aggregated;
    │                               its reason is per instance
    ├── IngestRejectedError         a telemetry/status/... message that is not ingested
    ├── TransportError              broker connection / publish failures
    ├── StorageError                SQLite store, checkpoints, spool files
    ├── SinkError                   time-series database writes
    └── DataError                   datasets and sensor sources
        ├── FeatureSchemaError      a device lacks the fleet model's features
        ├── NoDataError             a device has nothing to answer a round with (no_data)
        ├── SensorError             a sensor snapshot refused; ``fault`` says why
        └── EventError              maintenance events that contradict each other or a life
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ChunkError",
    "CompressionError",
    "ConfigError",
    "DataError",
    "EventError",
    "FeatureSchemaError",
    "FedgeError",
    "FrameError",
    "FrameTooLargeError",
    "IngestReject",
    "IngestRejectedError",
    "MessageError",
    "NoDataError",
    "NonFiniteTensorError",
    "ProtocolError",
    "RefusalReason",
    "RefusedError",
    "RejectReason",
    "SensorError",
    "SensorFault",
    "SignatureError",
    "SinkError",
    "StorageError",
    "TopicError",
    "TransportError",
    "UpdateRejectedError",
]


class RejectReason(StrEnum):
    """Why a message or update from the fleet was refused (counted per reason)."""

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
    MISSING_FEATURE = "missing_feature"
    NON_NUMERIC_FEATURE = "non_numeric_feature"
    NO_DATA = "no_data"
    """The device has no data for the round's task (no life that ended in failure yet)."""
    CODEC_MISMATCH = "codec_mismatch"
    """The frame's codec is not the one the round announced."""
    LATE = "late"
    """A reply to a round that already closed (a straggler); dropped."""
    NOT_SELECTED = "not_selected"
    """A reply from a device the round's announcement did not select; dropped."""
    BUSY = "busy"
    """A device declined a round: its CPU stayed above its limit until the deadline."""
    # Chunked frames (fedge.chunking): why a chunk or a whole transfer was dropped.
    CHUNK_MALFORMED = "chunk_malformed"
    CHUNK_INCONSISTENT = "chunk_inconsistent"
    CHUNK_DUPLICATE = "chunk_duplicate"
    CHUNK_TOO_LARGE = "chunk_too_large"
    CHUNK_CAPACITY = "chunk_capacity"
    CHUNK_INCOMPLETE = "chunk_incomplete"
    CHUNK_DIGEST = "chunk_digest"
    # Authentication (fedge.signing): why a frame or message failed verification.
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED = "unsigned"
    WRONG_SIGNER = "wrong_signer"
    STALE = "stale"
    CLOCK_SKEW = "clock_skew"
    # Why a device declines a round (a "decline" frame's reason), besides the features.
    MODEL_REFUSED = "model_refused"
    """The device refused the round's base model (it keeps its last good model)."""
    TRAIN_TIMEOUT = "train_timeout"
    """Local training ran past the device's time budget for the round."""


class FedgeError(Exception):
    """Root of every error fedge raises on purpose."""


class ConfigError(FedgeError):
    """A configuration file, environment variable or option is invalid."""


class ProtocolError(FedgeError):
    """Bytes or a topic received from the network violate wire protocol v1.

    ``reason`` is the :class:`RejectReason` a receiver counts the refused message under;
    each subclass sets its own, so a receiver catches ``ProtocolError`` once and reads
    the reason instead of mapping exception types to reasons itself.
    """

    reason: RejectReason = RejectReason.MALFORMED


class TopicError(ProtocolError):
    """A topic string is not a valid fedge v1 topic, or a segment is invalid."""

    reason: RejectReason = RejectReason.MALFORMED


class MessageError(ProtocolError):
    """A JSON message does not match its schema."""

    reason: RejectReason = RejectReason.MALFORMED


class FrameError(ProtocolError):
    """A binary model frame is malformed (magic, version, header or body)."""

    reason: RejectReason = RejectReason.MALFORMED


class FrameTooLargeError(FrameError):
    """A frame is larger than the configured limit; it was not parsed."""

    reason: RejectReason = RejectReason.TOO_LARGE


class NonFiniteTensorError(FrameError):
    """A tensor in a frame contains NaN or infinity."""

    reason: RejectReason = RejectReason.NON_FINITE


class CompressionError(FrameError):
    """A zstd body or a compressed update encoding is malformed or inconsistent."""

    reason: RejectReason = RejectReason.MALFORMED


class ChunkError(FrameError):
    """A frame chunk is malformed or does not fit its transfer; ``reason`` says how."""

    reason: RejectReason = RejectReason.CHUNK_MALFORMED

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class UpdateRejectedError(FedgeError):
    """A well-formed update was refused (validation, aggregation); ``reason`` says why.

    Unlike :class:`ProtocolError`, whose reason is fixed per class, the reason here is
    per instance: one check can refuse an update for several reasons.
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class IngestReject(StrEnum):
    """Why an ingested message (or a single reading) was not written (counted per reason).

    All but the last three are decided by the pure rules (:mod:`fedge.ingest_rules`)
    from the message alone; the last three by the ingest service's I/O loop. The
    signature reasons (``unsigned`` ... ``clock_skew``) are those of
    :class:`RejectReason` for a message that failed verification.
    """

    BAD_TOPIC = "bad_topic"
    UNEXPECTED_TOPIC = "unexpected_topic"
    TOO_LARGE = "too_large"
    MALFORMED_JSON = "malformed_json"
    INVALID_SCHEMA = "invalid_schema"
    WRONG_FLEET = "wrong_fleet"
    TOPIC_MISMATCH = "topic_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    WRONG_SIGNER = "wrong_signer"
    REPLAY = "replay"
    STALE = "stale"
    CLOCK_SKEW = "clock_skew"
    QUEUE_FULL = "queue_full"
    SINK_REFUSED = "sink_refused"
    INTERNAL = "internal"


class IngestRejectedError(FedgeError):
    """A message was refused by the ingest rules; ``reason`` says why, ``detail`` for logs."""

    def __init__(self, reason: IngestReject, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class SignatureError(ProtocolError):
    """A frame or message failed authentication; ``reason`` says why.

    Reasons: ``UNSIGNED``, ``MALFORMED`` (the signature carrier itself is broken),
    ``TOO_LARGE``, ``UNKNOWN_DEVICE``, ``WRONG_SIGNER``, ``BAD_SIGNATURE``, ``REPLAY``
    (a nonce seen before), ``STALE`` (older than the freshness window) and
    ``CLOCK_SKEW`` (too far in the future).
    """

    reason: RejectReason = RejectReason.BAD_SIGNATURE

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class RefusalReason(StrEnum):
    """Why an agent refused a round announcement, a global model or a stored-up-to ack
    (counted per reason)."""

    # Round announcements.
    TASK_NOT_ALLOWED = "task_not_allowed"
    EXPIRED = "expired"
    ISSUED_IN_FUTURE = "issued_in_future"
    BAD_DEADLINE = "bad_deadline"
    TOO_FEW_EXAMPLES = "too_few_examples"
    # Global models.
    MISSING_NORMALISATION = "missing_normalisation"
    BAD_NORMALISATION = "bad_normalisation"
    NON_FINITE = "non_finite"
    STD_OUT_OF_RANGE = "std_out_of_range"
    MEAN_OUT_OF_RANGE = "mean_out_of_range"
    WEIGHT_OUT_OF_RANGE = "weight_out_of_range"
    VERSION_ROLLBACK = "version_rollback"
    VERSION_REPEAT = "version_repeat"
    VERSION_JUMP = "version_jump"
    NON_FINITE_OUTPUT = "non_finite_output"
    """A smoke forward pass on a stored window gave NaN or infinity."""
    OUTPUT_OUT_OF_RANGE = "output_out_of_range"
    """A smoke forward pass predicted an absurd RUL (beyond any machine's life)."""
    WORSE_ON_HOLDOUT = "worse_on_holdout"
    """The model's RMSE on the device's held-out data exceeds the running model's by
    more than the acceptance margin."""
    # Stored-up-to acks from ingest (edge_agent.telemetry_confirm).
    STORED_ACK_MISMATCH = "stored_ack_mismatch"
    """An ack on the device's ``stored`` topic that names another fleet or device."""
    STORED_ACK_BACKWARDS = "stored_ack_backwards"
    """An ack behind the last one (a stale retained ack): it cannot un-confirm readings."""


class RefusedError(FedgeError):
    """A decodable announcement or global model the agent will not act on; ``reason`` says why."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
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


class SensorFault(StrEnum):
    """Why a sensor snapshot (e.g. an accelerometer capture) was refused (counted per fault)."""

    WRONG_SHAPE = "wrong_shape"
    NOT_NUMERIC = "not_numeric"
    TOO_FEW_SAMPLES = "too_few_samples"
    TOO_MANY_SAMPLES = "too_many_samples"
    OUT_OF_RANGE = "out_of_range"
    # The two faults of a dead or disconnected sensor rather than of a malformed payload.
    NON_FINITE = "non_finite"
    FLAT_LINE = "flat_line"


class SensorError(DataError):
    """A sensor snapshot was refused: ``fault`` says why, ``bad_samples`` how many were at fault.

    ``bad_samples`` is ``None`` when the fault is not about individual samples (a wrong
    shape, a snapshot of the wrong length).
    """

    def __init__(self, fault: SensorFault, detail: str, *, bad_samples: int | None = None) -> None:
        super().__init__(f"{fault.value}: {detail}")
        self.fault = fault
        self.detail = detail
        self.bad_samples = bad_samples

    @property
    def dead_sensor(self) -> bool:
        """True when the snapshot points at a broken sensor (NaN/Inf or a flat line)."""
        return self.fault in (SensorFault.NON_FINITE, SensorFault.FLAT_LINE)


class FeatureSchemaError(DataError):
    """A device cannot provide the fleet model's input features.

    ``reason`` is :attr:`RejectReason.MISSING_FEATURE` (no channel maps onto a feature,
    or the channel count differs from a positional model) or
    :attr:`RejectReason.NON_NUMERIC_FEATURE` (the channel never gives a number);
    ``features`` names the features at fault.
    """

    def __init__(self, reason: RejectReason, detail: str, *, features: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.features = features


class NoDataError(DataError):
    """A device has nothing to answer a round with: no life has ended in failure yet (no
    RUL labels), or none is held out for evaluation. The agent declines the round with
    ``reason`` :attr:`RejectReason.NO_DATA` instead of staying silent, so the round need
    not wait for it."""

    reason = RejectReason.NO_DATA

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class EventError(DataError):
    """Maintenance events contradict each other, or a life cannot be labelled as asked."""
