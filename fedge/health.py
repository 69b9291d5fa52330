"""An unsupervised health score for a machine's current life, sans I/O (pure numpy).

Most machines have never failed, so there is nothing to learn RUL from on day one.
What every machine has is its own normal behaviour. :class:`HealthMonitor` learns
it from the first part of the current life and scores how far the present is from
it:

1. **Baseline.** The first ``baseline_readings`` readings (or ``baseline_hours``)
   of the life give, per feature, the median and a robust scale ``1.4826·MAD``
   (the standard deviation for Gaussian noise, unmoved by a few outliers); where
   the MAD is 0 (a quantised channel that mostly sits on one value) the mean
   absolute deviation ``1.2533·mean|x - median|`` instead; either is floored at
   ``scale_floor·|median|`` (and 1e-9) so that a channel that was constant in
   the baseline gives large but finite z-scores.
2. **Robust z-scores** ``z = (x - median) / scale``, clipped at ``±z_clip`` so one
   broken channel cannot decide the score alone, **smoothed per feature** with an
   EWMA (``smoothing`` is its weight on the new reading). Smoothing before
   combining averages the noise out of every channel (a healthy channel's smoothed
   z has a standard deviation of ``sqrt(α / (2 - α))``) while a sustained shift
   keeps its full size.
3. **Score** = root mean square of the smoothed z over the usable features.
   **Health** = ``2 ** -(score / threshold)²``: 1 is exactly like the baseline,
   0.5 is the alert threshold, 0.06 twice the threshold.
4. **Persistence.** An alert is raised when the score exceeded ``threshold`` in at
   least ``persistence_k`` of the last ``persistence_n`` readings (one spike is
   not an alarm), and cleared, with hysteresis, once the last ``persistence_n``
   scores were all below ``clear_threshold``.

**Operating conditions.** A machine that runs at several loads or speeds moves
many sensors with the load, by far more than a fault does early on (on the
simulator a load change moves ``shaft_speed`` by 40 σ). Features named in
``condition_features`` (load, speed, set points) are treated as inputs, not
symptoms: they are not scored, and every other feature's baseline is a linear
function of them, fitted on the baseline (least squares with a small ridge term,
so a baseline seen at one operating point gives slopes near 0) and scored on its
residual. A reading whose operating point lies outside what the baseline saw
(beyond its range by more than ``condition_margin`` robust standard deviations of
the condition plus ``condition_extrapolation`` times the range itself: a baseline
that saw two loads extrapolates to a third, one that saw a single load does not)
is not scored: the monitor cannot tell a fault from an unseen
operating point, and says so in the reason.

A NaN or infinite value is a dead (or missing) sensor reading: that feature is
left out of the score for that reading, its smoothed z is held, and the reason
names it; a feature with no finite value in the baseline is left out for the
whole life. If no feature is usable the reading gets no score (``health is
None``) and the alert state does not change.

Like :class:`aggregator.coordinator.RoundCoordinator`, the monitor touches no
clock, file or socket: it is fed ``(ts, values)`` and returns a
:class:`HealthUpdate`, and its state is a dict of numpy arrays
(:meth:`HealthMonitor.state` / :meth:`HealthMonitor.from_state`) that an agent
can persist. A new life (after a repair or a replacement) gets a new monitor.

Defaults were measured with ``benchmarks/alerts.py`` (alert >= 20 cycles before
failure; false alarms per 1,000 cycles with RUL > 125): on C-MAPSS FD001 they
alert 100/100 engines, median lead 68 cycles, 0.58 false alarms per 1,000 healthy
cycles. On the simulator (three loads, ``shaft_speed`` as condition feature) the
same defaults alert only 49% (lead 28, no false alarm); its best setting within
2 false alarms, ``threshold=0.8, persistence 8/10``, alerts 80% (lead 59, 1.4):
fewer of its sensors move per fault, and readings at loads the baseline never saw
go unscored. Without the condition feature it alerts 90% but with 12.9 false
alarms per 1,000 healthy cycles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedge.errors import DataError

__all__ = [
    "DEFAULT_BASELINE_READINGS",
    "HealthConfig",
    "HealthMonitor",
    "HealthUpdate",
    "health_from_score",
]

DEFAULT_BASELINE_READINGS = 30
MAX_BASELINE_READINGS = 10_000
_MAD_TO_STD = 1.4826  # 1 / Φ⁻¹(3/4): MAD -> standard deviation for Gaussian noise
_MEAN_AD_TO_STD = 1.2533  # sqrt(π / 2): mean absolute deviation -> standard deviation
_ABS_FLOOR = 1e-9
_STATE_VERSION = 1


class HealthConfig(BaseModel):
    """How the health score is computed and when it alerts (see the module docstring).

    The baseline is ``baseline_readings`` readings or ``baseline_hours`` hours of the
    life (not both; neither means ``DEFAULT_BASELINE_READINGS``); an hours baseline
    also needs ``min_baseline_readings`` readings and stops at
    ``MAX_BASELINE_READINGS`` to keep the state bounded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    baseline_readings: Annotated[int, Field(ge=5, le=MAX_BASELINE_READINGS)] | None = None
    baseline_hours: Annotated[float, Field(gt=0.0, le=24.0 * 366)] | None = None
    min_baseline_readings: Annotated[int, Field(ge=5, le=MAX_BASELINE_READINGS)] = 10
    smoothing: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    threshold: Annotated[float, Field(gt=0.0, le=100.0)] = 1.5
    clear_threshold: Annotated[float, Field(gt=0.0, le=100.0)] = 1.2
    persistence_k: Annotated[int, Field(ge=1, le=1000)] = 3
    persistence_n: Annotated[int, Field(ge=1, le=1000)] = 5
    z_clip: Annotated[float, Field(gt=0.0, le=1e6)] = 10.0
    scale_floor: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-5
    reason_features: Annotated[int, Field(ge=1, le=64)] = 3
    condition_features: tuple[str, ...] = ()
    condition_margin: Annotated[float, Field(ge=0.0, le=1e6)] = 3.0
    condition_extrapolation: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0

    @model_validator(mode="after")
    def _consistent(self) -> HealthConfig:
        if self.baseline_readings is not None and self.baseline_hours is not None:
            raise ValueError("give baseline_readings or baseline_hours, not both")
        if self.clear_threshold > self.threshold:
            raise ValueError("clear_threshold must not exceed threshold (hysteresis)")
        if len(set(self.condition_features)) != len(self.condition_features):
            raise ValueError("condition_features must be unique")
        if self.persistence_k > self.persistence_n:
            raise ValueError("persistence_k must not exceed persistence_n")
        return self

    @property
    def baseline_kind(self) -> Literal["readings", "hours"]:
        """Whether the baseline is counted in readings or in hours."""
        return "hours" if self.baseline_hours is not None else "readings"

    @property
    def readings_needed(self) -> int:
        """Readings the baseline needs (for an hours baseline: at least)."""
        if self.baseline_hours is not None:
            return self.min_baseline_readings
        return self.baseline_readings or DEFAULT_BASELINE_READINGS


