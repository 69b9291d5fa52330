"""Unit context for the model's input: the unit's own baseline and its age (pure numpy).

A 30-cycle window alone confounds two things: a reading can be high because the
unit is worn, or because this particular unit (sensor calibration, manufacturing
spread, initial wear) always read high. A device knows more than the window: it
has watched its unit since the unit was installed. With ``ModelSpec.context ==
"history"`` every time step of a window carries, besides the sensors,

* the unit's **baseline**: the mean of its first ``baseline_cycles`` readings,
  so the model can compare the present with what is normal *for this unit*; and
* the unit's **age**: cycles since its first reading (``cycle + 1``).

The model turns these into per-sensor drift rates, ``(reading - baseline) / age``
(see :meth:`fedge.models.base.FaultModel.normalise`): how fast this unit is
moving away from its own normal. Both inputs are causal: a window ending at
cycle ``c`` uses only readings up to ``c`` (a unit younger than
``baseline_cycles`` gets the mean of what it has so far). On C-MAPSS FD001,
cross-validation over the training engines put the validation RMSE at 15.1
cycles for the window alone and 11.3 with drift rates (federated non-IID: 14.6
and 11.1); see benchmarks/cmapss.py.

It assumes one operating regime: a baseline averaged over mixed regimes is noise
(on the simulator's non-IID sites, whose regimes are sticky, it cost ~4 cycles),
so multi-regime fleets (the simulator, FD002/FD004) keep ``context="window"``.

The per-row layout is ``[sensors (F), baseline (F), age (1)]``; the federated
statistics round summarises ``[sensors, age]`` (:func:`stats_rows`), and the
baseline is normalised like the sensors it averages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.data.windows import last_window, make_windows
from fedge.errors import DataError
from fedge.spec import MAX_BASELINE_CYCLES, ModelSpec

__all__ = ["add_context", "stats_rows", "unit_baseline", "unit_last_window", "unit_windows"]


def _as_cycles(cycles: npt.ArrayLike, n: int, what: str) -> npt.NDArray[np.int64]:
    arr = np.asarray(cycles)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{what} must be {n} integer cycle numbers, got {arr.dtype} {arr.shape}")
    if n and int(arr.min()) < 0:
        raise DataError(f"{what} must be >= 0")
    return arr.astype(np.int64)


def unit_baseline(
    head: npt.ArrayLike, *, baseline_cycles: int, end_cycles: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """The unit's baseline as seen by windows ending at ``end_cycles``: shape (N, F).

    ``head`` holds the unit's first readings in cycle order (row ``i`` is cycle
    ``i``). A window ending at cycle ``c`` gets the mean of rows
    ``0 .. min(baseline_cycles, c + 1, len(head)) - 1``.
    """
    h = np.asarray(head, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] == 0:
        raise DataError(f"unit head must be a non-empty (cycles, features) array, got {h.shape}")
    if baseline_cycles < 1:
        raise DataError(f"baseline_cycles must be >= 1, got {baseline_cycles}")
    ends = np.asarray(end_cycles)
    if ends.ndim != 1:
        raise DataError(f"end_cycles must be 1-D, got shape {ends.shape}")
    ends = _as_cycles(ends, ends.shape[0], "end_cycles")
    usable = min(baseline_cycles, h.shape[0])
    means = np.cumsum(h[:usable], axis=0) / np.arange(1, usable + 1)[:, None]
    rows = np.minimum(ends, usable - 1)
    out: npt.NDArray[np.float32] = means[rows].astype(np.float32)
    return out


def add_context(
    windows: npt.ArrayLike,
    *,
    end_cycles: npt.ArrayLike,
    head: npt.ArrayLike | None,
    spec: ModelSpec,
) -> npt.NDArray[np.float32]:
    """Windows (N, W, F) of one unit -> the model's input (N, W, ``spec.input_features``).

    ``end_cycles[i]`` is the unit's cycle number (0-based) at the last row of
    window ``i``; ``head`` its first readings (see :func:`unit_baseline`). With
    ``spec.context == "window"`` the windows come back unchanged (as float32).
    """
    x = np.asarray(windows)
    if x.ndim != 3 or x.shape[2] != spec.n_features:
        raise DataError(
            f"windows must have shape (N, W, {spec.n_features}), got {x.shape}"
        )
    x = x.astype(np.float32, copy=False)
    if spec.context == "window":
        return x
    n, w, f = x.shape
    ends = _as_cycles(end_cycles, n, "end_cycles")
    if head is None:
        raise DataError("history context needs the unit's first readings (head)")
    h = np.asarray(head)
    if h.ndim != 2 or h.shape[1] != f:
        raise DataError(f"unit head must have shape (cycles, {f}), got {h.shape}")
    out = np.empty((n, w, 2 * f + 1), np.float32)
    out[:, :, :f] = x
    if n:
        out[:, :, f : 2 * f] = unit_baseline(
            h, baseline_cycles=spec.baseline_cycles, end_cycles=ends
        )[:, None, :]
    # Age of each row: a window ending at cycle c covers cycles c-W+1 .. c (ages one more);
    # rows before the unit's first cycle (a padded short unit) repeat its first reading.
    ages = ends[:, None] - (w - 1) + np.arange(w)[None, :] + 1
    out[:, :, 2 * f] = np.maximum(ages, 1).astype(np.float32)
    return out


def stats_rows(
    values: npt.ArrayLike, *, cycles: npt.ArrayLike, spec: ModelSpec
) -> npt.NDArray[Any]:
    """Per-reading rows (T, ``spec.stats_features``) for the federated statistics round."""
    v = np.asarray(values)
    if v.ndim != 2 or v.shape[1] != spec.n_features:
        raise DataError(f"readings must have shape (T, {spec.n_features}), got {v.shape}")
    if spec.context == "window":
        return v
    c = _as_cycles(cycles, v.shape[0], "cycles")
    return np.concatenate([v.astype(np.float64), (c + 1).astype(np.float64)[:, None]], axis=1)


def unit_windows(
    values: npt.ArrayLike, targets: npt.ArrayLike, *, spec: ModelSpec
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Every model input of a whole unit (readings from its first cycle) with its label."""
    v = np.asarray(values)
    x, y = make_windows(v, targets, window=spec.window)
    ends = np.arange(spec.window - 1, spec.window - 1 + x.shape[0])
    return add_context(x, end_cycles=ends, head=v[:MAX_BASELINE_CYCLES], spec=spec), y


def unit_last_window(values: npt.ArrayLike, *, spec: ModelSpec) -> npt.NDArray[np.float32]:
    """The model input (W, ``spec.input_features``) at a unit's last reading.

    ``values`` are the unit's readings from its first cycle; the C-MAPSS test
    protocol predicts here.
    """
    v = np.asarray(values)
    window = last_window(v, window=spec.window)[None, ...]
    ends = np.array([v.shape[0] - 1])
    inputs = add_context(window, end_cycles=ends, head=v[:MAX_BASELINE_CYCLES], spec=spec)
    out: npt.NDArray[np.float32] = inputs[0]
    return out
