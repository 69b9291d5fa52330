"""Participation policies, one per module, selectable by name (``participation`` in config).

Built in:

* ``sync`` — :class:`SyncParticipation`: quorum, deadline, optional target, no stale replies.
* ``fedbuff`` — :class:`FedBuffParticipation`: buffered asynchronous aggregation, a
  training round closes after K replies, stale replies count with a staleness weight.

:mod:`fedge.strategies.participation.base` describes how a policy plugs in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedge.errors import ConfigError
from fedge.strategies.participation.base import ParticipationPolicy, RoundPlan, RoundView
from fedge.strategies.participation.fedbuff import FedBuffParticipation, staleness_weight
from fedge.strategies.participation.sync import SyncParticipation

__all__ = [
    "PARTICIPATION",
    "FedBuffParticipation",
    "ParticipationPolicy",
    "RoundPlan",
    "RoundView",
    "SyncParticipation",
    "make_participation",
    "staleness_weight",
]

PARTICIPATION: dict[str, Callable[..., ParticipationPolicy]] = {
    SyncParticipation.name: SyncParticipation,
    FedBuffParticipation.name: FedBuffParticipation,
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
