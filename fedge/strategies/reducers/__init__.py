"""Reducers: how one round's accepted updates become one aggregate, selectable by name.

``REDUCERS`` holds the reducers a training round can use (``reducer = "<name>"`` in
the aggregator config, with keyword ``reducer_options``). Built in:

* ``mean`` — :class:`StreamingMean`, the example-weighted mean, O(model) memory.

The federated-statistics round always uses :class:`FeatureStatsReducer`. Robust
reducers (coordinate-wise median, trimmed mean, Krum) subclass
:class:`BufferedReducer`, one module each, and are added to ``REDUCERS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from fedge.errors import ConfigError
from fedge.strategies.reducers.base import Reducer
from fedge.strategies.reducers.buffered import BufferedReducer
from fedge.strategies.reducers.mean import StreamingMean, weighted_mean
from fedge.strategies.reducers.stats import STATS_TENSORS, FeatureStatsReducer, stats_template

__all__ = [
    "REDUCERS",
    "STATS_TENSORS",
    "BufferedReducer",
    "FeatureStatsReducer",
    "Reducer",
    "ReducerFactory",
    "StreamingMean",
    "make_reducer",
    "stats_template",
    "weighted_mean",
]

ReducerFactory = Callable[[Mapping[str, np.ndarray]], Reducer]
"""Builds a round's reducer from its template (tensor names and shapes)."""

REDUCERS: dict[str, Callable[..., Reducer]] = {
    StreamingMean.name: StreamingMean,
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
