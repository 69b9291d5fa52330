"""Base for robust reducers that need every update at once (median, trimmed mean, Krum).

The streaming mean cannot resist a single poisoned update: one client sending
``1e6`` moves every coordinate. Byzantine-robust aggregates (coordinate-wise
median, trimmed mean, Krum / multi-Krum) look at all updates together, so this
base keeps a private float32 copy of each one and hands them all to
:meth:`BufferedReducer.reduce` when the round closes.

A robust reducer is one module under ``fedge/strategies/reducers/`` with a
subclass of :class:`BufferedReducer` that sets ``name``, takes its options as
keyword arguments after the template (validating them in ``__init__``, which is
also called with an empty template at start-up to check the configuration), and
implements ``reduce``; registering it in ``REDUCERS`` makes it selectable with
``reducer = "<name>"`` and ``reducer_options`` in the aggregator config.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer

__all__ = ["BufferedReducer"]


class BufferedReducer(Reducer):
    """Keeps every update (as float32 copies) and reduces them all in :meth:`reduce`.

    Memory: O(updates x model): one float32 copy of every update added, plus
    whatever ``reduce`` allocates (see each subclass). This is the price of
    robustness; prefer the streaming ``mean`` when clients are trusted.
    """

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self._shapes = {name: tuple(np.shape(a)) for name, a in template.items()}
        self._updates: list[Params] = []
        self._weights: list[float] = []

    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if set(update) != set(self._shapes):
            raise ValueError("update tensors do not match the template")
        for name, shape in self._shapes.items():
            if np.shape(update[name]) != shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != {shape}")
        # Copies: the caller may reuse or free its buffers after add() returns.
        self._updates.append({name: np.array(update[name], np.float32) for name in self._shapes})
        self._weights.append(float(weight))

    def result(self) -> Params:
        """``reduce`` over every update added, in arrival order. ValueError if none was."""
        if not self._updates:
            raise ValueError("no updates were aggregated")
        out = self.reduce(self._updates, np.asarray(self._weights, np.float64))
        if set(out) != set(self._shapes):
            raise ValueError(f"{self.name} returned tensors {sorted(out)}, not the template's")
        return {name: np.asarray(value, np.float32) for name, value in out.items()}

    @abstractmethod
    def reduce(self, updates: Sequence[Params], weights: np.ndarray) -> Params:
        """The aggregate of ``updates`` (in arrival order) with their ``weights``.

        ``updates`` are float32 arrays the subclass may read but must not keep;
        ``weights`` is a float64 vector, one positive entry per update.
        """
