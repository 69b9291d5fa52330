"""The server-step interface: the next global weights from the current ones and an aggregate.

A round's reducer turns the accepted client updates into one aggregate (for the
``mean`` reducer, the example-weighted mean of the client weights); the server
step turns that into the next global weights. FedAvg and FedProx take the
aggregate as it is; server optimisers (FedAvgM, FedAdam, FedYogi) treat
``aggregate - current`` as a pseudo-gradient and keep state between rounds,
which :meth:`ServerStep.state` exposes for checkpoints.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from fedge.strategies.params import Params

__all__ = ["ServerStep"]


class ServerStep(ABC):
    """Turns a round's aggregate into the next global weights.

    ``client_options`` are merged into the round's training config (FedProx sets
    its proximal ``mu`` there); ``state``/``load_state`` carry server-optimiser
    state through checkpoints, where it is stored under ``strategy/<key>``, so the
    keys are part of the checkpoint format and must not change.
    """

    name: ClassVar[str]

    @abstractmethod
    def step(
        self, current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]
    ) -> Params:
        """Next global weights (float32) from the current ones and the round's aggregate."""

    def aggregate(
        self, current: Mapping[str, np.ndarray], client_mean: Mapping[str, np.ndarray]
    ) -> Params:
        """Same as :meth:`step` (the name callers used before reducers were pluggable)."""
        return self.step(current, client_mean)

    def client_options(self) -> dict[str, float]:
        """Extra training options every client gets in the round announcement."""
        return {}

    def state(self) -> Params:
        """Server-optimiser state to checkpoint (empty when the step keeps none)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state` output; a stateless step refuses any state."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}")
