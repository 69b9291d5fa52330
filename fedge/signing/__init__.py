"""Ed25519 signatures on every fedge frame and JSON message (pure: bytes in, bytes out).

Devices sign what they publish (updates, statuses, telemetry, predictions); the
aggregator signs global models, round announcements and summaries. Receivers verify
before decoding, so this holds on a broker that lets anyone publish anything.

* The expected signer comes from the **topic**, never from the message
  (:func:`expected_signer`): ``devices/<d>/...`` and ``rounds/<r>/updates/<d>`` are
  device ``d``'s; ``rounds/current``, ``rounds/summary``, ``model/global`` the
  aggregator's (signer id ``aggregator``, reserved).
* The topic is inside the signed bytes, so nothing can be moved to another topic,
  device or round.
* Context labels (``b"fedge-v1\\0message\\0"``, ``b"fedge-v1\\0frame\\0"``) keep a
  message signature from ever verifying as a frame signature and vice versa.

Exact bytes signed: see :mod:`fedge.signing.envelope` (messages) and
:mod:`fedge.signing.frames` (frames).

Replay, per topic (``guard`` = a :class:`ReplayGuard` passed to ``open_message``):

==============================  =========================================================
telemetry, prediction, summary  guard: nonce once, ``ts`` within [now-max_age, now+skew]
``devices/<d>/status``          no guard: retained, and the last will is signed at connect
                                time, so it is old when published; keep the newest ``ts``
                                per device, but take ``offline`` whatever its age
                                (:class:`StatusStamps`)
``rounds/current``              no guard: retained; the agent ignores round ids it has
                                handled and expired deadlines (:mod:`fedge.limits`)
update frames                   signed header binds round id, base version and device;
                                the topic binds round and device; duplicates in a round
                                are ``already_received`` in the validator
``model/global``                version only goes up (:func:`fedge.limits.check_global_model`)
==============================  =========================================================
"""

from fedge.signing.binding import (
    FRAME_CONTEXT,
    MESSAGE_CONTEXT,
    expected_signer,
    signer_for_topic,
)
from fedge.signing.envelope import (
    MAX_ENVELOPE_BYTES,
    SignedEnvelope,
    SignedMessage,
    is_signed_message,
    message_signing_bytes,
    new_nonce,
    sign_message,
    unwrap_message,
    verify_message,
)
from fedge.signing.frames import (
    FrameSignature,
    frame_signature,
    frame_signing_bytes,
    sign_frame,
    verify_frame,
)
from fedge.signing.keys import AGGREGATOR_SIGNER, KeyRegistry, SigningKey, VerifyKey
from fedge.signing.outbound import FRAME_TOPICS, Signer
from fedge.signing.policy import Authenticator, SecurityMode, SecurityPolicy
from fedge.signing.replay import ReplayGuard
from fedge.signing.status import StatusStamps

__all__ = [
    "AGGREGATOR_SIGNER",
    "FRAME_CONTEXT",
    "FRAME_TOPICS",
    "MAX_ENVELOPE_BYTES",
    "MESSAGE_CONTEXT",
    "Authenticator",
    "FrameSignature",
    "KeyRegistry",
    "ReplayGuard",
    "SecurityMode",
    "SecurityPolicy",
    "SignedEnvelope",
    "SignedMessage",
    "Signer",
    "SigningKey",
    "StatusStamps",
    "VerifyKey",
    "expected_signer",
    "frame_signature",
    "frame_signing_bytes",
    "is_signed_message",
    "message_signing_bytes",
    "new_nonce",
    "sign_frame",
    "sign_message",
    "signer_for_topic",
    "unwrap_message",
    "verify_frame",
    "verify_message",
]
