"""Signed JSON messages: an envelope around the exact message bytes.

The envelope is a JSON object with exactly these keys, in this order when we write it::

    {"payload":"<message JSON as a JSON string>","signer":"pump-03",
     "nonce":"<32 lowercase hex>","ts":1700000000.0,"sig":"<base64 of 64 bytes>"}

The Ed25519 signature ``sig`` is over::

    b"fedge-v1\\0message\\0" + topic (UTF-8) + b"\\0" + signer (ASCII) + b"\\0"
    + nonce (ASCII) + b"\\0" + struct.pack(">d", ts) + payload (UTF-8 bytes)

Carrying the payload as a string lets the verifier check, byte for byte, what it then
hands to :func:`~fedge.messages.decode_message`: no JSON canonicalisation. ``ts`` is
bound as its IEEE-754 double, so its text form does not matter. Signer and nonce
cannot contain NUL, and MQTT topics cannot either, so the layout is unambiguous.

A bare message never has a ``sig`` key (every WireModel forbids unknown fields):
that is how an unsigned message is told apart, and how mode ``off`` keeps them.
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Annotated

from pydantic import StringConstraints, ValidationError
from pydantic_core import from_json

from fedge.errors import MessageError, RejectReason, SignatureError, TopicError
from fedge.messages import MAX_MESSAGE_BYTES, Identifier, Timestamp, WireModel
from fedge.signing.binding import (
    MESSAGE_CONTEXT,
    SIGNATURE_PATTERN,
    signer_for_topic,
    topic_bytes,
)
from fedge.signing.keys import KeyRegistry, SigningKey
from fedge.signing.replay import ReplayGuard

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "SignedEnvelope",
    "SignedMessage",
    "is_signed_message",
    "message_signing_bytes",
    "new_nonce",
    "sign_message",
    "unwrap_message",
    "verify_message",
]

MAX_ENVELOPE_BYTES = 2 * MAX_MESSAGE_BYTES + 1024
"""Envelope size limit: escaping a message into a JSON string at most doubles it."""

_NONCE = re.compile(r"[0-9a-f]{32}")


class SignedEnvelope(WireModel):
    """The JSON carrier of a signed message; ``payload`` is the message JSON as a string."""

    payload: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_BYTES)]
    signer: Identifier
    nonce: Annotated[str, StringConstraints(pattern=f"^{_NONCE.pattern}$")]
    ts: Timestamp
    sig: Annotated[str, StringConstraints(pattern=f"^{SIGNATURE_PATTERN}$")]


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A verified message: the exact payload bytes (for ``decode_message``) and its stamp."""

    payload: bytes
    signer: str
    nonce: str
    ts: float


