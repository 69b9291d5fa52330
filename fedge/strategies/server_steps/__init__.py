"""Server steps, one per module, registered under the strategy names of the config.

``strategy = "<name>"`` (with keyword ``strategy_options``) in the aggregator config
picks one of ``STRATEGIES``: a server step, which the round's reducer (``mean`` by
default) feeds with its aggregate.

=========  ===================================  ===============================
name       server step                          options
=========  ===================================  ===============================
fedavg     identity                             —
fedprox    identity; clients get proximal_mu    ``mu``
fedavgm    server momentum                      ``server_lr``, ``momentum``
fedadam    Adam on the pseudo-gradient          ``eta``, ``beta_1``, ``beta_2``, ``tau``
fedyogi    Yogi on the pseudo-gradient          ``eta``, ``beta_1``, ``beta_2``, ``tau``
=========  ===================================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fedge.errors import ConfigError
from fedge.strategies.server_steps.adaptive import AdaptiveServerOptimizer
from fedge.strategies.server_steps.base import ServerStep
from fedge.strategies.server_steps.fedadam import FedAdam
from fedge.strategies.server_steps.fedavg import FedAvg
from fedge.strategies.server_steps.fedavgm import FedAvgM
from fedge.strategies.server_steps.fedprox import FedProx
from fedge.strategies.server_steps.fedyogi import FedYogi

__all__ = [
    "STRATEGIES",
    "AdaptiveServerOptimizer",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "ServerStep",
    "make_strategy",
]

STRATEGIES: dict[str, Callable[..., ServerStep]] = {
    FedAvg.name: FedAvg,
    FedProx.name: FedProx,
    FedAvgM.name: FedAvgM,
    FedAdam.name: FedAdam,
    FedYogi.name: FedYogi,
}
"""Server steps by strategy name; each is called as ``factory(**strategy_options)``."""


def make_strategy(name: str, options: Mapping[str, float] | None = None) -> ServerStep:
    """Instantiate the server step of the strategy registered as ``name`` with ``options``."""
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
