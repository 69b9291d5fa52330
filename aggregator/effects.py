"""What the round coordinator asks its service to do: the effects, as plain values.

The sans-I/O :class:`~aggregator.coordinator.RoundCoordinator` returns lists of these;
:class:`~aggregator.service.AggregatorService` carries them out in order. Durable
effects come first where it matters: a reply's :class:`JournalUpdate` before anything
that depends on it, a round's :class:`JournalOpen` before its announcement, its
:class:`JournalClose` and :class:`SaveCheckpoint` before the model is published.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.state import Checkpoint
from fedge.messages import RoundSummary

__all__ = [
    "Effect",
    "JournalClose",
    "JournalOpen",
    "JournalUpdate",
    "Publish",
    "RoundClosed",
    "SaveCheckpoint",
]


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``topic``."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    """Write ``checkpoint`` atomically (a completed stats or training round)."""

    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """A round closed; ``summary`` is what was published about it."""

    summary: RoundSummary


@dataclass(frozen=True, slots=True)
class JournalOpen:
    """Start round ``round_id``'s journal: durably, before its announcement is published."""

    round_id: int
    announcement: bytes
    expected: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class JournalUpdate:
    """Append an accepted reply to the open round's journal: durably, before anything else.

    The coordinator has counted the reply already, but nothing it emits afterwards
    (a close, a publish) and no acknowledgement to the broker may happen before this
    effect is carried out: on a crash the restarted aggregator counts it again from
    the journal.
    """

    round_id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class JournalClose:
    """Round ``round_id`` closed: durably recorded before its results are published."""

    round_id: int
    outcome: str
    ts: float


Effect = Publish | SaveCheckpoint | RoundClosed | JournalOpen | JournalUpdate | JournalClose
