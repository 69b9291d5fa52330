"""Sliding windows, RUL targets and mergeable feature statistics (pure numpy).

The usual C-MAPSS protocol trains on every 30-cycle window of a run-to-failure unit,
labelled with the piecewise-linear remaining useful life (RUL) at the window's end,
and evaluates on the *last* window of each test unit. :class:`FeatureStats` carries
the sufficient statistics (count, sum, sum of squares) for z-score normalisation,
so that devices can share them instead of raw readings and the aggregator can
combine them into fleet-wide statistics that equal those of the pooled data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from fedge.errors import DataError

__all__ = [
    "DEFAULT_RUL_CAP",
    "DEFAULT_WINDOW",
    "STD_FLOOR",
    "FeatureStats",
    "last_window",
    "make_windows",
    "rul_targets",
]

DEFAULT_WINDOW = 30
DEFAULT_RUL_CAP = 125.0
# A feature that never moves would otherwise divide by zero when normalised.
STD_FLOOR = 1e-6

FloatArray = npt.NDArray[np.floating[Any]]


def rul_targets(n_cycles: int, *, cap: float = DEFAULT_RUL_CAP) -> npt.NDArray[np.float32]:
    """Piecewise-linear RUL of a run-to-failure unit with ``n_cycles`` cycles.

    The last cycle has RUL 0, the one before 1, and so on; values above ``cap`` are
    clipped to ``cap`` because early-life degradation is not observable, so a
    model cannot (and should not try to) distinguish RUL 300 from RUL 200.
    Pass ``cap=math.inf`` for the raw linear RUL.
    """
    if isinstance(n_cycles, bool) or not isinstance(n_cycles, int | np.integer):
        raise DataError(f"n_cycles must be an int, got {type(n_cycles).__name__}")
    if n_cycles < 0:
        raise DataError(f"n_cycles must be >= 0, got {n_cycles}")
    if not cap > 0:  # also rejects NaN
        raise DataError(f"cap must be > 0, got {cap}")
    rul = np.arange(int(n_cycles) - 1, -1, -1, dtype=np.float64)
    return np.minimum(rul, cap).astype(np.float32)


def _check_sensors(sensors: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(sensors)
    if arr.ndim != 2:
        raise DataError(f"sensors must be 2-D (cycles, features), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"sensors must be real numbers, got dtype {arr.dtype}")
    return arr


def _check_window(window: int, name: str = "window") -> int:
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
        raise DataError(f"{name} must be a positive int, got {window!r}")
    return int(window)


@overload
def make_windows(
    sensors: npt.ArrayLike, targets: None, *, window: int = ..., stride: int = ...
) -> tuple[npt.NDArray[np.float32], None]: ...


@overload
def make_windows(
    sensors: npt.ArrayLike, targets: npt.ArrayLike, *, window: int = ..., stride: int = ...
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...


def make_windows(
    sensors: npt.ArrayLike,
    targets: npt.ArrayLike | None,
    *,
    window: int = DEFAULT_WINDOW,
    stride: int = 1,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Cut one unit's readings into overlapping windows.

    ``sensors`` has shape ``(T, F)``. A window ends at every cycle ``t >= window-1``;
    with ``stride > 1`` the end points are anchored at the *last* cycle (``T-1``,
    ``T-1-stride``, ...) so the windows closest to failure, which carry the most
    information, are always kept. Windows come back in chronological order with
    shape ``(N, window, F)``; the label of a window is ``targets`` at its end.
    A unit shorter than ``window`` yields ``N == 0`` windows.
    """
    x = _check_sensors(sensors)
    w = _check_window(window)
    s = _check_window(stride, "stride")
    n_cycles, n_features = x.shape
    y: FloatArray | None = None
    if targets is not None:
        y = np.asarray(targets)
        if y.shape != (n_cycles,):
            raise DataError(f"targets must have shape ({n_cycles},), got {y.shape}")
    if n_cycles < w:
        empty_y = None if y is None else np.empty((0,), dtype=np.float32)
        return np.empty((0, w, n_features), dtype=np.float32), empty_y
    ends = np.arange(n_cycles - 1, w - 2, -s)[::-1]
    # A strided view costs nothing; the fancy index below makes the one real copy.
    view = np.lib.stride_tricks.sliding_window_view(x, w, axis=0)  # (T-w+1, F, w)
    windows = view[ends - (w - 1)].transpose(0, 2, 1).astype(np.float32)
    labels = None if y is None else y[ends].astype(np.float32)
    return windows, labels


