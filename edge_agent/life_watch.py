"""What the agent watches during one life: its health score, its alerts, their log.

A :class:`LifeWatch` belongs to the current life of the machine. It runs the life's
:class:`fedge.health.HealthMonitor` (baseline from the life's first readings), keeps
the RUL alert's persistence rule (``k`` of the last ``n`` predictions below the
threshold), and logs when the combined alert (anomaly OR predicted failure) was
raised and cleared, on the life's time axis: cycles (readings) or hours. When the
life closes, :meth:`LifeWatch.outcome` scores the log against how it ended with
:func:`fedge.alert_metrics.score_alerts`. Its state is numpy arrays and JSON, so the
agent can persist it and carry on after a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedge.alert_metrics import ObservedLife, score_alerts
from fedge.errors import DataError
from fedge.health import HealthConfig, HealthMonitor, HealthUpdate
from fedge.lives import EventKind

__all__ = ["AlertKind", "LifeOutcome", "LifeWatch"]

AlertKind = Literal["anomaly", "failure_predicted"]
_MAX_INTERVALS = 1000  # alert log entries kept per life (a flapping alert cannot grow it)


@dataclass(frozen=True, slots=True)
class LifeOutcome:
    """How the alerts did on one closed life (times in the agent's ``rul_unit``).

    ``lead`` is how long before the failure an alert was active (None: never warned, or
    the life did not end in failure); ``alerted``: the lead was at least ``min_lead``;
    ``false_alarms``: alerts raised while the machine was healthy (more than the healthy
    margin before the end).
    """

    device: str
    unit: int
    end_kind: EventKind
    end_ts: float
    length: float
    lead: float | None
    alerted: bool
    first_alert_kind: AlertKind | None
    false_alarms: int
    alerts: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return {
            "device": self.device,
            "unit": self.unit,
            "end_kind": self.end_kind,
            "end_ts": self.end_ts,
            "length": self.length,
            "lead": self.lead,
            "alerted": self.alerted,
            "first_alert_kind": self.first_alert_kind,
            "false_alarms": self.false_alarms,
            "alerts": self.alerts,
        }


class LifeWatch:
    """Health monitor, RUL persistence and alert log of one life."""

    def __init__(
        self,
        *,
        unit: int,
        first_seq: int | None,
        feature_names: Sequence[str],
        health: HealthConfig | None,
        rul_k: int,
        rul_n: int,
    ) -> None:
        self.unit = unit
        self.first_seq = first_seq
        self.last_seq = 0
        self.monitor: HealthMonitor | None = (
            None if health is None else HealthMonitor(health, feature_names)
        )
        self.last: HealthUpdate | None = None
        self.reason: str | None = None  # why the anomaly alert was raised (while active)
        self._rul_k = rul_k
        self._rul_recent: deque[bool] = deque(maxlen=rul_n)
        self.rul_alert = False
        self.monitoring_from: float | None = None  # time the health score began scoring
        self.first_t: float | None = None
        self.last_t: float | None = None
        # [kind, raised_at, cleared_at | None] of the combined alert, oldest first.
        self.intervals: list[list[Any]] = []

    # Feeding ----------------------------------------------------------------------
    @property
    def anomaly(self) -> bool:
        """Whether the health monitor's alert is active."""
        return self.monitor is not None and self.monitor.alert

    @property
    def alert_active(self) -> bool:
        """The combined alert: anomaly or predicted failure."""
        return self.anomaly or self.rul_alert

    def feed(self, *, seq: int, t: float, ts: float, values: npt.ArrayLike) -> HealthUpdate | None:
        """One reading of this life (``t`` on the life's time axis, ``ts`` unix seconds)."""
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t
        if self.monitor is None:
            return None
        was = self.alert_active
        update = self.monitor.feed(ts, values)
        self.last = update
        if update.phase == "monitoring" and self.monitoring_from is None:
            self.monitoring_from = t
        if update.newly_raised:
            self.reason = update.reason
        elif update.cleared:
            self.reason = None
        self._log(was, t, "anomaly")
        return update

    def predicted(self, *, low: bool, t: float) -> bool:
        """A prediction came in (``low``: below the RUL threshold); the RUL alert state."""
        was = self.alert_active
        self._rul_recent.append(low)
        if not self.rul_alert:
            self.rul_alert = sum(self._rul_recent) >= self._rul_k
        elif not any(self._rul_recent):
            self.rul_alert = False  # every recent prediction is above the threshold again
        if self.first_t is None:
            self.first_t = t
        self.last_t = t if self.last_t is None else max(self.last_t, t)
        self._log(was, t, "failure_predicted")
        return self.rul_alert

    def _log(self, was: bool, t: float, kind: AlertKind) -> None:
        now = self.alert_active
        if now and not was and len(self.intervals) < _MAX_INTERVALS:
            self.intervals.append([kind, t, None])
        elif was and not now and self.intervals and self.intervals[-1][2] is None:
            self.intervals[-1][2] = t

    # Scoring ----------------------------------------------------------------------
    def outcome(
        self,
        *,
        device: str,
        end_kind: EventKind,
        end_ts: float,
        last_t: float,
        failure_t: float | None,
        min_lead: float,
        healthy_margin: float,
    ) -> LifeOutcome:
        """Score this life's alerts; it ended by ``end_kind`` with its last reading at
        ``last_t`` (alerts logged after it belong to a later life and are ignored)."""
        first = self.first_t if self.first_t is not None else last_t
        start = self.monitoring_from if self.monitoring_from is not None else first
        start = min(max(start, first), last_t)
        failure = None if end_kind != "failure" else max(failure_t or last_t, last_t)
        intervals = [
            (float(r), None if c is None or c > last_t else float(c))
            for _, r, c in self.intervals
            if r <= last_t
        ]
        kinds = [k for k, r, _ in self.intervals if r <= last_t]
        try:
            score = score_alerts(
                [ObservedLife(start=start, end=last_t, failure=failure)],
                [intervals],
                min_lead=min_lead,
                healthy_margin=healthy_margin,
            )
        except DataError:  # a clock that jumped: report the life without a score
            return LifeOutcome(device, self.unit, end_kind, end_ts, 0.0, None, False, None, 0, 0)
        lead = score.leads[0] if score.leads else None
        return LifeOutcome(
            device=device,
            unit=self.unit,
            end_kind=end_kind,
            end_ts=end_ts,
            length=last_t - first,
            lead=lead,
            alerted=bool(score.alerted),
            first_alert_kind=kinds[0] if kinds else None,
            false_alarms=score.false_alarms,
            alerts=len(intervals),
        )

    # Persistence ------------------------------------------------------------------
    def state(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, object]]:
        """Arrays (the monitor's) and JSON-ready extras, for :meth:`restore`."""
        arrays = {} if self.monitor is None else self.monitor.state()
        extra: dict[str, object] = {
            "unit": self.unit,
            "last_seq": self.last_seq,
            "reason": self.reason,
            "rul_recent": list(self._rul_recent),
            "rul_alert": self.rul_alert,
            "monitoring_from": self.monitoring_from,
            "first_t": self.first_t,
            "last_t": self.last_t,
            "intervals": self.intervals,
        }
        return arrays, extra

    def restore(self, arrays: Mapping[str, npt.ArrayLike], extra: Mapping[str, Any]) -> None:
        """Carry on from :meth:`state` (a malformed state raises DataError)."""
        try:
            if self.monitor is not None:
                monitor = HealthMonitor.from_state(arrays)
                if monitor.feature_names != self.monitor.feature_names:
                    raise DataError("saved health state is for other features")
                self.monitor = monitor
            self.last_seq = int(extra["last_seq"])
            self.reason = extra["reason"]
            self._rul_recent.extend(bool(v) for v in extra["rul_recent"])
            self.rul_alert = bool(extra["rul_alert"])
            self.monitoring_from = _opt_float(extra["monitoring_from"])
            self.first_t = _opt_float(extra["first_t"])
            self.last_t = _opt_float(extra["last_t"])
            self.intervals = [[str(k), float(r), _opt_float(c)] for k, r, c in extra["intervals"]][
                :_MAX_INTERVALS
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed life watch state: {exc}") from exc

    def health_fields(self) -> dict[str, Any]:
        """``health``, ``anomaly`` and ``anomaly_reason`` for a Prediction."""
        last = self.last
        health = None if last is None or last.health is None else float(np.clip(last.health, 0, 1))
        return {
            "health": health,
            "anomaly": self.anomaly,
            "anomaly_reason": (self.reason or "")[:300] or None if self.anomaly else None,
        }


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
