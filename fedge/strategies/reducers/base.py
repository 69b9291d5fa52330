"""The reducer interface: folds one round's accepted updates into one aggregate.

A reducer is built fresh for every round from a *template* (the tensor names and
shapes every update must have), is fed each accepted update with its weight, and
is asked once, when the round closes, for the result. It never sees the wire:
updates reach it already decoded and validated against the same template.

Two families fit this interface:

* streaming reducers (:class:`~fedge.strategies.reducers.mean.StreamingMean`,
  :class:`~fedge.strategies.reducers.stats.FeatureStatsReducer`) fold each update
  into running sums as it arrives and hold O(model) memory whatever the fleet size;
* buffered reducers (:class:`~fedge.strategies.reducers.buffered.BufferedReducer`:
  coordinate-wise median, trimmed mean, Krum) need every update at once and hold
  O(updates x model).

Every reducer documents which family it is in and hence its memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from fedge.compression import EncodedUpdate
from fedge.strategies.params import Params

__all__ = ["Reducer"]


class Reducer(ABC):
    """Accumulates weighted updates; ``result()`` is their aggregate.

    :meth:`add` checks the weight and counts the update; the subclass's :meth:`_fold`
    takes it in. ``add`` raises ``ValueError`` for an update that does not match the
    template (a caller bug: validation should have refused it) and
    :class:`~fedge.errors.UpdateRejectedError` for a well-formed update whose values
    cannot be aggregated; either way the reducer's state is unchanged.
    :meth:`result` raises ``ValueError`` when there is nothing to reduce.

    Memory: this base holds two numbers; see each subclass for its own.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.count = 0
        """Number of updates added."""
        self.total_weight = 0.0
        """Sum of the weights of the updates added."""

    def add(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold in one update with a positive ``weight`` (e.g. its number of examples)."""
        if not weight > 0:  # also refuses NaN
            raise ValueError(f"weight must be positive, got {weight}")
        self._fold(update, weight)
        self.total_weight += weight
        self.count += 1

    def add_encoded(self, update: EncodedUpdate, weight: float) -> None:
        """Fold in a validated (possibly compressed) update, see :meth:`add`.

        The default decodes it to float32 arrays and calls :meth:`add`; a streaming
        reducer overrides it to accumulate block by block without that copy.
        """
        self.add(update.decompress(), weight)

    @abstractmethod
    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        """Take in one update whose weight is known to be positive, or raise unchanged."""

    @abstractmethod
    def result(self) -> Params:
        """The aggregate of everything added so far, as new float32 arrays."""
