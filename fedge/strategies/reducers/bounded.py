"""Server-side bounds on what one device can do to a round: weight cap and norm bound.

A device decides what it reports: its example count (the FedAvg weight) and its
weights. Unbounded, one device claiming ``10**8`` examples with weights x1000 owns
the aggregate. :class:`BoundedReducer` wraps any reducer and, before an update
reaches it,

* caps the update's **weight** at ``max_weight`` and/or ``weight_median_multiple``
  x the round's median weight (``uniform_weights`` gives every update weight 1, as
  differential privacy needs);
* bounds the **update norm** ``||update - global||`` at ``max_norm`` and/or
  ``norm_median_multiple`` x the round's median norm, either refusing a longer
  update (``norm_action="reject"``, counted as ``norm_too_large``) or scaling its
  delta down to the bound (``"clip"``, counted in :attr:`ReductionReport.clipped`).

Fixed bounds apply as each update arrives (a rejected update is refused at once,
through the coordinator's normal rejection path). A bound derived from the round's
medians can only be known once the round closes, so with either ``*_median_multiple``
set the wrapper takes the buffered path: each (fixed-bounded) delta is appended to a
spool row as it arrives and the adaptive bounds are applied in a second pass at
:meth:`result`, row by row, into the wrapped reducer; updates refused then are
counted in :attr:`ReductionReport.rejected`.

A convex combination of deltas that each have norm <= B has norm <= B, so with a
norm bound B the ``mean`` aggregate moves the model by at most B, whatever the
weights; the weight cap limits how far one device can pull it within that ball.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fedge.errors import RejectReason, UpdateRejectedError
from fedge.strategies.params import Params
from fedge.strategies.reducers.base import Reducer
from fedge.strategies.reducers.spool import MemorySpool, RowSpool, SpoolFactory

__all__ = ["BoundedReducer", "NormAction", "ReductionReport", "UpdateBounds"]

NormAction = Literal["reject", "clip"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateBounds:
    """The bounds one round's updates are held to (all optional; None = no bound)."""

    max_weight: float | None = None
    weight_median_multiple: float | None = None
    max_norm: float | None = None
    norm_median_multiple: float | None = None
    norm_action: NormAction = "clip"
    uniform_weights: bool = False

    def __post_init__(self) -> None:
        for name in ("max_weight", "weight_median_multiple", "max_norm", "norm_median_multiple"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.norm_action not in ("reject", "clip"):
            raise ValueError(f"norm_action must be 'reject' or 'clip', got {self.norm_action!r}")

    @property
    def adaptive(self) -> bool:
        """True when a bound depends on the round's medians (the buffered path)."""
        return self.weight_median_multiple is not None or self.norm_median_multiple is not None

    @property
    def active(self) -> bool:
        """True when any bound is set."""
        return self.adaptive or self.uniform_weights or (
            self.max_weight is not None or self.max_norm is not None
        )


@dataclass(slots=True)
class ReductionReport:
    """What the bounds did in one round, for the round summary."""

    clipped: int = 0
    """Updates whose delta was scaled down to the norm bound."""
    weight_capped: int = 0
    """Updates whose weight was lowered to the cap."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Updates refused when the round closed (adaptive bounds), by reason."""
    norm_bound: float | None = None
    """The norm bound in force at the close (fixed, or the tighter adaptive one)."""
    weight_cap: float | None = None
    """The weight cap in force at the close."""


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class BoundedReducer(Reducer):
    """Applies :class:`UpdateBounds` to each update, then hands it to ``inner``.

    ``template`` is the round's global trainable weights (the base of the deltas).

    Memory: fixed bounds stream (one float64 delta of one tensor at a time, plus
    the clipped copy of one update). Adaptive bounds add the spool (one float32 row
    per update, on disk in the aggregator service) and one row plus one update's
    tensors during the second pass; then ``inner``'s own memory.
    """

    name = "bounded"

    def __init__(
        self,
        inner: Reducer,
        template: Mapping[str, np.ndarray],
        bounds: UpdateBounds,
        *,
        spool: SpoolFactory = MemorySpool,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.bounds = bounds
        self._base = {name: np.asarray(a) for name, a in template.items()}
        self._width = sum(int(a.size) for a in self._base.values())
        self._factory = spool
        self._spool: RowSpool | None = None
        self._weights: list[float] = []
        self._norms: list[float] = []
        self._clipped_rows: list[bool] = []
        self._passed = False
        self.report = ReductionReport(
            norm_bound=bounds.max_norm,
            weight_cap=1.0 if bounds.uniform_weights else bounds.max_weight,
        )

    def _delta_norm(self, update: Mapping[str, np.ndarray]) -> float:
        total = 0.0
        for name, base in self._base.items():
            d = np.asarray(update[name], np.float64) - base
            total += float(np.dot(d.ravel(), d.ravel()))
        return math.sqrt(total)

    def _scaled(self, update: Mapping[str, np.ndarray], scale: float) -> Params:
        return {
            name: (base + (np.asarray(update[name], np.float64) - base) * scale).astype(np.float32)
            for name, base in self._base.items()
        }

    def _fold(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if set(update) != set(self._base):
            raise ValueError("update tensors do not match the template")
        for name, base in self._base.items():
            if np.shape(update[name]) != base.shape:
                raise ValueError(f"{name}: shape {np.shape(update[name])} != {base.shape}")
        bounds = self.bounds
        norm = self._delta_norm(update)
        if not math.isfinite(norm):
            raise UpdateRejectedError(RejectReason.MALFORMED, "update has non-finite values")
        clipped = False
        if bounds.max_norm is not None and norm > bounds.max_norm:
            if bounds.norm_action == "reject":
                raise UpdateRejectedError(
                    RejectReason.NORM_TOO_LARGE, f"update norm {norm:.4g} > {bounds.max_norm:.4g}"
                )
            update = self._scaled(update, bounds.max_norm / norm)
            norm = bounds.max_norm
            clipped = True
        if bounds.uniform_weights:
            weight = 1.0
        if bounds.adaptive:
            # Weights are capped at the close (fixed and median caps together), once.
            parts = [
                (np.asarray(update[name], np.float64) - base).astype(np.float32).ravel()
                for name, base in self._base.items()
            ]
            if self._spool is None:
                self._spool = self._factory(self._width)
            self._spool.append(parts)
            self._weights.append(weight)
            self._norms.append(norm)
            self._clipped_rows.append(clipped)  # counted at the close, once per update
            return
        if bounds.max_weight is not None and weight > bounds.max_weight:
            weight = bounds.max_weight
            self.report.weight_capped += 1
        self.inner.add(update, weight)
        if clipped:  # counted only once the update is in
            self.report.clipped += 1

    def use_spool(self, factory: SpoolFactory) -> None:
        """Buffer adaptive-path rows with ``factory``; only before the first update."""
        if self._spool is not None:
            raise ValueError("the spool cannot change once updates were added")
        self._factory = factory

    def _second_pass(self) -> None:
        """Apply the round's median-derived bounds and feed every row to ``inner``."""
        bounds, report, spool = self.bounds, self.report, self._spool
        assert spool is not None  # noqa: S101 - only called with rows buffered
        norm_bound = bounds.max_norm
        if bounds.norm_median_multiple is not None:
            median_norm = float(np.median(self._norms))
            norm_bound = _min(norm_bound, bounds.norm_median_multiple * median_norm)
        cap = report.weight_cap
        if bounds.weight_median_multiple is not None and not bounds.uniform_weights:
            cap = _min(cap, bounds.weight_median_multiple * float(np.median(self._weights)))
        report.norm_bound, report.weight_cap = norm_bound, cap
        row = np.empty(self._width, np.float32)
        for i, (norm, weight) in enumerate(zip(self._norms, self._weights, strict=True)):
            scale = 1.0
            if norm_bound is not None and norm > norm_bound:
                if bounds.norm_action == "reject":
                    reason = RejectReason.NORM_TOO_LARGE.value
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
                    continue
                scale = norm_bound / norm
                clipped_now = True
            else:
                clipped_now = False
            if clipped_now or self._clipped_rows[i]:
                report.clipped += 1
            w = weight
            if cap is not None and w > cap:
                w = cap
                report.weight_capped += 1
            spool.read_row(i, row)
            update: Params = {}
            offset = 0
            for name, base in self._base.items():
                piece = row[offset : offset + base.size].reshape(base.shape).astype(np.float64)
                update[name] = (base + piece * scale).astype(np.float32)
                offset += base.size
            self.inner.add(update, w)

    def result(self) -> Params:
        """The wrapped reducer's result over the bounded updates (ValueError if none)."""
        if self.bounds.adaptive:
            if self._spool is None:
                raise ValueError("no updates were aggregated")
            if not self._passed:
                self._passed = True
                self._second_pass()
        return self.inner.result()

    def close(self) -> None:
        """Release this wrapper's and the wrapped reducer's buffers (idempotent)."""
        if self._spool is not None:
            self._spool.close()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    @property
    def accepted(self) -> int:
        """Updates that reached (or will reach) the wrapped reducer."""
        return self.count - sum(self.report.rejected.values())
