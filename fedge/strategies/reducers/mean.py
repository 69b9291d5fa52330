"""Streaming aggregation and the strategy interface (pure numpy, no I/O).

Updates are folded into a :class:`StreamingMean` as they arrive, so the
aggregator holds one running sum the size of the model, never one copy per
client (Flower's server-side FedAvg keeps every reply). A strategy then turns
the weighted mean of the client weights into the next global weights; server
optimisers (FedAvgM, FedAdam, FedYogi) keep their state between rounds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar

import numpy as np

__all__ = ["Params", "Strategy", "StreamingMean", "weighted_mean"]

Params = dict[str, np.ndarray]


class StreamingMean:
    """Running example-weighted mean of named arrays, accumulated in float64."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sums = {name: np.zeros(a.shape, np.float64) for name, a in template.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one update in. Shapes must match the template (validate before calling)."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if set(tensors) != set(self._sums):
            raise ValueError("update tensors do not match the template")
        # Check every shape before adding anything: a late failure must not leave
        # the running sums half-updated.
        for name, acc in self._sums.items():
            if np.shape(tensors[name]) != acc.shape:
                raise ValueError(f"{name}: shape {np.shape(tensors[name])} != {acc.shape}")
        for name, acc in self._sums.items():
            # In-place multiply-add: no temporary the size of the model per update.
            acc += np.asarray(tensors[name], np.float64) * weight
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Params:
        """The weighted mean as float32 arrays. Raises ValueError when nothing was added."""
        if self.count == 0:
            raise ValueError("no updates were aggregated")
        return {
            name: (acc / self.total_weight).astype(np.float32) for name, acc in self._sums.items()
        }


def weighted_mean(updates: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> Params:
    """Example-weighted mean of ``(tensors, num_examples)`` pairs (FedAvg's core)."""
    items = list(updates)
    if not items:
        raise ValueError("no updates")
    acc = StreamingMean(items[0][0])
    for tensors, weight in items:
        acc.add(tensors, weight)
    return acc.mean()


class Strategy(ABC):
    """Turns the mean of client weights into the next global weights.

    ``client_options`` are merged into the round's training config (FedProx sets
    its proximal ``mu`` there); ``state``/``load_state`` carry server-optimiser
    state through checkpoints.
    """

    name: ClassVar[str]

    @abstractmethod
    def aggregate(
        self, current: Mapping[str, np.ndarray], client_mean: Mapping[str, np.ndarray]
    ) -> Params:
        """Next global weights from the current ones and the clients' weighted mean."""

    def client_options(self) -> dict[str, float]:
        return {}

    def state(self) -> Params:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}")
