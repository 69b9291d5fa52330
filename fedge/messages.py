"""JSON messages of wire protocol v1 (pydantic models at the trust boundary).

Model weights travel in binary frames (:mod:`fedge.codec`); everything else is a
small JSON document validated by one of the models here. Decoding checks the size
first, then the schema; NaN and infinity are refused everywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from fedge.compression.scheme import CodecField
from fedge.errors import MessageError
from fedge.spec import ModelSpec

__all__ = [
    "MAX_MESSAGE_BYTES",
    "DeviceStatus",
    "DpConfig",
    "Prediction",
    "Reading",
    "RoundAnnouncement",
    "RoundSummary",
    "RoundTask",
    "StoredAck",
    "TelemetryBatch",
    "TrainingConfig",
    "WireModel",
    "decode_message",
    "encode_message",
]

MAX_MESSAGE_BYTES = 1 << 20
"""Default upper bound for a JSON message; larger payloads are refused unparsed."""

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
SensorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
# Unix seconds between 2000-01-01 and 2100-01-01: anything else is a broken clock.
Timestamp = Annotated[float, Field(ge=946_684_800.0, le=4_102_444_800.0)]
NonNegInt = Annotated[int, Field(ge=0)]
RoundTask = Literal["train", "evaluate", "stats"]


class WireModel(BaseModel):
    """Base for every wire message: frozen, unknown fields refused, no NaN/Inf."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=False)


class DpConfig(WireModel):
    """Client-level differential privacy of a training round (see :mod:`fedge.privacy`).

    Each device clips its update's delta to ``clip_norm`` and adds Gaussian noise of
    std ``noise_multiplier * clip_norm / sqrt(expected_clients)`` per coordinate, so
    the sum over ``expected_clients`` updates carries noise of std
    ``noise_multiplier * clip_norm`` (distributed noise: the aggregator never holds it).
    """

    clip_norm: Annotated[float, Field(gt=0.0, le=1e6)]
    noise_multiplier: Annotated[float, Field(ge=0.0, le=1e4)]
    expected_clients: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class TrainingConfig(WireModel):
    """Local training settings the aggregator sends with each round."""

    epochs: Annotated[int, Field(ge=1, le=100)] = 1
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    proximal_mu: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    max_examples: Annotated[int, Field(ge=1)] | None = None
    dp: DpConfig | None = None


class RoundAnnouncement(WireModel):
    """Retained on ``rounds/current``: what the fleet should do now."""

    fleet: Identifier
    round_id: NonNegInt
    task: RoundTask = "train"
    base_version: NonNegInt
    issued_at: Timestamp
    deadline: Timestamp
    # The round's quorum: it succeeds with this many replies (a sampled round also
    # closes as soon as it has them; see ``selected``).
    min_clients: Annotated[int, Field(ge=1)]
    training: TrainingConfig = TrainingConfig()
    # How devices encode their updates this round: "safetensors" (plain float32, the
    # v1 value) or an UpdateCodec; fedge.compression.resolve_codec reads either.
    codec: CodecField = "safetensors"
    max_update_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    # Largest MQTT payload the broker takes (below its max_packet_size, less the topic):
    # a larger update frame travels as chunks (fedge.chunking). None: never chunk.
    max_message_bytes: Annotated[int, Field(ge=1024)] | None = None
    # The fleet's model: a stats round needs it before any global model exists, to
    # know which rows to summarise (ModelSpec.stats_features).
    model: ModelSpec | None = None
    # The devices asked to answer (a sampled, over-selected round), sorted; None means
    # every device. A device not listed skips the round; its reply would be dropped.
    selected: list[Identifier] | None = Field(default=None, max_length=10_000)


class DeviceStatus(WireModel):
    """Retained on ``devices/<device>/status``; the last will publishes ``state='offline'``."""

    fleet: Identifier
    device: Identifier
    state: Literal["online", "offline"]
    ts: Timestamp | None = None
    site: Identifier | None = None
    agent_version: str | None = Field(default=None, max_length=64)
    model_version: NonNegInt | None = None
    # Readings not yet acknowledged by the broker; with ingest's confirmations also
    # those the broker acknowledged that ingest has not confirmed stored, and how far
    # the confirmations go (the device's own seq).
    buffer_depth: NonNegInt | None = None
    buffer_unconfirmed: NonNegInt | None = None
    confirmed_through_seq: NonNegInt | None = None
    cpu_percent: Annotated[float, Field(ge=0.0, le=10_000.0)] | None = None
    memory_mb: Annotated[float, Field(ge=0.0)] | None = None
    # What stops this device from contributing, for the operator (e.g. "device pump-03
    # lacks feature bearing_temp"), and the state of its sensor source.
    last_error: Annotated[str, Field(max_length=300)] | None = None
    source_state: Annotated[str, Field(max_length=32)] | None = None
    # The newest global model the device refused (it keeps predicting with its last
    # good model) and why: a fedge.errors.RefusalReason value.
    refused_model_version: NonNegInt | None = None
    refused_reason: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,64}$")] | None = None


class Reading(WireModel):
    """One sample from one machine: device timestamp, per-device sequence number, sensors."""

    seq: NonNegInt
    ts: Timestamp
    cycle: NonNegInt | None = None
    values: dict[SensorName, float] = Field(max_length=256)


