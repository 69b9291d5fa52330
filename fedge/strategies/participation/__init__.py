"""Participation policies, one per module, selectable by name (``participation`` in config).

Built in:

* ``sync`` — :class:`SyncParticipation`: quorum, deadline, optional target, no stale replies.

A buffered asynchronous policy (FedBuff) is one more module and one more entry here;
:mod:`fedge.strategies.participation.base` describes how it plugs in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedge.errors import ConfigError
from fedge.strategies.participation.base import ParticipationPolicy, RoundPlan, RoundView
from fedge.strategies.participation.sync import SyncParticipation

__all__ = [
    "PARTICIPATION",
    "ParticipationPolicy",
    "RoundPlan",
    "RoundView",
    "SyncParticipation",
    "make_participation",
]

PARTICIPATION: dict[str, Callable[..., ParticipationPolicy]] = {
    SyncParticipation.name: SyncParticipation,
}
"""Policies by name; each is called as
``factory(min_clients=..., target_clients=..., round_timeout_s=..., **options)``."""


def make_participation(
    name: str,
    options: Mapping[str, float] | None = None,
    *,
    min_clients: int,
    target_clients: int | None,
    round_timeout_s: float,
) -> ParticipationPolicy:
    """Instantiate the policy registered as ``name`` with the round limits and ``options``."""
    try:
        factory = PARTICIPATION[name]
    except KeyError:
        raise ConfigError(
            f"unknown participation policy {name!r}; choose one of {sorted(PARTICIPATION)}"
        ) from None
    try:
        return factory(
            min_clients=min_clients,
            target_clients=target_clients,
            round_timeout_s=round_timeout_s,
            **dict(options or {}),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for participation {name!r}: {exc}") from exc