def new_nonce() -> str:
    """A fresh random 128-bit nonce, as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def message_signing_bytes(topic: str, signer: str, nonce: str, ts: float, payload: bytes) -> bytes:
    """The exact bytes a message signature covers (see the module docstring)."""
    return b"".join(
        (
            MESSAGE_CONTEXT,
            topic_bytes(topic),
            b"\0",
            signer.encode("ascii"),
            b"\0",
            nonce.encode("ascii"),
            b"\0",
            struct.pack(">d", ts),
            payload,
        )
    )


def sign_message(
    payload: bytes, key: SigningKey, topic: str, *, now: float, nonce: str | None = None
) -> bytes:
    """Wrap an encoded message (``encode_message`` output) in a signed envelope for ``topic``.

    ``now`` is the signer's clock in Unix seconds; ``nonce`` defaults to a fresh random
    one. Sign at publish time, not when a message is queued, so the stamp is fresh.
    Raises MessageError for a payload that is not UTF-8 or a bad nonce or timestamp.
    """
    nonce = new_nonce() if nonce is None else nonce
    if not isinstance(nonce, str) or _NONCE.fullmatch(nonce) is None:
        raise MessageError(f"nonce must be 32 lowercase hex characters, got {nonce!r}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"message payload is not UTF-8: {exc}") from exc
    signature = key.sign(message_signing_bytes(topic, key.signer, nonce, now, payload))
    try:
        envelope = SignedEnvelope(
            payload=text,
            signer=key.signer,
            nonce=nonce,
            ts=now,
            sig=base64.b64encode(signature).decode("ascii"),
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MessageError(f"cannot sign message: {where}: {first['msg']}") from exc
    return envelope.model_dump_json().encode("utf-8")


def _parse_envelope(data: bytes, *, max_bytes: int, bare_json_only: bool) -> SignedEnvelope | None:
    """The envelope in ``data``; None if ``data`` is no signed message at all.

    Data that is not JSON is MALFORMED if ``bare_json_only``, else also None (mode
    ``off`` hands it on and decode_message says what is wrong).
    """
    if len(data) > max_bytes:
        raise SignatureError(
            RejectReason.TOO_LARGE, f"message of {len(data)} bytes exceeds limit {max_bytes}"
        )
    try:
        obj = from_json(data, allow_inf_nan=False)
    except ValueError as exc:  # includes recursion-limit and lone-surrogate errors
        if bare_json_only:
            raise SignatureError(RejectReason.MALFORMED, f"message is not JSON: {exc}") from exc
        return None
    if not isinstance(obj, dict) or "sig" not in obj:
        return None
    try:
        return SignedEnvelope.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise SignatureError(
            RejectReason.MALFORMED, f"invalid signed envelope: {where}: {first['msg']}"
        ) from exc


def _payload_bytes(envelope: SignedEnvelope) -> bytes:
    try:
        return envelope.payload.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate; from_json refuses them today
        raise SignatureError(RejectReason.MALFORMED, "envelope payload is not UTF-8") from exc


def is_signed_message(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> bool:
    """True if ``data`` is a well-formed signed envelope (its signature is not checked)."""
    try:
        return _parse_envelope(data, max_bytes=max_bytes, bare_json_only=False) is not None
    except SignatureError:
        return False


def verify_message(
    data: bytes,
    topic: str,
    registry: KeyRegistry,
    *,
    now: float,
    expect_signer: str | None = None,
    guard: ReplayGuard | None = None,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> SignedMessage:
    """Verify a signed envelope received on ``topic``; return its payload and stamp.

    ``expect_signer`` defaults to :func:`~fedge.signing.binding.expected_signer` of
    ``topic``. With a ``guard``, nonce and timestamp are checked at ``now`` after the
    signature verified. The payload is not decoded. Raises SignatureError with reason
    ``TOO_LARGE``, ``UNSIGNED``, ``MALFORMED``, ``TOPIC_MISMATCH``, ``WRONG_SIGNER``,
    ``UNKNOWN_DEVICE``, ``BAD_SIGNATURE``, ``REPLAY``, ``STALE`` or ``CLOCK_SKEW``
    (``UNSIGNED`` is a bare JSON message; ``MALFORMED`` anything else unverifiable).
    """
    envelope = _parse_envelope(data, max_bytes=max_bytes, bare_json_only=True)
    if envelope is None:
        raise SignatureError(RejectReason.UNSIGNED, f"unsigned message on {topic!r}")
    signer = signer_for_topic(topic, expect_signer)
    if envelope.signer != signer:
        raise SignatureError(
            RejectReason.WRONG_SIGNER,
            f"signed by {envelope.signer!r}, {topic!r} must be signed by {signer!r}",
        )
    key = registry.for_signer(signer)
    payload = _payload_bytes(envelope)
    try:
        signed = message_signing_bytes(topic, signer, envelope.nonce, envelope.ts, payload)
    except TopicError as exc:
        raise SignatureError(RejectReason.TOPIC_MISMATCH, str(exc)) from exc
    key.verify(base64.b64decode(envelope.sig), signed)
    if guard is not None:
        guard.check(signer, envelope.nonce, envelope.ts, now=now)
    return SignedMessage(payload, signer, envelope.nonce, envelope.ts)


def unwrap_message(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> bytes:
    """Mode ``off`` only: an envelope's payload WITHOUT verifying it, or ``data`` if bare."""
    envelope = _parse_envelope(data, max_bytes=max_bytes, bare_json_only=False)
    return data if envelope is None else _payload_bytes(envelope)
