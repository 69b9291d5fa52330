"""FedAvg (McMahan et al. 2017): the next global model is the example-weighted mean."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.strategies.base import Params, Strategy

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """Plain federated averaging."""

    name = "fedavg"

    def aggregate(
        self, current: Mapping[str, np.ndarray], client_mean: Mapping[str, np.ndarray]
    ) -> Params:
        return {k: np.asarray(v, np.float32).copy() for k, v in client_mean.items()}
