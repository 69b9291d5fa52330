"""The weighted mean reducer (FedAvg's core), streaming, registered as ``mean``.

Updates are folded into running sums as they arrive, so the aggregator holds one
accumulator the size of the model, never one copy per client (Flower's server-side
``aggregate`` keeps every reply).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from fedge.compression import EncodedUpdate, flat_blocks
from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer
from fedge.strategies.reducers.weighted_sums import WeightedSums

__all__ = ["StreamingMean", "weighted_mean"]


class StreamingMean(Reducer):
    """Running weighted mean of named arrays (float32 partials, float64 totals).

    Memory: O(model) whatever the number of updates, 12 bytes a parameter (see
    :class:`~fedge.strategies.reducers.weighted_sums.WeightedSums`): each float32
    block is added with one fused BLAS pass into a float32 partial sum, folded into
    float64 totals every 16 updates. Adding allocates nothing the size of a tensor,
    and an encoded update is added straight from its body, block by block. The
    totals equal ``sum(update.astype(float64) * weight)`` to within about
    ``16 * 2**-24`` relative to the sum of the terms' magnitudes.
    """

    name = "mean"

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self._sums = WeightedSums(template)

    def _check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        # Every shape is checked before anything is added: a late failure must not
        # leave the running sums half-updated.
        if set(shapes) != self._sums.names:
            raise ValueError("update tensors do not match the template")
        for name, shape in shapes.items():
            if shape != self._sums.shape(name):
                raise ValueError(f"{name}: shape {shape} != {self._sums.shape(name)}")

    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if not math.isfinite(weight):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        self._check_shapes({name: np.shape(value) for name, value in update.items()})
        for name, value in update.items():
            self._sums.add_blocks(name, flat_blocks(np.asarray(value).reshape(-1)), weight)
        self._sums.end_update()

    def add_encoded(self, update: EncodedUpdate, weight: float) -> None:
        """Accumulate a validated update straight from its encoded body (no decoded copy)."""
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be positive and finite, got {weight}")
        self._check_shapes({slot.name: slot.shape for slot in update.layout.slots})
        for slot in update.layout.slots:
            self._sums.add_blocks(slot.name, update.blocks(slot), weight,
                                  magnitude=update.magnitude(slot.name))
        self._sums.end_update()
        self.total_weight += weight
        self.count += 1

    def result(self) -> Params:
        """The weighted mean as float32 arrays. Raises ValueError when nothing was added."""
        if self.count == 0:
            raise ValueError("no updates were aggregated")
        out: Params = {}
        for name, acc in self._sums.totals().items():
            # One pass: divide in float64, round once into the float32 result.
            out[name] = np.divide(acc, self.total_weight, out=np.empty(acc.shape, np.float32),
                                  casting="same_kind")
        return out

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
