"""Signed binary model frames (:mod:`fedge.codec`), verified without decoding the body.

The signature travels as the *last* key of the frame's JSON header::

    ...,"signature":"ed25519:<signer>:<base64 of 64 bytes>"}

so the header length in the 10-byte prefix grows by the length of that key. The
signer first re-pads the spaces before the unsigned header's closing brace so that
the signed frame's body still starts 8-byte aligned (:func:`fedge.codec.align_header`);
that padding is part of the unsigned header, hence signed. It is an Ed25519
signature over::

    b"fedge-v1\\0frame\\0" + topic (UTF-8) + b"\\0" + signer (ASCII) + b"\\0"
    + the unsigned prefix: magic b"FEDG", format version, flags, uint32 BE header length
    + the unsigned header: the signed header with that last key cut off
    + sha256(body)

The verifier cuts the key off the end of the header, which rebuilds the unsigned
header exactly (no JSON canonicalisation), and hashes the body without parsing it.
Version and flags bytes are signed as they are, so a later codec that sets flags
(compression) stays covered. Frames carry no nonce: an update is bound to its round
by its signed header (``round_id``, ``base_version``, ``device``) and by the topic
(``rounds/<r>/updates/<d>``); a global model by its ``version``, which agents never
let go backwards (:func:`fedge.limits.check_global_model`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from dataclasses import dataclass

from pydantic_core import from_json

from fedge.codec import DEFAULT_MAX_FRAME_BYTES, FRAME_MAGIC, MAX_HEADER_BYTES, align_header
from fedge.errors import FrameError, RejectReason, SignatureError, TopicError
from fedge.signing.binding import FRAME_CONTEXT, SIGNATURE_PATTERN, signer_for_topic, topic_bytes
from fedge.signing.keys import KeyRegistry, SigningKey

__all__ = [
    "FrameSignature",
    "frame_signature",
    "frame_signing_bytes",
    "sign_frame",
    "verify_frame",
]

_PREFIX = struct.Struct(">4sBBI")  # the layout of fedge.codec v1: magic, version, flags, H
_SIG_KEY = b',"signature":"ed25519:'
_SIG_B64_LEN = 88  # base64 of a 64-byte Ed25519 signature
_SIG_TAIL = re.compile(
    rb"([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(" + SIGNATURE_PATTERN.encode() + rb')"\}'
)


@dataclass(frozen=True, slots=True)
class _Parts:
    version: int
    flags: int
    header: bytes
    body: memoryview


@dataclass(frozen=True, slots=True)
class FrameSignature:
    """The signature found at the end of a frame header, and the header without it."""

    signer: str
    signature: bytes
    unsigned_header: bytes


def _split(frame: bytes, *, max_bytes: int) -> _Parts:
    size = len(frame)
    if size > max_bytes:
        raise SignatureError(
            RejectReason.TOO_LARGE, f"frame of {size} bytes exceeds limit {max_bytes}"
        )
    if size < _PREFIX.size:
        raise SignatureError(RejectReason.MALFORMED, f"truncated frame: {size} bytes")
    magic, version, flags, header_len = _PREFIX.unpack_from(frame)
    if magic != FRAME_MAGIC:
        raise SignatureError(RejectReason.MALFORMED, f"bad magic {magic!r}")
    end = _PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or end > size:
        raise SignatureError(RejectReason.MALFORMED, f"bad header length {header_len}")
    view = memoryview(frame)
    return _Parts(version, flags, bytes(view[_PREFIX.size : end]), view[end:])


def frame_signing_bytes(
    topic: str,
    signer: str,
    *,
    version: int,
    flags: int,
    unsigned_header: bytes,
    body: bytes | memoryview,
) -> bytes:
    """The exact bytes a frame signature covers (see the module docstring)."""
    return b"".join(
        (
            FRAME_CONTEXT,
            topic_bytes(topic),
            b"\0",
            signer.encode("ascii"),
            b"\0",
            _PREFIX.pack(FRAME_MAGIC, version, flags, len(unsigned_header)),
            unsigned_header,
            hashlib.sha256(body).digest(),
        )
    )


def sign_frame(frame: bytes, key: SigningKey, topic: str) -> bytes:
    """Sign an encoded, unsigned frame (``encode_frame`` output) for ``topic``.

    Raises FrameError if ``frame`` is not a frame, its header is not a compact
    non-empty JSON object, or it already has a ``signature`` key.
    """
    try:
        parts = _split(frame, max_bytes=len(frame))
    except SignatureError as exc:
        raise FrameError(f"cannot sign: {exc.detail}") from exc
    header = parts.header
    try:
        obj = from_json(header, allow_inf_nan=False)
    except ValueError as exc:
        raise FrameError(f"cannot sign: header is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or not obj or not header.endswith(b"}"):
        raise FrameError("cannot sign: header must be a non-empty compact JSON object")
    if "signature" in obj:
        raise FrameError("cannot sign: frame header already has a signature")
    # Re-pad the unsigned header so that the *signed* one keeps the body aligned
    # (fedge.codec.align_header); the padding is signed like the rest of it.
    tail_len = len(_SIG_KEY) + len(key.signer) + 1 + _SIG_B64_LEN + len(b'"}')
    header = align_header(header, grows_by=tail_len - 1)
    signature = key.sign(
        frame_signing_bytes(
            topic,
            key.signer,
            version=parts.version,
            flags=parts.flags,
            unsigned_header=header,
            body=parts.body,
        )
    )
    carrier = key.signer.encode("ascii") + b":" + base64.b64encode(signature)
    signed_header = b"".join((header[:-1], _SIG_KEY, carrier, b'"}'))
    if len(signed_header) > MAX_HEADER_BYTES:
        raise FrameError(f"signed header of {len(signed_header)} bytes exceeds {MAX_HEADER_BYTES}")
    prefix = _PREFIX.pack(FRAME_MAGIC, parts.version, parts.flags, len(signed_header))
    return b"".join((prefix, signed_header, parts.body))


def frame_signature(frame: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> FrameSignature:
    """The signature of ``frame`` (not verified); SignatureError UNSIGNED/MALFORMED if none."""
    return _signature(_split(frame, max_bytes=max_bytes).header)


def _signature(header: bytes) -> FrameSignature:
    at = header.rfind(_SIG_KEY)
    match = None if at < 0 else _SIG_TAIL.fullmatch(header, at + len(_SIG_KEY))
    if match is None:
        # A "signature" key anywhere else (or in another form) is a broken carrier.
        reason = RejectReason.MALFORMED if b'"signature"' in header else RejectReason.UNSIGNED
        raise SignatureError(reason, "no frame signature at the end of the header")
    return FrameSignature(
        signer=match.group(1).decode("ascii"),
        signature=base64.b64decode(match.group(2)),
        unsigned_header=header[:at] + b"}",
    )


def verify_frame(
    frame: bytes,
    topic: str,
    registry: KeyRegistry,
    *,
    expect_signer: str | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> FrameSignature:
    """Verify a signed frame received on ``topic`` without decoding its body.

    ``expect_signer`` defaults to :func:`~fedge.signing.binding.expected_signer` of
    ``topic``. Raises SignatureError with reason ``TOO_LARGE``, ``MALFORMED``,
    ``UNSIGNED``, ``TOPIC_MISMATCH``, ``WRONG_SIGNER``, ``UNKNOWN_DEVICE`` or
    ``BAD_SIGNATURE``. Then decode the same bytes with ``decode_frame`` as usual (the
    header's ``signature`` field holds the carrier text).
    """
    parts = _split(frame, max_bytes=max_bytes)
    found = _signature(parts.header)
    signer = signer_for_topic(topic, expect_signer)
    if found.signer != signer:
        raise SignatureError(
            RejectReason.WRONG_SIGNER,
            f"signed by {found.signer!r}, {topic!r} must be signed by {signer!r}",
        )
    key = registry.for_signer(signer)
    try:
        signed = frame_signing_bytes(
            topic,
            signer,
            version=parts.version,
            flags=parts.flags,
            unsigned_header=found.unsigned_header,
            body=parts.body,
        )
    except TopicError as exc:
        raise SignatureError(RejectReason.TOPIC_MISMATCH, str(exc)) from exc
    key.verify(found.signature, signed)
    return found
