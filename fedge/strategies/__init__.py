"""Federated strategies, pure numpy: reducers, server steps, participation policies.

A :class:`Strategy` is three parts, each chosen by name in the aggregator config and
each implemented one per module:

* a **reducer** (:mod:`fedge.strategies.reducers`, ``REDUCERS``): folds a round's
  accepted updates into one aggregate — ``mean`` (streaming, O(model)); the
  statistics round uses :class:`FeatureStatsReducer`; robust reducers derive from
  :class:`BufferedReducer`;
* a **server step** (:mod:`fedge.strategies.server_steps`, ``STRATEGIES``): turns the
  aggregate into the next global weights — ``fedavg``, ``fedprox``, ``fedavgm``,
  ``fedadam``, ``fedyogi``;
* a **participation policy** (:mod:`fedge.strategies.participation`,
  ``PARTICIPATION``): who is expected, which replies count, when a round closes and
  whether it succeeded — ``sync``, ``fedbuff`` (buffered asynchronous).
"""

from __future__ import annotations

from fedge.strategies.composite import Strategy, StrategySettings
from fedge.strategies.params import Params
from fedge.strategies.participation import (
    PARTICIPATION,
    FedBuffParticipation,
    ParticipationPolicy,
    RoundPlan,
    RoundView,
    SyncParticipation,
    make_participation,
    staleness_weight,
)
from fedge.strategies.reducers import (
    REDUCERS,
    STATS_TENSORS,
    BufferedReducer,
    FeatureStatsReducer,
    Reducer,
    ReducerFactory,
    StreamingMean,
    make_reducer,
    stats_template,
    weighted_mean,
)
from fedge.strategies.server_steps import (
    STRATEGIES,
    AdaptiveServerOptimizer,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    ServerStep,
    make_strategy,
)

__all__ = [
    "PARTICIPATION",
    "REDUCERS",
    "STATS_TENSORS",
    "STRATEGIES",
    "AdaptiveServerOptimizer",
    "BufferedReducer",
    "FeatureStatsReducer",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuffParticipation",
    "FedProx",
    "FedYogi",
    "Params",
    "ParticipationPolicy",
    "Reducer",
    "ReducerFactory",
    "RoundPlan",
    "RoundView",
    "ServerStep",
    "Strategy",
    "StrategySettings",
    "StreamingMean",
    "SyncParticipation",
    "make_participation",
    "make_reducer",
    "make_strategy",
    "staleness_weight",
    "stats_template",
    "weighted_mean",
]