def last_window(sensors: npt.ArrayLike, *, window: int = DEFAULT_WINDOW) -> npt.NDArray[np.float32]:
    """The last ``window`` rows of ``sensors`` (shape ``(window, F)``).

    A unit shorter than the window is padded at the front by repeating its first
    row, the common C-MAPSS test protocol: it adds no fake degradation trend.
    """
    x = _check_sensors(sensors)
    w = _check_window(window)
    if x.shape[0] == 0:
        raise DataError("cannot take the last window of a unit with no cycles")
    if x.shape[0] >= w:
        return x[-w:].astype(np.float32)
    pad = np.repeat(x[:1], w - x.shape[0], axis=0)
    return np.concatenate([pad, x]).astype(np.float32)


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Per-feature count, sum and sum of squares, mergeable across devices.

    Because every field is a plain sum, merging the stats of several devices gives
    exactly (up to float rounding) the stats of their concatenated data, so the
    aggregator can compute fleet-wide normalisation without seeing raw readings.
    The arrays are float64: sums of squares of raw sensor values (~1e4) over many
    cycles lose too much precision in float32.
    """

    count: int
    sum: npt.NDArray[np.float64]
    sumsq: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise DataError(f"count must be a non-negative int, got {self.count!r}")
        total = np.asarray(self.sum, dtype=np.float64)
        squares = np.asarray(self.sumsq, dtype=np.float64)
        if total.ndim != 1 or total.shape != squares.shape:
            raise DataError(
                f"sum and sumsq must be 1-D of equal length, got {total.shape} and {squares.shape}"
            )
        if not (np.all(np.isfinite(total)) and np.all(np.isfinite(squares))):
            raise DataError("feature stats must be finite")
        if np.any(squares < 0):
            raise DataError("sumsq must be non-negative")
        # Freeze private copies so a caller's later writes cannot change the stats.
        total = total.copy()
        squares = squares.copy()
        total.flags.writeable = False
        squares.flags.writeable = False
        object.__setattr__(self, "sum", total)
        object.__setattr__(self, "sumsq", squares)

    @property
    def n_features(self) -> int:
        """Number of features the stats describe."""
        return int(self.sum.shape[0])

    @classmethod
    def empty(cls, n_features: int) -> FeatureStats:
        """Stats of zero rows (the neutral element of :meth:`merge`)."""
        if n_features < 0:
            raise DataError(f"n_features must be >= 0, got {n_features}")
        return cls(0, np.zeros(n_features), np.zeros(n_features))

    @classmethod
    def from_array(cls, x: npt.ArrayLike) -> FeatureStats:
        """Stats of the rows of ``x`` (shape ``(T, F)``)."""
        arr = _check_sensors(x).astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise DataError("cannot compute feature stats of non-finite values")
        return cls(int(arr.shape[0]), arr.sum(axis=0), np.square(arr).sum(axis=0))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Stats of the union of the rows behind ``self`` and ``other``."""
        if other.n_features != self.n_features:
            raise DataError(
                f"cannot merge stats of {self.n_features} and {other.n_features} features"
            )
        return FeatureStats(
            self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq
        )

    @classmethod
    def combine(cls, parts: Iterable[FeatureStats]) -> FeatureStats:
        """Merge any number of stats; at least one is required (it fixes F)."""
        items = list(parts)
        if not items:
            raise DataError("combine() needs at least one FeatureStats")
        result = items[0]
        for part in items[1:]:
            result = result.merge(part)
        return result

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """Per-feature mean."""
        if self.count == 0:
            raise DataError("mean of zero rows is undefined")
        return self.sum / self.count

    @property
    def var(self) -> npt.NDArray[np.float64]:
        """Per-feature population variance (never negative)."""
        mean = self.mean
        # E[x²] - E[x]² can dip just below 0 through rounding on constant features.
        return np.maximum(self.sumsq / self.count - mean * mean, 0.0)

    @property
    def std(self) -> npt.NDArray[np.float64]:
        """Per-feature population standard deviation, floored at ``STD_FLOOR``."""
        return np.maximum(np.sqrt(self.var), STD_FLOOR)

    def normalise(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Z-score ``x`` (``(..., F)``) with these stats, as float32."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 0 or arr.shape[-1] != self.n_features:
            raise DataError(f"expected last axis of {self.n_features} features, got {arr.shape}")
        return ((arr - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``count``, ``sum``, ``sumsq``) for sending over the wire."""
        return {"count": self.count, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, max_features: int = 4096) -> FeatureStats:
        """Parse :meth:`to_dict` output from an untrusted source; raises ``DataError``."""
        try:
            count = data["count"]
            total = data["sum"]
            squares = data["sumsq"]
        except (KeyError, TypeError) as exc:
            raise DataError(f"feature stats need count, sum and sumsq: {exc}") from exc
        if not isinstance(total, list | tuple) or not isinstance(squares, list | tuple):
            raise DataError("sum and sumsq must be lists of numbers")
        if len(total) > max_features:
            raise DataError(f"too many features: {len(total)} > {max_features}")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (*total, *squares)
        ):
            raise DataError("sum and sumsq must contain only numbers")
        if isinstance(count, float) and count.is_integer() and math.isfinite(count):
            count = int(count)
        return cls(count, np.asarray(total, dtype=np.float64), np.asarray(squares, np.float64))
