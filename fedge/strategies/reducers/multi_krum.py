"""Multi-Krum: the weighted mean of the ``m`` best-scored updates, as ``multi_krum``.

El Mhamdi et al. 2018 / Blanchard et al. 2017: the updates are scored as in
:mod:`~fedge.strategies.reducers.krum` and the ``m`` lowest-scoring ones (default
``n - f``) are averaged, weighted by their (bounded) example counts. Scores are
computed once, as Flower's ``aggregate_krum`` does, not re-computed after each pick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedge.strategies.reducers.krum import Krum
from fedge.strategies.reducers.spool import DEFAULT_CHUNK, MemorySpool, SpoolFactory

__all__ = ["MultiKrum"]


class MultiKrum(Krum):
    """Example-weighted mean of the ``m`` updates with the lowest Krum scores.

    ``f``: attacking devices assumed (default 1); ``m``: updates kept (default
    ``n - f``, at most ``n``). Memory: as :class:`~fedge.strategies.reducers.krum.Krum`.
    """

    name = "multi_krum"

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        f: float = 1,
        m: float | None = None,
        chunk_size: float = DEFAULT_CHUNK,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__(template, f=f, chunk_size=chunk_size, spool=spool)
        if m is not None and not (math.isfinite(m) and float(m).is_integer() and m >= 1):
            raise ValueError(f"m must be a whole number >= 1, got {m}")
        self.m = None if m is None else int(m)

    def _choose(self, scores: np.ndarray) -> list[int]:
        n = len(scores)
        keep = min(self.m if self.m is not None else n - self.f, n)
        return [int(i) for i in np.argsort(scores, kind="stable")[:keep]]
