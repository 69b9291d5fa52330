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
    │       ├── FrameTooLargeError
    │       └── NonFiniteTensorError
    ├── UpdateRejectedError         a well-formed update that must not be aggregated
    ├── TransportError              broker connection / publish failures
    ├── StorageError                SQLite store, checkpoints, spool files
    ├── SinkError                   time-series database writes
    └── DataError                   datasets and sensor sources
        ├── SensorError             a sensor snapshot refused; ``fault`` says why
        └── EventError              maintenance events that contradict each other or a life
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConfigError",
    "DataError",
    "EventError",
    "FedgeError",
    "FrameError",
    "FrameTooLargeError",
    "MessageError",
    "NonFiniteTensorError",
    "ProtocolError",
    "RejectReason",
    "SensorError",
    "SensorFault",
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


class EventError(DataError):
    """Maintenance events contradict each other, or a life cannot be labelled as asked."""
