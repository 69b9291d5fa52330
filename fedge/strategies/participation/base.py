"""The participation interface: who takes part in a round, when it closes, whether it counts.

The :class:`~aggregator.coordinator.RoundCoordinator` owns the facts (which devices
are online, which replies arrived and passed validation, the clock); a
:class:`ParticipationPolicy` owns the decisions about them. The coordinator asks

1. :meth:`~ParticipationPolicy.open_round` when it could open a round: who is
   expected and by when, or ``None`` to keep waiting;
2. :meth:`~ParticipationPolicy.admit` for every reply that passed validation: the
   factor its weight is multiplied by, or an ``UpdateRejectedError`` to refuse it;
3. :meth:`~ParticipationPolicy.should_close` after every event and clock tick;
4. :meth:`~ParticipationPolicy.succeeded` once the round closes: if not, nothing
   is applied and the round is reported ``failed``.

Stale replies. A policy with ``max_staleness = s > 0`` also gets replies to the
training rounds closed before the open one, as long as they were trained on a
global version at most ``s`` versions old: the coordinator validates such a reply
against the round it answers, rebases it onto the current weights with
:meth:`~ParticipationPolicy.rebase` (by default ``current + (reply - base)``: the
client's change applied to today's model) and passes ``staleness`` (versions
behind) to :meth:`~ParticipationPolicy.admit`.
With ``s = 0`` (``sync``) such replies are refused as ``wrong_round`` and the
coordinator keeps no earlier rounds; with ``s > 0`` it keeps the base weights of
at most ``s + 1`` earlier rounds.

How FedBuff (Nguyen et al. 2022, buffered asynchronous aggregation) plugs in, as one
module beside ``sync.py`` and one ``PARTICIPATION`` entry, without touching the
coordinator (it is :mod:`fedge.strategies.participation.fedbuff`):

* ``open_round``: every online device is expected; a long deadline (a safety net);
* ``max_staleness``: the staleness bound (options, e.g. ``max_staleness = 4``);
* ``admit``: refuse ``staleness > max_staleness`` with ``RejectReason.STALE_BASE``,
  otherwise return the staleness weight, e.g. ``1 / sqrt(1 + staleness)``;
* ``should_close``: once ``view.counted >= K`` (the buffer size) or at the deadline;
  closing applies the buffer through the server step and announces the next round
  at once, while slower devices keep training and answer it late, i.e. stale;
* ``succeeded``: ``view.counted >= 1`` (or ``>= K``, to apply only full buffers);
* stats and evaluation rounds (``view.announcement.task``) keep the sync rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from fedge.errors import RejectReason, UpdateRejectedError
from fedge.messages import RoundAnnouncement, RoundTask
from fedge.strategies.params import Params

__all__ = ["ParticipationPolicy", "RoundPlan", "RoundView"]


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """A policy's answer when a round can open: whom to wait for, and until when.

    ``selected``: the devices asked to answer, announced to the fleet (None: every
    device; a device not selected skips the round). ``quorum``: how many counted
    replies the round needs, announced as its ``min_clients`` (None: the config's).
    """

    expected: frozenset[str]
    deadline: float
    selected: frozenset[str] | None = None
    quorum: int | None = None


class RoundView(Protocol):
    """What a policy may read about the open round (the coordinator's live state)."""

    @property
    def announcement(self) -> RoundAnnouncement:
        """The announcement the fleet received (task, issue time, deadline, ...)."""

    @property
    def expected(self) -> Set[str]:
        """Devices the round still waits for; one going offline is dropped from it."""

    @property
    def received(self) -> Set[str]:
        """Devices whose reply to this round was accepted."""

    @property
    def counted(self) -> int:
        """Replies folded into this round's reducer, including stale ones to earlier rounds."""


class ParticipationPolicy(ABC):
    """Decides who is expected, which replies count, when a round closes and if it worked.

    ``max_staleness`` is how many global versions behind a counted reply may be
    (see the module docstring); 0 means only replies to the open round count.
    """

    name: ClassVar[str]
    max_staleness: int = 0

    @abstractmethod
    def open_round(
        self, online: Set[str], *, task: RoundTask, now: float, round_id: int = 0
    ) -> RoundPlan | None:
        """The plan of round ``round_id`` (a ``task``) opened now with ``online`` devices,
        or None to wait."""

    def admit(self, view: RoundView, device: str, *, staleness: int, now: float) -> float:
        """The factor a validated reply's weight is multiplied by; raise to refuse it.

        ``staleness`` is how many global versions the reply's base is behind the
        current model (0 for a reply to the open round). The default counts every
        reply within ``max_staleness`` at full weight.
        """
        if staleness > self.max_staleness:
            raise UpdateRejectedError(
                RejectReason.STALE_BASE,
                f"{device} trained {staleness} versions ago, limit {self.max_staleness}",
            )
        return 1.0

    def rebase(
        self,
        update: Mapping[str, np.ndarray],
        *,
        base: Mapping[str, np.ndarray],
        current: Mapping[str, np.ndarray],
    ) -> Params:
        """Carry a stale reply onto the current model: ``current + (update - base)``.

        ``base`` is the global model the reply was trained from. Only called for a
        reply with ``staleness > 0``; float64 arithmetic, float32 result.
        """
        return {
            name: (
                np.asarray(current[name], np.float64)
                + (np.asarray(value, np.float64) - np.asarray(base[name], np.float64))
            ).astype(np.float32)
            for name, value in update.items()
        }

    @abstractmethod
    def should_close(self, view: RoundView, now: float) -> bool:
        """Whether the open round closes now."""

    @abstractmethod
    def succeeded(self, view: RoundView) -> bool:
        """Whether a closed round is applied (its aggregate becomes the next model)."""
