"""The federated-statistics reducer: merges devices' :class:`FeatureStats`.

In the statistics round every device replies with its per-feature ``count``,
``sum`` and ``sumsq`` (as tensors of shape ``(1,)``, ``(F,)`` and ``(F,)``); the
merged stats equal those of the pooled readings, and their mean and standard
deviation become the model's input normalisation. The merging and the moments
are :class:`~fedge.data.windows.FeatureStats`'s own, so device and aggregator
compute them one way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fedge.data.windows import FeatureStats
from fedge.errors import DataError, RejectReason, UpdateRejectedError
from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer

__all__ = ["STATS_TENSORS", "FeatureStatsReducer", "stats_template"]

STATS_TENSORS = ("count", "sum", "sumsq")
"""The tensors of a statistics reply."""


def stats_template(n_features: int) -> Params:
    """The tensors (names, shapes, float64 dtype) of a statistics reply over ``n_features``."""
    return {
        "count": np.zeros(1, np.float64),
        "sum": np.zeros(n_features, np.float64),
        "sumsq": np.zeros(n_features, np.float64),
    }


# Beyond 2**53 a float64 no longer holds every whole number, so a count could not be exact.
_MAX_COUNT = 2**53


class FeatureStatsReducer(Reducer):
    """Sums count, sum and sum of squares across updates; ``result()`` is mean and std.

    The update weight (the reply's number of examples) is only counted in
    ``total_weight``: each reply's own ``count`` is what weighs its rows.

    Memory: one :class:`FeatureStats`, i.e. two float64 arrays of ``F`` features,
    whatever the number of updates.
    """

    name = "stats"

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        if set(template) != set(STATS_TENSORS):
            raise ValueError(
                f"a stats template has exactly {STATS_TENSORS}, got {sorted(template)}"
            )
        self.n_features = int(np.shape(template["sum"])[0])
        self._stats: FeatureStats | None = None

    @property
    def stats(self) -> FeatureStats:
        """The merged statistics so far (zero rows before the first update)."""
        return self._stats if self._stats is not None else FeatureStats.empty(self.n_features)

    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if set(update) != set(STATS_TENSORS):
            raise ValueError("update tensors do not match the stats template")
        count = np.asarray(update["count"], np.float64)
        shape = (self.n_features,)
        if count.shape != (1,) or np.shape(update["sum"]) != shape:
            raise ValueError(
                f"stats shapes {count.shape}, {np.shape(update['sum'])} != (1,), {shape}"
            )
        rows = float(count[0])
        if not (math.isfinite(rows) and rows.is_integer() and 0 <= rows <= _MAX_COUNT):
            raise UpdateRejectedError(
                RejectReason.MALFORMED, f"stats count must be a whole number >= 0, got {rows}"
            )
        try:
            part = FeatureStats(int(rows), update["sum"], update["sumsq"])
            # Start from the first part, not from zeros: 0.0 + x is not always x (-0.0).
            merged = part if self._stats is None else self._stats.merge(part)
        except DataError as exc:  # negative sums of squares, sums overflowing to inf
            raise UpdateRejectedError(RejectReason.MALFORMED, f"stats: {exc}") from exc
        self._stats = merged

    def result(self) -> Params:
        """``{"mean": ..., "std": ...}`` as float32 (std floored at ``STD_FLOOR``).

        Raises ValueError when no update, or only updates of zero rows, were added.
        """
        stats = self.stats
        if stats.count == 0:
            raise ValueError("no rows were aggregated")
        return {"mean": stats.mean.astype(np.float32), "std": stats.std.astype(np.float32)}
