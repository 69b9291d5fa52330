"""Synchronous rounds with a quorum, a deadline, an optional target and sampling: ``sync``.

A round opens once ``min_clients`` devices are online. By default it expects every
one of them, closes as soon as all have replied (a device that goes offline is no
longer waited for), or ``target_clients`` replies were counted, or at the deadline
(``round_timeout_s`` after it opened), and succeeds if at least ``min_clients``
replies were counted.

Sampling (``participation_options = {fraction = 0.5, over_select = 1.3, seed = 0}``):
a training round wants ``k = max(min_clients, ceil(fraction * online))`` replies and
selects ``ceil(k * over_select)`` of the online devices (at most all of them),
drawn deterministically from ``seed`` and the round id, so a restarted aggregator
draws the same ones. The announcement names the selected devices and carries ``k``
as its ``min_clients``; the round closes as soon as ``k`` replies are counted (the
over-selected extra devices absorb stragglers), or when every selected device has
replied, or at the deadline. Replies that come after the close are counted as
``late`` by the coordinator; replies from devices that were not selected are refused
as ``not_selected``. Statistics and evaluation rounds always ask every device.

Only replies to the open round count: ``max_staleness`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Set

import numpy as np

from fedge.errors import RejectReason, UpdateRejectedError
from fedge.messages import RoundTask
from fedge.strategies.participation.base import ParticipationPolicy, RoundPlan, RoundView

__all__ = ["SyncParticipation"]


class SyncParticipation(ParticipationPolicy):
    """The classic FedAvg round: wait for the devices online (or sampled) at announce time,
    or time out."""

    name = "sync"

    def __init__(
        self,
        *,
        min_clients: int,
        target_clients: int | None = None,
        round_timeout_s: float,
        fraction: float = 1.0,
        over_select: float = 1.0,
        seed: float = 0,
    ) -> None:
        if min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {min_clients}")
        if target_clients is not None and target_clients < 1:
            raise ValueError(f"target_clients must be >= 1 or None, got {target_clients}")
        if not round_timeout_s > 0:
            raise ValueError(f"round_timeout_s must be > 0, got {round_timeout_s}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not 1 <= over_select <= 10:
            raise ValueError(f"over_select must be in [1, 10], got {over_select}")
        if seed != int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        self.min_clients = min_clients
        self.target_clients = target_clients
        self.round_timeout_s = round_timeout_s
        self.fraction = fraction
        self.over_select = over_select
        self.seed = int(seed)
        self._cache: tuple[tuple[int, float], frozenset[str]] | None = None

    def open_round(
        self, online: Set[str], *, task: RoundTask, now: float, round_id: int = 0
    ) -> RoundPlan | None:
        if len(online) < self.min_clients:
            return None
        deadline = now + self.round_timeout_s
        if task != "train" or self.fraction >= 1:
            return RoundPlan(expected=frozenset(online), deadline=deadline)
        wanted = min(len(online), max(self.min_clients, math.ceil(self.fraction * len(online))))
        # The small epsilon keeps 2 * 1.5 from becoming 4 through float rounding.
        drawn = min(len(online), math.ceil(wanted * self.over_select - 1e-9))
        selected = self.sample(online, drawn, round_id=round_id)
        return RoundPlan(expected=selected, deadline=deadline, selected=selected, quorum=wanted)

    def sample(self, online: Set[str], count: int, *, round_id: int) -> frozenset[str]:
        """``count`` of ``online``, the same for the same seed, round id and online set."""
        names = sorted(online)
        rng = np.random.default_rng([self.seed, round_id])
        picked = rng.choice(len(names), size=count, replace=False)
        return frozenset(names[int(i)] for i in picked)

    def admit(self, view: RoundView, device: str, *, staleness: int, now: float) -> float:
        selected = self._selected(view)
        if selected is not None and device not in selected:
            raise UpdateRejectedError(
                RejectReason.NOT_SELECTED, f"{device} is not among round's selected devices"
            )
        return super().admit(view, device, staleness=staleness, now=now)

    def _selected(self, view: RoundView) -> frozenset[str] | None:
        """The announcement's selected devices as a set (cached per round: a list lookup
        per reply would be quadratic in a large fleet)."""
        ann = view.announcement
        if ann.selected is None:
            return None
        key = (ann.round_id, ann.issued_at)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, frozenset(ann.selected))
        return self._cache[1]

    def should_close(self, view: RoundView, now: float) -> bool:
        everyone = bool(view.expected) and view.expected <= view.received
        target = self.target_clients
        sampled_quorum = (
            view.announcement.selected is not None and view.counted >= view.announcement.min_clients
        )
        return (
            everyone
            or sampled_quorum
            or (target is not None and view.counted >= target)
            or now >= view.announcement.deadline
        )

    def succeeded(self, view: RoundView) -> bool:
        return view.counted >= self.min_clients
