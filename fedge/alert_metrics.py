"""How good are alerts? Scoring alert intervals against known failure times (pure).

Used by ``benchmarks/alerts.py``, the backtest and the demo, for any alert source
(the health score, the RUL model, both). Times are in one unit throughout: cycles
for run-to-failure data, hours or seconds for a real machine.

Definitions (``margin`` = ``healthy_margin``, ``RUL(t) = failure - t``):

* A reading at ``t`` is **healthy** when ``RUL(t) > margin``; for a life without a
  failure (censored or running) when ``end - t > margin``, since its RUL is at
  least ``end - t``. The healthy *exposure* of a life runs from ``start`` (the
  first moment an alert could have been raised, e.g. the end of the health
  score's baseline) to ``failure - margin`` (or ``end - margin``).
* A **false alarm** is an alert *raised* at a healthy time. The rate is false
  alarms per 1,000 units of healthy exposure (per 1,000 healthy cycles).
* A failed life is **warned** at the first moment of its warning zone
  ``(failure - margin, failure]`` when an alert is active (an alert raised
  earlier and still active counts from the zone's start); its **lead** is
  ``failure`` minus that moment. It is **alerted** when the lead is at least
  ``min_lead`` (20 cycles: time to plan the repair).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedge.errors import DataError

__all__ = ["AlertScore", "ObservedLife", "alert_intervals", "persistent_alerts", "score_alerts"]

AlertInterval = tuple[float, float | None]


@dataclass(frozen=True, slots=True)
class ObservedLife:
    """One life as the scorer sees it.

    ``start``: first time an alert could have been raised; ``end``: last reading;
    ``failure``: when the life failed (``None``: censored or still running).
    """

    start: float
    end: float
    failure: float | None = None

    def __post_init__(self) -> None:
        values = (self.start, self.end) + (() if self.failure is None else (self.failure,))
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"life times must be finite, got {self}")
        if self.end < self.start:
            raise DataError(f"life ends ({self.end}) before it starts ({self.start})")
        if self.failure is not None and self.failure < self.end:
            raise DataError(f"life fails ({self.failure}) before its last reading ({self.end})")


@dataclass(frozen=True, slots=True)
class AlertScore:
    """The figures of :func:`score_alerts` (``leads`` per failed life, None = never warned)."""

    failures: int
    alerted: int
    alerted_share: float
    median_lead: float | None
    false_alarms: int
    healthy_exposure: float
    false_alarms_per_1000: float
    leads: tuple[float | None, ...]

    def as_dict(self) -> dict[str, float | int | None]:
        """The headline figures, JSON-ready."""
        return {
            "failures": self.failures,
            "alerted": self.alerted,
            "alerted_share": self.alerted_share,
            "median_lead": self.median_lead,
            "false_alarms": self.false_alarms,
            "healthy_exposure": self.healthy_exposure,
            "false_alarms_per_1000": self.false_alarms_per_1000,
        }


def alert_intervals(times: npt.ArrayLike, alert: npt.ArrayLike) -> list[AlertInterval]:
    """Per-reading alert flags -> ``(raised_at, cleared_at | None)`` intervals."""
    t = np.asarray(times, dtype=np.float64)
    a = np.asarray(alert, dtype=np.bool_)
    if t.shape != a.shape or t.ndim != 1:
        raise DataError(f"times {t.shape} and alert flags {a.shape} must be equal 1-D arrays")
    edges = np.diff(np.r_[False, a, False].astype(np.int8))
    rises = np.flatnonzero(edges == 1)
    falls = np.flatnonzero(edges == -1)
    return [
        (float(t[r]), float(t[f]) if f < t.shape[0] else None)
        for r, f in zip(rises, falls, strict=True)
    ]


def persistent_alerts(triggers: npt.ArrayLike, *, k: int, n: int) -> npt.NDArray[np.bool_]:
    """Alert state per reading from per-reading triggers (e.g. "predicted RUL < 30").

    The alert is raised once at least ``k`` of the last ``n`` triggers fired (one low
    prediction is not an alarm) and cleared once none of the last ``n`` did. The same
    rule as the agent's RUL alert (:class:`edge_agent.life_watch.LifeWatch`).
    """
    if not 1 <= k <= n:
        raise DataError(f"need 1 <= k <= n, got k={k}, n={n}")
    fired = np.asarray(triggers, dtype=np.bool_)
    if fired.ndim != 1:
        raise DataError(f"triggers must be 1-D, got shape {fired.shape}")
    if fired.shape[0] == 0:
        return np.zeros(0, dtype=np.bool_)
    window = np.convolve(fired.astype(np.int64), np.ones(n, dtype=np.int64))[: fired.shape[0]]
    out = np.zeros(fired.shape, dtype=np.bool_)
    active = False
    for i, count in enumerate(window.tolist()):
        active = count >= k if not active else count > 0
        out[i] = active
    return out


def _lead(life: ObservedLife, alerts: Sequence[AlertInterval], margin: float) -> float | None:
    assert life.failure is not None  # noqa: S101 - only called for failed lives
    zone_start = life.failure - margin
    best: float | None = None
    for raised, cleared in alerts:
        if raised > life.failure or (cleared is not None and cleared <= zone_start):
            continue  # after the failure, or over before the warning zone began
        moment = max(raised, zone_start)
        if cleared is not None and cleared <= moment:
            continue
        best = moment if best is None else min(best, moment)
    return None if best is None else life.failure - best


def score_alerts(
    lives: Sequence[ObservedLife],
    alerts: Sequence[Sequence[AlertInterval]],
    *,
    min_lead: float = 20.0,
    healthy_margin: float = 125.0,
) -> AlertScore:
    """Score alert intervals (one list per life) against the lives' failure times."""
    if len(lives) != len(alerts):
        raise DataError(f"{len(lives)} lives but {len(alerts)} alert lists")
    if not (min_lead >= 0 and healthy_margin > 0 and min_lead <= healthy_margin):
        raise DataError(
            f"need 0 <= min_lead <= healthy_margin, got {min_lead} and {healthy_margin}"
        )
    leads: list[float | None] = []
    false_alarms = 0
    exposure = 0.0
    for life, intervals in zip(lives, alerts, strict=True):
        for raised, cleared in intervals:
            if cleared is not None and cleared < raised:
                raise DataError(f"alert cleared ({cleared}) before it was raised ({raised})")
        horizon_end = (life.end if life.failure is None else life.failure) - healthy_margin
        exposure += max(0.0, horizon_end - life.start)
        # Raised while healthy (strictly more than the margin before the end).
        false_alarms += sum(1 for raised, _ in intervals if raised < horizon_end)
        if life.failure is not None:
            leads.append(_lead(life, intervals, healthy_margin))
    failures = len(leads)
    warned = [lead for lead in leads if lead is not None]
    alerted = sum(1 for lead in warned if lead >= min_lead)
    return AlertScore(
        failures=failures,
        alerted=alerted,
        alerted_share=alerted / failures if failures else math.nan,
        median_lead=float(statistics.median(warned)) if warned else None,
        false_alarms=false_alarms,
        healthy_exposure=exposure,
        false_alarms_per_1000=1000.0 * false_alarms / exposure if exposure > 0 else math.nan,
        leads=tuple(leads),
    )
