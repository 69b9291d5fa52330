"""Coordinate-wise median of a round's updates, registered as ``median``.

Each coordinate of the aggregate is the median of that coordinate across the
round's updates (Yin et al. 2018): fewer than half of the updates, however
extreme, cannot drag it outside the range of the honest ones. Weights (example
counts) are ignored, so an inflated count buys nothing. For an even number of
updates the two middle values are averaged (``numpy.median``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.strategies.reducers.spool import DEFAULT_CHUNK, MemorySpool, SpooledReducer, SpoolFactory

__all__ = ["CoordinateMedian"]


class CoordinateMedian(SpooledReducer):
    """Coordinate-wise median (unweighted), computed one column slab at a time.

    Memory: the spool's rows (on disk in the aggregator service), a read slab of
    ``N x chunk`` float32 plus ``numpy.median``'s partitioned copy of it (another
    ``N x chunk`` float32), and the model-sized float32 result. With the default
    64k-coordinate chunk and 100 updates that is about 50 MiB beyond the model.
    """

    name = "median"

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        chunk_size: float = DEFAULT_CHUNK,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__(template, chunk_size=chunk_size, spool=spool)

    def _reduce_chunk(self, slab: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.asarray(np.median(slab, axis=0), np.float64)
