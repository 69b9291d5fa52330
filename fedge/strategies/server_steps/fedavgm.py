"""FedAvgM (Hsu et al. 2019): server momentum on the averaged pseudo-gradient."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.strategies.params import Params
from fedge.strategies.server_steps.base import ServerStep

__all__ = ["FedAvgM"]


class FedAvgM(ServerStep):
    """``v = beta*v + (w - aggregate)``; ``w' = w - server_lr * v``.

    With ``beta=0`` and ``server_lr=1`` this is exactly FedAvg.
    """

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        if not server_lr > 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"need server_lr > 0 and 0 <= momentum < 1, got {server_lr}, {momentum}"
            )
        self.server_lr = float(server_lr)
        self.momentum = float(momentum)
        self._velocity: dict[str, np.ndarray] = {}

    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> Params:
        out: Params = {}
        for name, w in current.items():
            w64 = np.asarray(w, np.float64)
            grad = w64 - np.asarray(aggregate[name], np.float64)
            v = self._velocity.get(name)
            v = grad if v is None else self.momentum * v + grad
            self._velocity[name] = v
            out[name] = (w64 - self.server_lr * v).astype(np.float32)
        return out

    def state(self) -> Params:
        return {f"velocity/{k}": v.copy() for k, v in self._velocity.items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._velocity = {
            k.removeprefix("velocity/"): np.asarray(v, np.float64) for k, v in state.items()
        }
