"""Krum: the update closest to its neighbours, registered as ``krum``.

Blanchard et al. 2017: with ``n`` updates of which at most ``f`` are Byzantine,
each update ``i`` is scored by the sum of squared distances to its ``n - f - 2``
nearest other updates, and the lowest-scoring update is the aggregate. The
guarantee needs ``n > 2f + 2``; a round with fewer updates fails (the global
model stays) rather than trust a selection that proves nothing.

Distances are accumulated one column slab at a time into an ``N x N`` float64
matrix, so the updates are never all in memory together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedge.strategies.reducers.spool import DEFAULT_CHUNK, MemorySpool, SpooledReducer, SpoolFactory

__all__ = ["Krum", "krum_scores"]


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each update from the ``N x N`` squared distances and ``f``."""
    n = distances.shape[0]
    closest = max(1, n - f - 2)
    scores = np.empty(n, np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = float(np.sort(others)[:closest].sum())
    return scores


class Krum(SpooledReducer):
    """Selects the update with the lowest Krum score (weights ignored for the choice).

    ``f``: the number of attacking devices assumed (default 1).

    Memory: the spool's rows (on disk in the aggregator service), a read slab of
    ``N x chunk`` float32 with a float64 copy and its ``N x N`` Gram product, the
    ``N x N`` float64 distance matrix, and the model-sized float32 result.
    """

    name = "krum"

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        f: float = 1,
        chunk_size: float = DEFAULT_CHUNK,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__(template, chunk_size=chunk_size, spool=spool)
        if not (math.isfinite(f) and float(f).is_integer() and f >= 0):
            raise ValueError(f"f must be a whole number >= 0, got {f}")
        self.f = int(f)
        self.selected: list[int] = []
        """Indices (arrival order) of the updates the last ``result()`` averaged."""
        self.distances: np.ndarray | None = None
        """The pairwise squared distances of the last ``result()``."""

    def pairwise_distances(self) -> np.ndarray:
        """``N x N`` squared L2 distances between the buffered updates, slab by slab."""
        n = self.count
        out = np.zeros((n, n), np.float64)
        for _, _, slab in self.slabs():
            block = slab.astype(np.float64)
            sq = np.einsum("ij,ij->i", block, block)
            out += sq[:, None] + sq[None, :] - 2.0 * (block @ block.T)
        np.fill_diagonal(out, 0.0)
        return np.maximum(out, 0.0)  # rounding can leave tiny negatives

    def _choose(self, scores: np.ndarray) -> list[int]:
        return [int(np.argmin(scores))]

    def _prepare(self, weights: np.ndarray) -> None:
        n = self.count
        if n <= 2 * self.f + 2:
            raise ValueError(f"{self.name} with f={self.f} needs more than {2 * self.f + 2} "
                             f"updates, got {n}")
        self.distances = self.pairwise_distances()
        # stable: ties go to the earliest arrival, so results are reproducible
        self.selected = sorted(self._choose(krum_scores(self.distances, self.f)))

    def _reduce_chunk(self, slab: np.ndarray, weights: np.ndarray) -> np.ndarray:
        chosen = self.selected
        w = weights[chosen]
        return np.asarray((slab[chosen].astype(np.float64) * w[:, None]).sum(axis=0) / w.sum())
