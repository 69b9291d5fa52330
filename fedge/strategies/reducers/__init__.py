r"""Reducers: how one round's accepted updates become one aggregate, selectable by name.

``REDUCERS`` holds the reducers a training round can use (``reducer = "<name>"`` in
the aggregator config, with keyword ``reducer_options``). Built in:

* ``mean`` — :class:`StreamingMean`, the example-weighted mean, O(model) memory;
* ``median`` — :class:`CoordinateMedian`, coordinate-wise median;
* ``trimmed_mean`` — :class:`TrimmedMean` (``trim`` fraction or ``trim_count``);
* ``krum`` / ``multi_krum`` — :class:`Krum` / :class:`MultiKrum` (``f`` attackers
  assumed, ``m`` updates kept).

The robust four are :class:`SpooledReducer`\ s: each update becomes one float32 row
of a spool (on disk in the aggregator service) and the parameter vector is reduced
``chunk_size`` coordinates at a time, so memory stays ~ N x chunk beyond the model.
:class:`BoundedReducer` wraps any of them with the server-side weight cap and norm
bound (:class:`UpdateBounds`).

The federated-statistics round always uses :class:`FeatureStatsReducer`.
:class:`BufferedReducer` (every update kept in memory) remains for small custom reducers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from fedge.errors import ConfigError
from fedge.strategies.reducers.base import Reducer
from fedge.strategies.reducers.bounded import (
    BoundedReducer,
    NormAction,
    ReductionReport,
    UpdateBounds,
)
from fedge.strategies.reducers.buffered import BufferedReducer
from fedge.strategies.reducers.krum import Krum
from fedge.strategies.reducers.mean import StreamingMean, weighted_mean
from fedge.strategies.reducers.median import CoordinateMedian
from fedge.strategies.reducers.multi_krum import MultiKrum
from fedge.strategies.reducers.spool import (
    DEFAULT_CHUNK,
    MemorySpool,
    RowSpool,
    SpooledReducer,
    SpoolFactory,
)
from fedge.strategies.reducers.stats import STATS_TENSORS, FeatureStatsReducer, stats_template
from fedge.strategies.reducers.trimmed_mean import TrimmedMean

__all__ = [
    "DEFAULT_CHUNK",
    "REDUCERS",
    "STATS_TENSORS",
    "BoundedReducer",
    "BufferedReducer",
    "CoordinateMedian",
    "FeatureStatsReducer",
    "Krum",
    "MemorySpool",
    "MultiKrum",
    "NormAction",
    "Reducer",
    "ReducerFactory",
    "ReductionReport",
    "RowSpool",
    "SpoolFactory",
    "SpooledReducer",
    "StreamingMean",
    "TrimmedMean",
    "UpdateBounds",
    "make_reducer",
    "stats_template",
    "weighted_mean",
]

ReducerFactory = Callable[[Mapping[str, np.ndarray]], Reducer]
"""Builds a round's reducer from its template (tensor names and shapes)."""

REDUCERS: dict[str, Callable[..., Reducer]] = {
    StreamingMean.name: StreamingMean,
    CoordinateMedian.name: CoordinateMedian,
    TrimmedMean.name: TrimmedMean,
    Krum.name: Krum,
    MultiKrum.name: MultiKrum,
}
"""Training-round reducers by name; each is called as ``factory(template, **options)``."""


def make_reducer(name: str, options: Mapping[str, float] | None = None) -> ReducerFactory:
    """The factory of the reducer registered as ``name``, with keyword ``options`` bound.

    The options are checked now (by building the reducer over an empty template), so
    a bad configuration fails at start-up rather than when the first round closes.
    """
    try:
        factory = REDUCERS[name]
    except KeyError:
        raise ConfigError(f"unknown reducer {name!r}; choose one of {sorted(REDUCERS)}") from None
    bound = dict(options or {})
    try:
        factory({}, **bound)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for reducer {name!r}: {exc}") from exc
    return functools.partial(factory, **bound)
