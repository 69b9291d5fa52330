"""The weighted mean reducer (FedAvg's core), streaming, registered as ``mean``.

Updates are folded into running float64 sums as they arrive, so the aggregator
holds one accumulator the size of the model, never one copy per client (Flower's
server-side FedAvg keeps every reply).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedge.compression import BLOCK, EncodedUpdate
from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer

__all__ = ["StreamingMean", "weighted_mean"]


class StreamingMean(Reducer):
    """Running weighted mean of named arrays, accumulated in float64.

    Memory: one float64 array per template tensor (O(model)), whatever the number
    of updates, plus one float64 scratch block of :data:`~fedge.compression.BLOCK`
    entries: an update is multiplied by its weight block by block into the scratch
    and added from there, so adding allocates nothing the size of a tensor.
    ``sums += weight * update`` computed this way is bit for bit what
    ``sums += update.astype(float64) * weight`` gives.
    """

    name = "mean"

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self._sums = {name: np.zeros(a.shape, np.float64) for name, a in template.items()}
        self._scratch: np.ndarray | None = None

    def _block(self, size: int | None = None) -> np.ndarray:
        """The scratch block, allocated once (at least ``size`` entries when given)."""
        if size is None:
            longest = max((a.size for a in self._sums.values()), default=0)
            size = min(BLOCK, longest)
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(size, np.float64)
        return self._scratch

    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if set(update) != set(self._sums):
            raise ValueError("update tensors do not match the template")
        # Check every shape before adding anything: a late failure must not leave
        # the running sums half-updated.
        for name, acc in self._sums.items():
            if np.shape(update[name]) != acc.shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != {acc.shape}")
        scratch = self._block()
        for name, acc in self._sums.items():
            flat = acc.reshape(-1)  # a view: the sums are C-contiguous
            values = np.asarray(update[name]).reshape(-1)
            for s in range(0, flat.size, BLOCK):
                e = min(s + BLOCK, flat.size)
                product = scratch[: e - s]
                product[...] = values[s:e]  # exact: float32 -> float64
                product *= weight
                flat[s:e] += product

    def add_encoded(self, update: EncodedUpdate, weight: float) -> None:
        """Accumulate a validated update straight from its encoded body (no decoded copy)."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        update.accumulate_into(
            self._sums, weight=weight, scratch=self._block(update.scratch_size())
        )
        self.total_weight += weight
        self.count += 1

    def result(self) -> Params:
        """The weighted mean as float32 arrays. Raises ValueError when nothing was added."""
        if self.count == 0:
            raise ValueError("no updates were aggregated")
        return {
            name: (acc / self.total_weight).astype(np.float32) for name, acc in self._sums.items()
        }

    def mean(self) -> Params:
        """Same as :meth:`result` (the name callers used before reducers were pluggable)."""
        return self.result()


def weighted_mean(updates: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> Params:
    """Example-weighted mean of ``(tensors, num_examples)`` pairs (FedAvg's core)."""
    items = list(updates)
    if not items:
        raise ValueError("no updates")
    acc = StreamingMean(items[0][0])
    for tensors, weight in items:
        acc.add(tensors, weight)
    return acc.result()
