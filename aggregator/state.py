"""The aggregator's durable state as plain values, apart from the file stores that keep it.

The sans-I/O :class:`~aggregator.coordinator.RoundCoordinator` starts from and emits
:class:`Checkpoint` values and is restored from them plus the :class:`RoundJournal`
of the rounds after the checkpoint; :class:`~aggregator.checkpoint.CheckpointStore`
and :class:`~aggregator.journal.JournalStore` write and read them. Keeping the types
here means the coordinator never imports file I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedge.spec import ModelSpec

__all__ = ["Checkpoint", "JournalClosed", "JournalEntry", "RoundJournal"]


@dataclass(frozen=True)
class Checkpoint:
    """The aggregator's durable state after a completed round."""

    fleet: str
    version: int
    round_id: int
    spec: ModelSpec
    tensors: dict[str, np.ndarray]
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)
    stats_done: bool = True


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted reply as it arrived: its topic and its frame, byte for byte."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class JournalClosed:
    """A round's close record: how it ended and when (the coordinator's clock)."""

    outcome: Literal["completed", "failed"]
    ts: float


@dataclass(frozen=True)
class RoundJournal:
    """What one round's journal file holds, as far as it could be read.

    ``announcement`` is the exact payload published on ``rounds/current`` (None when
    the file is unusable: then only ``round_id``, taken from the file name, is known);
    ``entries`` the accepted replies in arrival order; ``closed`` the close record if
    the round closed. ``problems`` counts, by reason, what was ignored (a torn or
    corrupt tail, an unreadable file); ``ignored_bytes`` how much of the file that was.
    """

    round_id: int
    announcement: bytes | None
    expected: tuple[str, ...] = ()
    entries: tuple[JournalEntry, ...] = ()
    closed: JournalClosed | None = None
    problems: Mapping[str, int] = field(default_factory=dict)
    ignored_bytes: int = 0

    @property
    def usable(self) -> bool:
        """Whether the round can be reopened from this journal (its open record was read)."""
        return self.announcement is not None