class TelemetryBatch(WireModel):
    """A batch of readings from one device, published on ``devices/<device>/telemetry``.

    ``unconfirmed_from_seq`` is what the device still owes ingest, as it knew it when
    it built the batch: the lowest seq of its readings that ingest has not confirmed
    stored yet (unsent or sent, not covered by a :class:`StoredAck`), with that
    reading's device time in ``unconfirmed_from_ts``. The device never sends a
    reading of this counter below it again, so ingest may start or move its
    stored-up-to watermark to just below it (:mod:`aggregator.stored_acks`), and only
    there. The batch's own readings are among those owed, so the seq is at most the
    lowest seq in the batch: a larger one contradicts the batch and is refused, as is
    one of the pair without the other. Agents from before the field leave both out.
    """

    fleet: Identifier
    device: Identifier
    site: Identifier | None = None
    unit: NonNegInt | None = None
    readings: list[Reading] = Field(min_length=1, max_length=10_000)
    unconfirmed_from_seq: NonNegInt | None = None
    unconfirmed_from_ts: Timestamp | None = None

    @model_validator(mode="after")
    def _owed_readings_include_the_batch(self) -> TelemetryBatch:
        seq, ts = self.unconfirmed_from_seq, self.unconfirmed_from_ts
        if (seq is None) != (ts is None):
            raise ValueError("unconfirmed_from_seq and unconfirmed_from_ts go together")
        if seq is not None and seq > (lowest := min(r.seq for r in self.readings)):
            raise ValueError(
                f"unconfirmed_from_seq {seq} is above the batch's lowest seq {lowest}"
            )
        return self


class StoredAck(WireModel):
    """Retained by ingest on ``devices/<device>/stored``: end-to-end confirmation.

    Every reading of ``device`` with ``seq <= through_seq`` is durably stored (or the
    device said it does not owe it: :attr:`TelemetryBatch.unconfirmed_from_seq`), so
    the agent may forget them; ``ts`` is when ingest said so. ``through_ts`` bounds
    the device times of those readings: it is the time of the reading at
    ``through_seq``, or of the one just above it when the watermark starts from the
    device's word. A reading the agent still holds with ``seq <= through_seq`` but a
    *later* ``ts`` than ``through_ts`` belongs to a restarted counter and is not covered.
    """

    fleet: Identifier
    device: Identifier
    through_seq: NonNegInt
    through_ts: Timestamp
    ts: Timestamp


class Prediction(WireModel):
    """A device's latest inference, published on ``devices/<device>/prediction``."""

    fleet: Identifier
    device: Identifier
    ts: Timestamp
    model_version: NonNegInt
    rul: Annotated[float, Field(ge=0.0)]
    failure_probability: Annotated[float, Field(ge=0.0, le=1.0)]
    horizon: Annotated[int, Field(ge=1)]
    alert: bool = False
    unit: NonNegInt | None = None
    cycle: NonNegInt | None = None
    # The health score of the current life (fedge.health: 1 = like its baseline, 0.5 =
    # alert threshold; None while the baseline is being learnt), and whether the health
    # monitor's alert is active, with the features that moved.
    health: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    anomaly: bool = False
    anomaly_reason: Annotated[str, Field(max_length=300)] | None = None


class RoundSummary(WireModel):
    """Published by the aggregator on ``rounds/summary`` when a round closes."""

    fleet: Identifier
    round_id: NonNegInt
    task: RoundTask
    ts: Timestamp
    outcome: Literal["completed", "failed"]
    version: NonNegInt
    participants: NonNegInt
    rejected: NonNegInt = 0
    rejected_by_reason: dict[Annotated[str, Field(max_length=64)], NonNegInt] = Field(
        default_factory=dict
    )
    num_examples: NonNegInt = 0
    train_loss: float | None = None
    val_error: float | None = None
    val_examples: NonNegInt = 0
    bytes_received: NonNegInt = 0
    duration_s: Annotated[float, Field(ge=0.0)] = 0.0
    # Server-side bounds (fedge.strategies.reducers.bounded): updates whose delta was
    # scaled down to the norm bound. None when no bound is configured.
    clipped: NonNegInt | None = None
    # Differential privacy (fedge.privacy): the cumulative (epsilon, delta) of the
    # published global model after this round, and epsilon against the aggregator
    # itself, which sees each device's update with only that device's share of noise.
    dp_epsilon: Annotated[float, Field(ge=0.0)] | None = None
    dp_delta: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    dp_epsilon_local: Annotated[float, Field(ge=0.0)] | None = None


M = TypeVar("M", bound=WireModel)


def encode_message(message: WireModel) -> bytes:
    """Serialise a wire message to compact UTF-8 JSON."""
    return message.model_dump_json(exclude_none=True).encode()


def decode_message(model: type[M], payload: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Parse ``payload`` as ``model``; size-checked before parsing. Raises MessageError."""
    if len(payload) > max_bytes:
        raise MessageError(
            f"{model.__name__} message of {len(payload)} bytes exceeds limit {max_bytes}"
        )
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        # Keep the reason short and single-line: it ends up in logs and counters.
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MessageError(
            f"invalid {model.__name__}: {where}: {first['msg']} ({exc.error_count()} error(s))"
        ) from exc
