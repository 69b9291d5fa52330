"""Aggregation strategies, one per module, selectable by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedge.errors import ConfigError
from fedge.strategies.base import Params, Strategy, StreamingMean, weighted_mean
from fedge.strategies.fedavg import FedAvg

__all__ = [
    "STRATEGIES",
    "FedAvg",
    "Params",
    "Strategy",
    "StreamingMean",
    "make_strategy",
    "weighted_mean",
]

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    FedAvg.name: FedAvg,
}


def make_strategy(name: str, options: Mapping[str, float] | None = None) -> Strategy:
    """Instantiate the strategy registered as ``name`` with keyword ``options``."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
    try:
        return factory(**dict(options or {}))
    except TypeError as exc:
        raise ConfigError(f"bad options for strategy {name!r}: {exc}") from exc
