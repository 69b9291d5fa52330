"""Coordinate-wise trimmed mean of a round's updates, registered as ``trimmed_mean``.

For each coordinate the ``k`` largest and ``k`` smallest values across the round's
updates are dropped and the rest averaged (Yin et al. 2018). ``k`` is given either
as a fraction of the round's updates per side (``trim``, default 0.2, rounded down)
or as a count (``trim_count``); it is reduced to ``(N - 1) // 2`` when a round has
too few updates, which leaves the median. Weights (example counts) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedge.strategies.reducers.spool import DEFAULT_CHUNK, MemorySpool, SpooledReducer, SpoolFactory

__all__ = ["TrimmedMean"]


class TrimmedMean(SpooledReducer):
    """Coordinate-wise ``k``-trimmed mean (unweighted), one column slab at a time.

    Memory: the spool's rows (on disk in the aggregator service), a read slab of
    ``N x chunk`` float32, its sorted copy (``N x chunk`` float32) and a float64
    sum of one chunk, plus the model-sized float32 result.
    """

    name = "trimmed_mean"

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        trim: float | None = None,
        trim_count: float | None = None,
        chunk_size: float = DEFAULT_CHUNK,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__(template, chunk_size=chunk_size, spool=spool)
        if trim is not None and trim_count is not None:
            raise ValueError("give trim (a fraction) or trim_count, not both")
        if trim_count is not None:
            if not (math.isfinite(trim_count) and float(trim_count).is_integer()):
                raise ValueError(f"trim_count must be a whole number, got {trim_count}")
            if trim_count < 0:
                raise ValueError(f"trim_count must be >= 0, got {trim_count}")
        elif trim is None:
            trim = 0.2
        if trim is not None and not 0.0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        self.trim = trim
        self.trim_count = None if trim_count is None else int(trim_count)

    def trimmed(self, n: int) -> int:
        """Values dropped from each end of a coordinate when ``n`` updates arrived."""
        k = self.trim_count if self.trim_count is not None else math.floor((self.trim or 0.0) * n)
        return max(0, min(k, (n - 1) // 2))

    def _reduce_chunk(self, slab: np.ndarray, weights: np.ndarray) -> np.ndarray:
        n = slab.shape[0]
        k = self.trimmed(n)
        if k == 0:
            return np.asarray(slab.mean(axis=0, dtype=np.float64))
        ordered = np.sort(slab, axis=0)
        return np.asarray(ordered[k : n - k].mean(axis=0, dtype=np.float64))
