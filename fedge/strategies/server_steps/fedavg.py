"""FedAvg (McMahan et al. 2017): the identity server step; the aggregate is the new model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.strategies.params import Params
from fedge.strategies.server_steps.base import ServerStep

__all__ = ["FedAvg"]


class FedAvg(ServerStep):
    """Plain federated averaging: the next global weights are the aggregate (float32 copies)."""

    name = "fedavg"

    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> Params:
        return {k: np.asarray(v, np.float32).copy() for k, v in aggregate.items()}
