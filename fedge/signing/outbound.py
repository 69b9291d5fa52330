"""The sending side: sign what a service publishes, by topic (pure).

One object, :class:`Signer`, is handed to an agent or the aggregator; it signs every
payload at publish time as its topic requires: binary frames (``model/global``,
``rounds/<r>/updates/<d>``) with :func:`~fedge.signing.sign_frame`, every other
topic's JSON message with :func:`~fedge.signing.sign_message`. Without a key it
hands payloads back unchanged (security mode ``off``: the demo and simulations).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.signing.envelope import sign_message
from fedge.signing.frames import sign_frame
from fedge.signing.keys import SigningKey
from fedge.topics import TopicKind, parse_topic

__all__ = ["FRAME_TOPICS", "Signer"]

FRAME_TOPICS = frozenset({TopicKind.GLOBAL_MODEL, TopicKind.UPDATE})
"""Topic kinds whose payload is a binary frame (signed in its header)."""


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs outbound payloads with ``key``; a no-op when ``key`` is None."""

    key: SigningKey | None = None

    @property
    def signs(self) -> bool:
        """True if payloads are signed (a key is configured)."""
        return self.key is not None

    def sign(self, topic: str, payload: bytes, *, now: float) -> bytes:
        """``payload`` signed for ``topic`` at ``now`` (Unix seconds), or unchanged.

        Raises TopicError for a topic that is not a fedge topic, FrameError /
        MessageError for a payload that cannot be signed (a bug on our side).
        """
        if self.key is None:
            return payload
        if parse_topic(topic).kind in FRAME_TOPICS:
            return sign_frame(payload, self.key, topic)
        return sign_message(payload, self.key, topic, now=now)
