"""A deterministic fleet simulator of run-to-failure rotating machines.

Each simulated unit (a pump/compressor-like machine) lives through cycles until its
damage crosses the failure threshold. The model, in the units of each sensor's
noise standard deviation ``σ_f``::

    x[t, f] = base_f + σ_f · ( load_f · L[regime_t]                 operating regime
                              + offset_f + drift_f · t / 100          unit calibration
                              + sig_f[mode] · D[t] · (1 + 0.25 L)     fault signature
                              + noise_scale · ε[t, f] )              sensor noise

* Three operating regimes (low / nominal / high load) shift the baselines of the
  load-sensitive sensors by several σ; ``shaft_speed`` reveals the regime the way
  the operating settings do in C-MAPSS. The regime is a Markov chain that switches
  with a per-site probability each cycle.
* Damage grows exponentially from a per-unit initial wear ``D[0]``:
  ``D[t] = D[0] + a · (exp(b·t) - 1)``; the unit's life ends at the first cycle with
  ``D >= 1`` (health ``1 - D`` crosses 0), so worn units die sooner.
* Each fault mode has its own signature ``sig[mode]`` over the sensors (bearing wear
  shows in vibration and bearing temperature, efficiency loss in pressure, flow and
  outlet temperature, a seal leak in oil pressure and oil temperature). At failure
  the affected sensors move 4-8 σ, while 100 cycles earlier the shift is only ~1 σ:
  RUL is learnable from 30-cycle windows, but not trivially.

Every unit draws from its own generator seeded by ``(seed, unit id)``, so a unit's
data depends only on the simulator seed, the site profile and its id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedge.data.windows import rul_targets
from fedge.errors import DataError

__all__ = [
    "FAULT_MODES",
    "REGIME_NAMES",
    "SENSOR_NAMES",
    "SENSOR_UNITS",
    "MachineSimulator",
    "SiteProfile",
    "UnitRun",
    "make_site_profiles",
]

SENSOR_NAMES: tuple[str, ...] = (
    "shaft_speed",  # rpm
    "motor_current",  # A
    "power",  # kW
    "inlet_pressure",  # bar
    "outlet_pressure",  # bar
    "pressure_ratio",  # outlet / inlet (derived, like a real controller would)
    "flow_rate",  # m³/h
    "inlet_temp",  # °C
    "outlet_temp",  # °C
    "bearing_temp",  # °C
    "oil_temp",  # °C
    "oil_pressure",  # bar
    "vibration_rms",  # mm/s
    "vibration_peak",  # mm/s
    "acoustic_level",  # dB
)
SENSOR_UNITS: dict[str, str] = {
    "shaft_speed": "rpm",
    "motor_current": "A",
    "power": "kW",
    "inlet_pressure": "bar",
    "outlet_pressure": "bar",
    "pressure_ratio": "1",
    "flow_rate": "m3/h",
    "inlet_temp": "degC",
    "outlet_temp": "degC",
    "bearing_temp": "degC",
    "oil_temp": "degC",
    "oil_pressure": "bar",
    "vibration_rms": "mm/s",
    "vibration_peak": "mm/s",
    "acoustic_level": "dB",
}
REGIME_NAMES: tuple[str, ...] = ("low_load", "nominal", "high_load")
FAULT_MODES: tuple[str, ...] = ("bearing", "efficiency", "seal")

_IDX = {name: i for i, name in enumerate(SENSOR_NAMES)}
_N_SENSORS = len(SENSOR_NAMES)


def _per_sensor(values: dict[str, float], default: float = 0.0) -> npt.NDArray[np.float64]:
    out = np.full(_N_SENSORS, default, dtype=np.float64)
    for name, value in values.items():
        out[_IDX[name]] = value
    return out


# Healthy baseline (nominal regime) and noise standard deviation per sensor.
_BASE = _per_sensor(
    {
        "shaft_speed": 2950.0, "motor_current": 42.0, "power": 75.0,
        "inlet_pressure": 1.0, "outlet_pressure": 8.0, "pressure_ratio": 8.0,
        "flow_rate": 120.0, "inlet_temp": 25.0, "outlet_temp": 62.0,
        "bearing_temp": 55.0, "oil_temp": 48.0, "oil_pressure": 3.0,
        "vibration_rms": 2.0, "vibration_peak": 6.0, "acoustic_level": 80.0,
    }
)  # fmt: skip
_SIGMA = _per_sensor(
    {
        "shaft_speed": 5.0, "motor_current": 0.4, "power": 0.6,
        "inlet_pressure": 0.01, "outlet_pressure": 0.05, "pressure_ratio": 0.0,
        "flow_rate": 1.0, "inlet_temp": 0.3, "outlet_temp": 0.4,
        "bearing_temp": 0.4, "oil_temp": 0.3, "oil_pressure": 0.03,
        "vibration_rms": 0.08, "vibration_peak": 0.3, "acoustic_level": 0.5,
    }
)  # fmt: skip
# Load level of each regime and how strongly (in σ) each sensor follows the load.
_REGIME_LOAD = np.array([-1.0, 0.0, 1.0])
_LOAD_SENSITIVITY = _per_sensor(
    {
        "shaft_speed": 40.0, "motor_current": 8.0, "power": 10.0,
        "outlet_pressure": 6.0, "flow_rate": 8.0, "outlet_temp": 4.0,
        "bearing_temp": 2.0, "oil_temp": 1.0, "oil_pressure": 2.0,
        "vibration_rms": 1.5, "vibration_peak": 1.5, "acoustic_level": 3.0,
    }
)  # fmt: skip
# Shift (in σ) of each sensor at failure, per fault mode. The signatures overlap a
# little (a failing machine is never clean) but each mode has its own main sensors.
_SIGNATURES = np.stack(
    [
        _per_sensor(  # bearing: vibration, bearing heat, noise
            {
                "vibration_rms": 8.0, "vibration_peak": 7.0, "bearing_temp": 5.0,
                "acoustic_level": 4.0, "oil_temp": 2.0, "motor_current": 1.5, "power": 1.0,
            }
        ),
        _per_sensor(  # efficiency: less pressure and flow for more power, hotter outlet
            {
                "outlet_pressure": -6.0, "flow_rate": -5.0, "outlet_temp": 6.0,
                "power": 3.0, "motor_current": 3.0, "vibration_rms": 0.5,
            }
        ),
        _per_sensor(  # seal leak: oil pressure drops, oil heats, some flow is lost
            {
                "oil_pressure": -6.0, "oil_temp": 3.0, "flow_rate": -2.0,
                "bearing_temp": 1.5, "vibration_rms": 1.0, "acoustic_level": 1.5,
            }
        ),
    ]
)  # fmt: skip
_PR, _P_IN, _P_OUT = _IDX["pressure_ratio"], _IDX["inlet_pressure"], _IDX["outlet_pressure"]

# Life model: a unit with no initial wear fails after ``L_ref`` cycles, drawn
# log-normally around 215 and clipped, so default lifetimes span ~120-360 cycles.
_LIFE_MEDIAN = 215.0
_LIFE_SIGMA = 0.25
_LIFE_CLIP = (130.0, 360.0)
_CURVATURE = (2.5, 4.5)  # exp(b·t) reaches exp(k) at L_ref: larger k = later, sharper onset
_LIFE_SCALE_RANGE = (0.05, 20.0)  # keeps every unit >= ~6 cycles and memory bounded
_UNIT_OFFSET_SIGMA = 0.3  # σ: manufacturing / installation spread between units
_DRIFT_SIGMA = 0.3  # σ per 100 cycles, times the site's drift scale


def _as_weights(values: tuple[float, ...], n: int, what: str) -> tuple[float, ...]:
    if len(values) != n:
        raise DataError(f"{what} needs {n} weights, got {len(values)}")
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() <= 0:
        raise DataError(f"{what} must be non-negative, finite and not all zero: {values}")
    return tuple(float(v) for v in arr / arr.sum())


@dataclass(frozen=True)
class SiteProfile:
    """How machines at one site are operated and how they fail.

    Weights are normalised to sum to 1. ``life_scale`` multiplies every lifetime,
    ``noise_scale`` the sensor noise and ``drift_scale`` the calibration drift;
    ``switch_prob`` is the per-cycle chance of drawing a new operating regime and
    ``max_initial_wear`` bounds the uniform initial damage of new units.
    """

    regime_weights: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    fault_mix: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)
    switch_prob: float = 0.05
    life_scale: float = 1.0
    noise_scale: float = 1.0
    drift_scale: float = 1.0
    max_initial_wear: float = 0.2

    def __post_init__(self) -> None:
        weights = _as_weights(tuple(self.regime_weights), len(REGIME_NAMES), "regime_weights")
        mix = _as_weights(tuple(self.fault_mix), len(FAULT_MODES), "fault_mix")
        object.__setattr__(self, "regime_weights", weights)
        object.__setattr__(self, "fault_mix", mix)
        if not 0.0 <= self.switch_prob <= 1.0:
            raise DataError(f"switch_prob must be in [0, 1], got {self.switch_prob}")
        lo, hi = _LIFE_SCALE_RANGE
        if not lo <= self.life_scale <= hi:  # also rejects NaN
            raise DataError(f"life_scale must be in [{lo}, {hi}], got {self.life_scale}")
        if not (math.isfinite(self.noise_scale) and self.noise_scale > 0):
            raise DataError(f"noise_scale must be a positive number, got {self.noise_scale}")
        if not (math.isfinite(self.drift_scale) and self.drift_scale >= 0):
            raise DataError(f"drift_scale must be >= 0, got {self.drift_scale}")
        if not 0.0 <= self.max_initial_wear < 0.9:
            raise DataError(f"max_initial_wear must be in [0, 0.9), got {self.max_initial_wear}")


@dataclass(frozen=True, eq=False)
class UnitRun:
    """One simulated machine from first cycle to failure (its last row).

    ``regimes`` holds the operating regime index (into ``REGIME_NAMES``) per cycle,
    ``sensors`` the readings (``(T, len(SENSOR_NAMES))`` float32) and ``health``,
    when present, the hidden health index (1 = new, 0 = failure threshold), which a
    real device never sees but benchmarks and dashboards can use as ground truth.
    """

    unit: int
    fault_mode: str
    regimes: npt.NDArray[np.int64]
    sensors: npt.NDArray[np.float32]
    health: npt.NDArray[np.float32] | None = None

    @property
    def n_cycles(self) -> int:
        """Number of cycles the unit ran, failure cycle included."""
        return int(self.sensors.shape[0])

    def rul(self) -> npt.NDArray[np.float32]:
        """Uncapped remaining useful life per cycle: ``T-1, ..., 1, 0``."""
        return rul_targets(self.n_cycles, cap=math.inf)


class MachineSimulator:
    """Generates the run-to-failure units of one site, deterministically.

    ``next_unit()`` returns units 1, 2, 3, ... in turn; ``unit(i)`` regenerates any
    unit on its own, bit-identical to the one ``next_unit()`` returned.
    """

    def __init__(self, *, profile: SiteProfile, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise DataError(f"seed must be a non-negative int, got {seed!r}")
        self.profile = profile
        self.seed = int(seed)
        self._next_id = 1

    @property
    def sensor_names(self) -> tuple[str, ...]:
        """Names of the sensor columns, in order."""
        return SENSOR_NAMES

    def next_unit(self) -> UnitRun:
        """The next unit of this site's sequence."""
        run = self.unit(self._next_id)
        self._next_id += 1
        return run

    def units(self, n: int) -> list[UnitRun]:
        """The next ``n`` units."""
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        return [self.next_unit() for _ in range(n)]

    def unit(self, unit_id: int) -> UnitRun:
        """Unit ``unit_id`` (>= 1), independent of what was generated before."""
        if unit_id < 1:
            raise DataError(f"unit ids start at 1, got {unit_id}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, unit_id]))
        p = self.profile

        mode = int(rng.choice(len(FAULT_MODES), p=p.fault_mix))
        wear0 = rng.uniform(0.0, p.max_initial_wear)
        life_ref = p.life_scale * float(
            np.clip(_LIFE_MEDIAN * math.exp(_LIFE_SIGMA * rng.standard_normal()), *_LIFE_CLIP)
        )
        curvature = rng.uniform(*_CURVATURE)
        rate = curvature / life_ref
        amp = 1.0 / math.expm1(curvature)  # D reaches 1 at L_ref when D[0] = 0
        # The life ends at the first cycle with D >= 1. Solving
        # D[0] + amp·(exp(rate·t) - 1) = 1 bounds it; the crossing itself is found on
        # the computed path so that rounding can never leave D[-1] just below 1.
        t_fail = math.log1p((1.0 - wear0) / amp) / rate
        t = np.arange(math.ceil(t_fail) + 2, dtype=np.float64)
        damage = wear0 + amp * np.expm1(rate * t)
        n = int(np.argmax(damage >= 1.0)) + 1
        t, damage = t[:n], damage[:n]

        regimes = self._regime_path(rng, n)
        load = _REGIME_LOAD[regimes]
        offset = rng.normal(0.0, _UNIT_OFFSET_SIGMA, _N_SENSORS)
        drift = rng.normal(0.0, _DRIFT_SIGMA * p.drift_scale, _N_SENSORS)
        noise = rng.standard_normal((n, _N_SENSORS))

        z = (
            load[:, None] * _LOAD_SENSITIVITY
            + offset
            + drift * (t[:, None] / 100.0)
            + _SIGNATURES[mode] * (damage * (1.0 + 0.25 * load))[:, None]
            + p.noise_scale * noise
        )
        x = _BASE + _SIGMA * z
        x[:, _PR] = x[:, _P_OUT] / x[:, _P_IN]
        health = np.clip(1.0 - damage, 0.0, 1.0)
        return UnitRun(
            unit=unit_id,
            fault_mode=FAULT_MODES[mode],
            regimes=regimes,
            sensors=x.astype(np.float32),
            health=health.astype(np.float32),
        )

    def _regime_path(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
        # Markov chain, vectorised: at each switch point draw a fresh regime (which
        # may repeat the old one), then carry it forward to the next switch point.
        switch = rng.random(n) < self.profile.switch_prob
        switch[0] = True
        draws = rng.choice(len(REGIME_NAMES), size=n, p=self.profile.regime_weights)
        last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
        return draws[last_switch].astype(np.int64)


def make_site_profiles(n_sites: int, *, seed: int, non_iid: bool) -> list[SiteProfile]:
    """Profiles for ``n_sites`` sites.

    IID: every site gets the same default profile (``seed`` is unused). Non-IID:
    site ``i`` mostly runs regime ``i mod 3`` and mostly suffers fault mode
    ``i mod 3`` (with a random remainder), and has its own lifetime, noise, drift,
    switching and initial-wear scales, drawn deterministically from ``seed``.
    """
    if n_sites < 0:
        raise DataError(f"n_sites must be >= 0, got {n_sites}")
    if not non_iid:
        return [SiteProfile() for _ in range(n_sites)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    profiles: list[SiteProfile] = []
    for i in range(n_sites):
        regimes = 0.4 * rng.dirichlet(np.ones(len(REGIME_NAMES)))
        regimes[i % len(REGIME_NAMES)] += 0.6
        mix = 0.3 * rng.dirichlet(np.ones(len(FAULT_MODES)))
        mix[i % len(FAULT_MODES)] += 0.7
        kwargs: dict[str, Any] = {
            "regime_weights": tuple(regimes.tolist()),
            "fault_mix": tuple(mix.tolist()),
            "switch_prob": float(rng.uniform(0.02, 0.2)),
            "life_scale": float(rng.uniform(0.7, 1.3)),
            "noise_scale": float(rng.uniform(0.7, 1.5)),
            "drift_scale": float(rng.uniform(0.5, 2.0)),
            "max_initial_wear": float(rng.uniform(0.05, 0.3)),
        }
        profiles.append(SiteProfile(**kwargs))
    return profiles