def health_from_score(score: float, threshold: float) -> float:
    """Health in [0, 1] for a score: 1 at 0, 0.5 at ``threshold``."""
    return float(2.0 ** (-((score / threshold) ** 2)))


@dataclass(frozen=True, slots=True)
class HealthUpdate:
    """What the monitor says after one reading.

    ``phase`` is ``"baseline"`` while normal behaviour is still being learnt (then
    ``health`` and ``score`` are None). ``reason`` names the features that moved
    most (``"bearing_temp z=+6.1, vibration_rms z=+4.3"``) and any dead ones.
    """

    ts: float
    phase: Literal["baseline", "monitoring"]
    health: float | None
    score: float | None
    alert: bool
    newly_raised: bool
    cleared: bool
    reason: str
    dead: tuple[str, ...] = ()


class HealthMonitor:
    """The health-score state machine of one life of one machine."""

    def __init__(self, config: HealthConfig, feature_names: Sequence[str]) -> None:
        names = tuple(feature_names)
        if not names:
            raise DataError("a health monitor needs at least one feature")
        if len(set(names)) != len(names):
            raise DataError(f"feature names must be unique, got {names}")
        self.config = config
        self.feature_names = names
        f = len(names)
        index = {name: i for i, name in enumerate(names)}
        unknown = [c for c in config.condition_features if c not in index]
        if unknown:
            raise DataError(f"condition features {unknown} are not among the features {names}")
        self._cond = np.array([index[c] for c in config.condition_features], dtype=np.int64)
        self._scored = np.ones(f, dtype=np.bool_)
        self._scored[self._cond] = False
        if not self._scored.any():
            raise DataError("every feature is a condition feature: nothing left to score")
        c = self._cond.size
        self._slopes = np.zeros((f, c))
        self._cond_centre = np.zeros(c)
        self._cond_scale = np.ones(c)
        # Until the baseline saw a finite operating point, every reading is outside it.
        self._cond_lo = np.full(c, np.nan)
        self._cond_hi = np.full(c, np.nan)
        self._baseline_rows: list[npt.NDArray[np.float64]] = []
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self._median = np.zeros(f)
        self._scale = np.ones(f)
        self._has_baseline = np.zeros(f, dtype=np.bool_)
        self._smoothed = np.zeros(f)
        self._fitted = False
        # Scores of the last persistence_n readings (NaN: not scored), oldest first.
        self._recent = np.full(config.persistence_n, np.nan)
        self._alert = False
        self._n_fed = 0

    # -- public API -----------------------------------------------------------------

    @property
    def phase(self) -> Literal["baseline", "monitoring"]:
        """``"baseline"`` until normal behaviour has been learnt."""
        return "monitoring" if self._fitted else "baseline"

    @property
    def alert(self) -> bool:
        """Whether an alert is active."""
        return self._alert

    @property
    def readings_seen(self) -> int:
        """Readings fed so far (baseline included)."""
        return self._n_fed

    @property
    def baseline_median(self) -> npt.NDArray[np.float64]:
        """Per-feature baseline median (zeros before the baseline is fitted)."""
        return self._median.copy()

    @property
    def baseline_scale(self) -> npt.NDArray[np.float64]:
        """Per-feature robust scale of the baseline (ones before it is fitted)."""
        return self._scale.copy()

    def feed(self, ts: float, values: npt.ArrayLike) -> HealthUpdate:
        """Feed one reading (unix seconds, one value per feature; NaN = missing)."""
        x = np.asarray(values, dtype=np.float64)
        if x.shape != (len(self.feature_names),):
            raise DataError(
                f"expected {len(self.feature_names)} values, got an array of shape {x.shape}"
            )
        ts = float(ts)
        if not math.isfinite(ts):
            raise DataError(f"reading timestamp must be finite, got {ts}")
        if self._last_ts is not None and ts < self._last_ts:
            raise DataError(f"reading at {ts} is older than the previous one at {self._last_ts}")
        x = np.where(np.isfinite(x), x, np.nan)
        self._last_ts = ts
        self._n_fed += 1
        if self._first_ts is None:
            self._first_ts = ts
        if not self._fitted:
            return self._learn(ts, x)
        return self._score(ts, x)

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """Everything needed to carry on after a restart, as named numpy arrays."""
        meta = {
            "version": _STATE_VERSION,
            "config": self.config.model_dump(),
            "features": list(self.feature_names),
        }
        f = len(self.feature_names)
        rows = np.stack(self._baseline_rows) if self._baseline_rows else np.empty((0, f))
        nan = float("nan")
        return {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy(),
            "baseline_rows": rows,
            "times": np.array(
                [
                    nan if self._first_ts is None else self._first_ts,
                    nan if self._last_ts is None else self._last_ts,
                ]
            ),
            "median": self._median.copy(),
            "scale": self._scale.copy(),
            "has_baseline": self._has_baseline.copy(),
            "smoothed": self._smoothed.copy(),
            "slopes": self._slopes.copy(),
            "conditions": np.stack(
                [self._cond_centre, self._cond_scale, self._cond_lo, self._cond_hi]
            ),
            "recent": self._recent.copy(),
            "flags": np.array([self._fitted, self._alert], dtype=np.bool_),
            "n_fed": np.array([self._n_fed], dtype=np.int64),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, npt.ArrayLike]) -> HealthMonitor:
        """Rebuild a monitor from :meth:`state`; a malformed state raises DataError."""
        try:
            meta = json.loads(np.asarray(state["meta"], dtype=np.uint8).tobytes())
            if meta["version"] != _STATE_VERSION:
                raise DataError(f"unsupported health state version {meta['version']}")
            monitor = cls(HealthConfig.model_validate(meta["config"]), meta["features"])
            f = len(monitor.feature_names)
            rows = np.asarray(state["baseline_rows"], dtype=np.float64)
            times = np.asarray(state["times"], dtype=np.float64)
            flags = np.asarray(state["flags"], dtype=np.bool_)
            arrays = {
                k: np.asarray(state[k], dtype=np.float64) for k in ("median", "scale", "smoothed")
            }
            has = np.asarray(state["has_baseline"], dtype=np.bool_)
            slopes = np.asarray(state["slopes"], dtype=np.float64)
            conditions = np.asarray(state["conditions"], dtype=np.float64)
            recent = np.asarray(state["recent"], dtype=np.float64)
            n_fed = int(np.asarray(state["n_fed"]).reshape(-1)[0])
        except (KeyError, TypeError, ValueError, ValidationError, IndexError) as exc:
            raise DataError(f"malformed health monitor state: {exc}") from exc
        shapes_ok = (
            rows.ndim == 2
            and rows.shape[1] == f
            and times.shape == (2,)
            and flags.shape == (2,)
            and has.shape == (f,)
            and recent.shape == (monitor.config.persistence_n,)
            and all(a.shape == (f,) for a in arrays.values())
            and slopes.shape == (f, monitor._cond.size)
            and conditions.shape == (4, monitor._cond.size)
            and n_fed >= rows.shape[0]
        )
        if not shapes_ok:
            raise DataError("malformed health monitor state: array shapes do not match")
        monitor._baseline_rows = list(rows)
        monitor._first_ts = None if math.isnan(times[0]) else float(times[0])
        monitor._last_ts = None if math.isnan(times[1]) else float(times[1])
        monitor._median = arrays["median"]
        monitor._scale = arrays["scale"]
        monitor._smoothed = arrays["smoothed"]
        monitor._has_baseline = has
        monitor._slopes = slopes
        (
            monitor._cond_centre,
            monitor._cond_scale,
            monitor._cond_lo,
            monitor._cond_hi,
        ) = (row.copy() for row in conditions)
        monitor._recent = recent
        monitor._fitted, monitor._alert = bool(flags[0]), bool(flags[1])
        monitor._n_fed = n_fed
        return monitor

    # -- internals ------------------------------------------------------------------

    def _baseline_complete(self, ts: float) -> bool:
        cfg = self.config
        n = len(self._baseline_rows)
        if cfg.baseline_hours is None:
            return n >= cfg.readings_needed
        assert self._first_ts is not None  # noqa: S101 - set by the first feed
        long_enough = ts - self._first_ts >= cfg.baseline_hours * 3600.0
        return (long_enough and n >= cfg.min_baseline_readings) or n >= MAX_BASELINE_READINGS

    def _learn(self, ts: float, x: npt.NDArray[np.float64]) -> HealthUpdate:
        self._baseline_rows.append(x)
        if self._baseline_complete(ts):
            self._fit()
        return HealthUpdate(
            ts=ts,
            phase="baseline",
            health=None,
            score=None,
            alert=False,
            newly_raised=False,
            cleared=False,
            reason=f"learning baseline ({len(self._baseline_rows)} readings)",
        )

    def _robust_scale(
        self, dev: npt.NDArray[np.float64], level: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Scale of deviations ``dev`` (rows, k) from a centre at ``level`` (k,), floored."""
        a = np.abs(dev)
        mad = _MAD_TO_STD * np.median(a, axis=0)
        # A quantised channel can have MAD 0 and still vary: fall back to the mean
        # absolute deviation there only (it is not robust to outliers, MAD is).
        spread = np.where(mad > 0, mad, _MEAN_AD_TO_STD * np.mean(a, axis=0))
        floor = np.maximum(self.config.scale_floor * np.abs(level), _ABS_FLOOR)
        out: npt.NDArray[np.float64] = np.maximum(spread, floor)
        return out

    def _fit(self) -> None:
        rows = np.stack(self._baseline_rows)
        finite = np.isfinite(rows)
        n, f = rows.shape
        cond = self._cond
        # Rows whose operating point is known (all of them without condition features).
        ok: npt.NDArray[np.bool_] = np.asarray(finite[:, cond].all(axis=1), dtype=np.bool_)
        u = np.zeros((n, cond.size))
        if cond.size and ok.any():
            good = rows[ok][:, cond]
            centre = np.median(good, axis=0)
            self._cond_centre = centre
            self._cond_scale = self._robust_scale(good - centre, centre)
            self._cond_lo, self._cond_hi = good.min(axis=0), good.max(axis=0)
            u = np.where(ok[:, None], (rows[:, cond] - centre) / self._cond_scale, 0.0)
        self._has_baseline = np.zeros(f, dtype=np.bool_)
        for j in np.flatnonzero(self._scored):
            m = finite[:, j] & ok
            if not m.any():
                continue  # no finite value in the baseline: never scored
            y = rows[m, j]
            if cond.size:
                x = u[m]
                xc = x - x.mean(axis=0)
                # Ridge: a baseline at a single operating point gives slopes near 0.
                gram = xc.T @ xc + 1e-3 * max(int(m.sum()), 1) * np.eye(cond.size)
                self._slopes[j] = np.linalg.solve(gram, xc.T @ (y - y.mean()))
                y = y - x @ self._slopes[j]
                # The least-squares intercept: a median of residuals pooled over several
                # operating points is pulled towards the most frequent one.
                mid = float(np.mean(y))
            else:
                mid = float(np.median(y))
            self._median[j] = mid
            self._scale[j] = self._robust_scale(
                (y - mid)[:, None], np.array([np.median(rows[m, j])])
            )[0]
            self._has_baseline[j] = True
        self._smoothed = np.zeros(f)
        self._baseline_rows = []
        self._fitted = True

    def _off_conditions(self, x: npt.NDArray[np.float64]) -> tuple[str, ...]:
        """Condition features of ``x`` outside the baseline's operating range (or missing)."""
        if not self._cond.size:
            return ()
        u = x[self._cond]
        cfg = self.config
        pad = cfg.condition_margin * self._cond_scale + cfg.condition_extrapolation * (
            self._cond_hi - self._cond_lo
        )
        bad = ~((u >= self._cond_lo - pad) & (u <= self._cond_hi + pad))  # NaN is bad too
        return tuple(
            f"{self.feature_names[i]}={v:.6g} (baseline {lo:.6g}..{hi:.6g})"
            for i, v, lo, hi, b in zip(
                self._cond, u, self._cond_lo, self._cond_hi, bad, strict=True
            )
            if b
        )

    def _score(self, ts: float, x: npt.NDArray[np.float64]) -> HealthUpdate:
        cfg = self.config
        off = self._off_conditions(x)
        live = np.isfinite(x) & self._has_baseline
        if off:
            live[:] = False  # an unseen operating point: nothing is scored
        expected = self._median
        if self._cond.size and not off:
            expected = self._median + self._slopes @ (
                (x[self._cond] - self._cond_centre) / self._cond_scale
            )
        z = np.clip((np.where(live, x, 0.0) - expected) / self._scale, -cfg.z_clip, cfg.z_clip)
        a = cfg.smoothing
        self._smoothed = np.where(live, (1.0 - a) * self._smoothed + a * z, self._smoothed)
        dead = tuple(
            self.feature_names[i]
            for i in np.flatnonzero(self._scored & ~(np.isfinite(x) & self._has_baseline))
        )
        score: float | None = None
        if live.any():
            score = float(np.sqrt(np.mean(np.square(self._smoothed[live]))))
        self._recent = np.roll(self._recent, -1)
        self._recent[-1] = np.nan if score is None else score
        newly_raised = cleared = False
        if score is not None:
            if not self._alert:
                above = int(np.sum(self._recent > cfg.threshold))
                newly_raised = above >= cfg.persistence_k
                self._alert = newly_raised
            elif bool(np.all(self._recent < cfg.clear_threshold)):
                # NaN (unscored) entries compare False: they never clear an alert.
                self._alert = False
                cleared = True
        reason = self._reason(live, dead)
        if off:
            reason = "operating point outside the baseline: " + "; ".join(off)
        return HealthUpdate(
            ts=ts,
            phase="monitoring",
            health=None if score is None else health_from_score(score, cfg.threshold),
            score=score,
            alert=self._alert,
            newly_raised=newly_raised,
            cleared=cleared,
            reason=reason,
            dead=dead,
        )

    def _reason(self, live: npt.NDArray[np.bool_], dead: tuple[str, ...]) -> str:
        parts: list[str] = []
        idx = np.flatnonzero(live)
        if idx.size:
            order = idx[np.argsort(-np.abs(self._smoothed[idx]), kind="stable")]
            parts = [
                f"{self.feature_names[i]} z={self._smoothed[i]:+.1f}"
                for i in order[: self.config.reason_features]
            ]
        else:
            parts = ["no usable sensor"]
        if dead:
            parts.append("dead: " + " ".join(dead))
        return ", ".join(parts)
