"""Aggregation strategies, one per module, selectable by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedge.errors import ConfigError
from fedge.strategies.base import Params, Strategy, StreamingMean, weighted_mean
from fedge.strategies.fedadam import FedAdam
from fedge.strategies.fedavg import FedAvg
from fedge.strategies.fedavgm import FedAvgM
from fedge.strategies.fedprox import FedProx
from fedge.strategies.fedyogi import FedYogi

__all__ = [
    "STRATEGIES",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Params",
    "Strategy",
    "StreamingMean",
    "make_strategy",
    "weighted_mean",
]

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    FedAvg.name: FedAvg,
    FedProx.name: FedProx,
    FedAvgM.name: FedAvgM,
    FedAdam.name: FedAdam,
    FedYogi.name: FedYogi,
}


def make_strategy(name: str, options: Mapping[str, float] | None = None) -> Strategy:
    """Instantiate the strategy registered as ``name`` with keyword ``options``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}"
        ) from None
    try:
        return factory(**dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for strategy {name!r}: {exc}") from exc
