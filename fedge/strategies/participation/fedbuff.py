"""Buffered asynchronous rounds (FedBuff), registered as ``fedbuff``.

After Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation"
(AISTATS 2022). A training round is a buffer: it opens once ``min_clients`` devices
are online, and every device trains on the newest global model it holds and
replies whenever it is done. The round closes as soon as ``buffer_size`` (K)
replies were counted, or when every device still online has replied, or at the
deadline (a safety net); its buffer is then applied through the server step and
the next round is announced at once. A device that was slower keeps training and
replies to the round it started, now closed: its update is *stale* by ``s``
versions, carried onto the current model (``current + (update - base)``, see
:meth:`~fedge.strategies.participation.base.ParticipationPolicy.rebase`) and
counted in the open buffer with its weight multiplied by ``(1 + s) ** -exponent``
(``1 / sqrt(1 + s)`` by default). Updates more than ``max_staleness`` versions
behind are refused (``stale_base``). The weights are normalised within the buffer
by the mean reducer: staleness shifts weight to fresher updates in a buffer, it
does not shrink a buffer's step.

Statistics and evaluation rounds keep the synchronous rules (``sync``): every
device must contribute to them once.

Options (``participation_options``): ``buffer_size`` (K, default 4), ``max_staleness``
(default 4), ``staleness_exponent`` (default 0.5).

When to choose which. ``sync`` waits for the devices online when a round opened:
every round is one clean FedAvg step, rounds are as slow as their slowest device,
and a device that drops out costs the round its update (or the deadline). Choose it
when devices are alike and mostly online. ``fedbuff`` never waits for stragglers:
with devices of mixed speed, or flapping links that take devices offline for part
of the time, it applies updates as they come and reaches a given validation error
in less wall time, at the price of stale (down-weighted) updates and a less
reproducible order of events. Choose it for fleets of small devices on bad links.
"""

from __future__ import annotations

import math
from collections.abc import Set

from fedge.errors import RejectReason, UpdateRejectedError
from fedge.messages import RoundTask
from fedge.strategies.participation.base import ParticipationPolicy, RoundPlan, RoundView
from fedge.strategies.participation.sync import SyncParticipation

__all__ = ["FedBuffParticipation", "staleness_weight"]


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """``(1 + staleness) ** -exponent``: 1 for a fresh update, ``1/sqrt(2)`` one version late."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


def _whole(name: str, value: float, *, low: int) -> int:
    if not (math.isfinite(value) and float(value).is_integer() and value >= low):
        raise ValueError(f"{name} must be a whole number >= {low}, got {value}")
    return int(value)


class FedBuffParticipation(ParticipationPolicy):
    """Training rounds close after K counted replies; stale replies count, down-weighted."""

    name = "fedbuff"

    def __init__(
        self,
        *,
        min_clients: int,
        target_clients: int | None = None,
        round_timeout_s: float,
        buffer_size: float = 4,
        max_staleness: float = 4,
        staleness_exponent: float = 0.5,
    ) -> None:
        self._sync = SyncParticipation(
            min_clients=min_clients, target_clients=target_clients, round_timeout_s=round_timeout_s
        )
        self.min_clients = min_clients
        self.round_timeout_s = round_timeout_s
        self.buffer_size = _whole("buffer_size", buffer_size, low=1)
        self.max_staleness = _whole("max_staleness", max_staleness, low=0)
        if not (math.isfinite(staleness_exponent) and staleness_exponent >= 0):
            raise ValueError(f"staleness_exponent must be >= 0, got {staleness_exponent}")
        self.staleness_exponent = float(staleness_exponent)

    def open_round(
        self, online: Set[str], *, task: RoundTask, now: float, round_id: int = 0
    ) -> RoundPlan | None:
        # Same quorum and deadline as sync; what differs is when a training round closes.
        return self._sync.open_round(online, task=task, now=now, round_id=round_id)

    def admit(self, view: RoundView, device: str, *, staleness: int, now: float) -> float:
        """``staleness_weight(staleness)``; refuses replies beyond ``max_staleness``."""
        if staleness > self.max_staleness:
            raise UpdateRejectedError(
                RejectReason.STALE_BASE,
                f"{device} trained {staleness} versions ago, limit {self.max_staleness}",
            )
        return staleness_weight(staleness, self.staleness_exponent)

    def should_close(self, view: RoundView, now: float) -> bool:
        if view.announcement.task != "train":
            return self._sync.should_close(view, now)
        everyone = bool(view.expected) and view.expected <= view.received
        return (
            view.counted >= self.buffer_size or everyone or now >= view.announcement.deadline
        )

    def succeeded(self, view: RoundView) -> bool:
        if view.announcement.task != "train":
            return self._sync.succeeded(view)
        return view.counted >= 1
