"""Synchronous rounds with a quorum, a deadline and an optional target, registered as ``sync``.

A round opens once ``min_clients`` devices are online and expects exactly those
devices. It closes as soon as every expected device has replied (a device that
goes offline is no longer waited for), or ``target_clients`` replies were
counted, or at the deadline (``round_timeout_s`` after it opened). It succeeds if
at least ``min_clients`` replies were counted. Only replies to the open round
count: ``max_staleness`` is 0.
"""

from __future__ import annotations

from collections.abc import Set

from fedge.messages import RoundTask
from fedge.strategies.participation.base import ParticipationPolicy, RoundPlan, RoundView

__all__ = ["SyncParticipation"]


class SyncParticipation(ParticipationPolicy):
    """The classic FedAvg round: wait for the devices online at announce time, or time out."""

    name = "sync"

    def __init__(
        self, *, min_clients: int, target_clients: int | None = None, round_timeout_s: float
    ) -> None:
        if min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {min_clients}")
        if target_clients is not None and target_clients < 1:
            raise ValueError(f"target_clients must be >= 1 or None, got {target_clients}")
        if not round_timeout_s > 0:
            raise ValueError(f"round_timeout_s must be > 0, got {round_timeout_s}")
        self.min_clients = min_clients
        self.target_clients = target_clients
        self.round_timeout_s = round_timeout_s

    def open_round(self, online: Set[str], *, task: RoundTask, now: float) -> RoundPlan | None:
        if len(online) < self.min_clients:
            return None
        return RoundPlan(expected=frozenset(online), deadline=now + self.round_timeout_s)

    def should_close(self, view: RoundView, now: float) -> bool:
        everyone = bool(view.expected) and view.expected <= view.received
        target = self.target_clients
        return (
            everyone
            or (target is not None and view.counted >= target)
            or now >= view.announcement.deadline
        )

    def succeeded(self, view: RoundView) -> bool:
        return view.counted >= self.min_clients
