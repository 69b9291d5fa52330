"""A strategy = a reducer + a server step + a participation policy, built from config.

The aggregator config names each part: ``strategy`` (+ ``strategy_options``) picks the
server step, ``reducer`` (+ ``reducer_options``) how a training round's updates are
combined, ``participation`` (+ ``participation_options``) who takes part and when a
round closes. The defaults (``mean``, ``sync``) are classic synchronous FedAvg-style
rounds, whatever the server step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedge.messages import RoundTask
from fedge.strategies.participation import ParticipationPolicy, make_participation
from fedge.strategies.reducers import (
    FeatureStatsReducer,
    Reducer,
    ReducerFactory,
    StreamingMean,
    make_reducer,
)
from fedge.strategies.server_steps import ServerStep, make_strategy

__all__ = ["Strategy", "StrategySettings"]


class StrategySettings(Protocol):
    """The settings a :class:`Strategy` is built from; ``AggregatorConfig`` has them all."""

    @property
    def strategy(self) -> str: ...
    @property
    def strategy_options(self) -> Mapping[str, float]: ...
    @property
    def reducer(self) -> str: ...
    @property
    def reducer_options(self) -> Mapping[str, float]: ...
    @property
    def participation(self) -> str: ...
    @property
    def participation_options(self) -> Mapping[str, float]: ...
    @property
    def min_clients(self) -> int: ...
    @property
    def target_clients(self) -> int | None: ...
    @property
    def round_timeout_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Strategy:
    """The three parts the round coordinator delegates to.

    ``reducer`` builds each training round's accumulator, ``stats_reducer`` each
    federated-statistics round's; evaluation rounds aggregate only metrics.
    """

    server_step: ServerStep
    participation: ParticipationPolicy
    reducer: ReducerFactory = StreamingMean
    stats_reducer: ReducerFactory = FeatureStatsReducer

    @property
    def name(self) -> str:
        """The server step's (= the config's ``strategy``) name."""
        return self.server_step.name

    def reducer_for(self, task: RoundTask, template: Mapping[str, np.ndarray]) -> Reducer | None:
        """A fresh accumulator for a ``task`` round over ``template``; None for evaluation."""
        if task == "train":
            return self.reducer(template)
        if task == "stats":
            return self.stats_reducer(template)
        return None

    @classmethod
    def from_settings(
        cls, settings: StrategySettings, *, server_step: ServerStep | None = None
    ) -> Strategy:
        """Build every part by name from ``settings``; raises ConfigError for bad names/options.

        ``server_step`` replaces the one ``settings.strategy`` names (for callers that
        already built it, e.g. to restore its state).
        """
        step = server_step
        if step is None:
            step = make_strategy(settings.strategy, settings.strategy_options)
        return cls(
            server_step=step,
            participation=make_participation(
                settings.participation,
                settings.participation_options,
                min_clients=settings.min_clients,
                target_clients=settings.target_clients,
                round_timeout_s=settings.round_timeout_s,
            ),
            reducer=make_reducer(settings.reducer, settings.reducer_options),
        )
