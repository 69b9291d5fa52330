"""The edge agent's counters (``EdgeAgent.stats``): what an operator or a test reads."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AgentStats"]


@dataclass
class AgentStats:
    """Counters an operator (or a test) can read."""

    readings: int = 0
    telemetry_batches: int = 0
    telemetry_acked: int = 0
    telemetry_resent: int = 0
    """Readings sent again because ingest had not confirmed them (telemetry_confirm)."""
    stored_acks: int = 0
    """Stored-up-to acks from ingest that moved the watermark (refused ones: ``refused``)."""
    predictions: int = 0
    rounds_answered: int = 0
    update_chunks_sent: int = 0
    """Chunk messages of updates too large for the round's ``max_message_bytes``."""
    models_received: int = 0
    rejected_messages: int = 0
    """Inbound messages refused, for any reason but ``version_repeat``."""
    refused: dict[str, int] = field(default_factory=dict)
    """Inbound messages refused per reason: signature failures (``unsigned``,
    ``bad_signature``, ...), malformed bytes, refused announcements and models
    (:class:`~fedge.errors.RefusalReason`), and ``internal_error`` for anything a
    message made go wrong that no check anticipated."""
    models_refused: int = 0
    declined_rounds: int = 0
    connect_failures: int = 0
    last_error: str | None = None
    answered_rounds: list[int] = field(default_factory=list)
