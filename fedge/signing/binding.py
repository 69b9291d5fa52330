"""What binds a signature to its place: the context labels, the topic, the expected signer."""

from __future__ import annotations

from fedge.errors import RejectReason, SignatureError, TopicError
from fedge.signing.keys import AGGREGATOR_SIGNER
from fedge.topics import ParsedTopic, TopicKind, parse_topic

__all__ = [
    "FRAME_CONTEXT",
    "MESSAGE_CONTEXT",
    "SIGNATURE_PATTERN",
    "expected_signer",
    "signer_for_topic",
    "topic_bytes",
]

MESSAGE_CONTEXT = b"fedge-v1\0message\0"
"""First bytes of every signed message; a frame signature can never verify as one."""
FRAME_CONTEXT = b"fedge-v1\0frame\0"
"""First bytes of every signed frame."""

# Base64 of exactly 64 bytes, canonical: the last data character carries 2 bits and
# 4 zero bits, so only A, Q, g or w stand before "==" (one text per signature).
SIGNATURE_PATTERN = r"[A-Za-z0-9+/]{85}[AQgw]=="
"""Regular expression (unanchored) of an Ed25519 signature as it travels: base64."""

_AGGREGATOR_TOPICS = frozenset(
    {TopicKind.ROUND_CURRENT, TopicKind.ROUND_SUMMARY, TopicKind.GLOBAL_MODEL}
)


def topic_bytes(topic: str) -> bytes:
    """The topic as signed: UTF-8; TopicError if empty or holding NUL."""
    # MQTT forbids U+0000 in topics; refusing it keeps the NUL separators unambiguous.
    if not isinstance(topic, str) or not topic or "\0" in topic:
        raise TopicError(f"topic {topic!r} is empty or contains NUL")
    return topic.encode("utf-8")


def expected_signer(topic: ParsedTopic) -> str:
    """Who must have signed what is published on ``topic``: its device, or the aggregator.

    ``rounds/current``, ``rounds/summary`` and ``model/global`` are the aggregator's;
    ``devices/<d>/...`` and ``rounds/<r>/updates/<d>`` are device ``d``'s.
    """
    if topic.kind in _AGGREGATOR_TOPICS:
        return AGGREGATOR_SIGNER
    if topic.device is None or topic.device == AGGREGATOR_SIGNER:
        # A device topic named after the aggregator would let its key sign device data.
        raise SignatureError(RejectReason.UNKNOWN_DEVICE, f"device {topic.device!r} on {topic}")
    return topic.device


def signer_for_topic(topic: str, expect_signer: str | None) -> str:
    """``expect_signer`` if given, else :func:`expected_signer` of the parsed ``topic``."""
    if expect_signer is not None:
        return expect_signer
    try:
        return expected_signer(parse_topic(topic))
    except TopicError as exc:
        raise SignatureError(RejectReason.TOPIC_MISMATCH, str(exc)) from exc
