"""The fleet simulator: determinism, lifetimes, regimes and fault signatures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedge.data import (
    FAULT_MODES,
    REGIME_NAMES,
    SENSOR_NAMES,
    MachineSimulator,
    SiteProfile,
    UnitRun,
    make_site_profiles,
)
from fedge.errors import DataError

COL = {name: i for i, name in enumerate(SENSOR_NAMES)}
NOMINAL_ONLY = SiteProfile(regime_weights=(0, 1, 0))


def _same(a: UnitRun, b: UnitRun) -> bool:
    assert a.health is not None and b.health is not None
    return (
        a.unit == b.unit
        and a.fault_mode == b.fault_mode
        and a.sensors.tobytes() == b.sensors.tobytes()
        and a.regimes.tobytes() == b.regimes.tobytes()
        and a.health.tobytes() == b.health.tobytes()
    )


def test_unit_shape_dtype_and_ids() -> None:
    sim = MachineSimulator(profile=SiteProfile(), seed=1)
    assert 12 <= len(sim.sensor_names) <= 16
    assert sim.sensor_names == SENSOR_NAMES
    runs = sim.units(3)
    assert [r.unit for r in runs] == [1, 2, 3]
    assert sim.next_unit().unit == 4
    for run in runs:
        assert run.sensors.dtype == np.float32
        assert run.sensors.shape == (run.n_cycles, len(SENSOR_NAMES))
        assert np.all(np.isfinite(run.sensors))
        assert run.regimes.shape == (run.n_cycles,)
        assert set(np.unique(run.regimes)) <= set(range(len(REGIME_NAMES)))
        assert run.fault_mode in FAULT_MODES
        assert run.rul().tolist() == list(range(run.n_cycles - 1, -1, -1))


def test_deterministic_given_seed() -> None:
    a = MachineSimulator(profile=SiteProfile(), seed=42).units(4)
    b = MachineSimulator(profile=SiteProfile(), seed=42).units(4)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    # Random access regenerates the same unit as the sequence did.
    assert _same(MachineSimulator(profile=SiteProfile(), seed=42).unit(3), a[2])


def test_different_seeds_differ() -> None:
    a = MachineSimulator(profile=SiteProfile(), seed=1).units(3)
    b = MachineSimulator(profile=SiteProfile(), seed=2).units(3)
    assert [r.n_cycles for r in a] != [r.n_cycles for r in b]
    assert not any(np.array_equal(x.sensors[:5], y.sensors[:5]) for x, y in zip(a, b, strict=True))


def test_life_ends_when_health_crosses_failure_threshold() -> None:
    for run in MachineSimulator(profile=SiteProfile(), seed=3).units(20):
        assert run.health is not None
        assert run.health[-1] == 0.0
        assert np.all(run.health[:-1] > 0.0)
        assert np.all(np.diff(run.health) <= 0.0)  # damage never heals
        assert 0.75 <= run.health[0] <= 1.0  # initial wear up to 0.2 by default


def test_lifetimes_in_range_and_scalable() -> None:
    default = np.array(
        [r.n_cycles for r in MachineSimulator(profile=SiteProfile(), seed=5).units(200)]
    )
    assert default.min() >= 110 and default.max() <= 370
    assert 170 <= np.median(default) <= 260
    assert default.std() > 30  # units really differ
    short = np.array(
        [
            r.n_cycles
            for r in MachineSimulator(profile=SiteProfile(life_scale=0.5), seed=5).units(200)
        ]
    )
    assert 0.45 <= np.median(short) / np.median(default) <= 0.55


def test_initial_wear_shortens_life() -> None:
    fresh = SiteProfile(max_initial_wear=0.0)
    worn = SiteProfile(max_initial_wear=0.6)
    life_fresh = [r.n_cycles for r in MachineSimulator(profile=fresh, seed=8).units(60)]
    life_worn = [r.n_cycles for r in MachineSimulator(profile=worn, seed=8).units(60)]
    assert np.mean(life_worn) < 0.95 * np.mean(life_fresh)


def _mean_shift(mode: str, sensor: str, n_units: int = 150) -> float:
    """Mean change (last 10 vs first 10 cycles) of ``sensor`` over units of ``mode``."""
    runs = MachineSimulator(profile=NOMINAL_ONLY, seed=11).units(n_units)
    col = COL[sensor]
    shifts = [r.sensors[-10:, col].mean() - r.sensors[:10, col].mean() for r in runs]
    modes = [r.fault_mode for r in runs]
    selected = [s for s, m in zip(shifts, modes, strict=True) if m == mode]
    assert len(selected) >= 20, f"too few {mode} units for a stable mean"
    return float(np.mean(selected))


def test_fault_modes_have_different_signatures() -> None:
    # Bearing wear shakes the machine; efficiency loss barely does.
    bearing_vib = _mean_shift("bearing", "vibration_rms")
    efficiency_vib = _mean_shift("efficiency", "vibration_rms")
    assert bearing_vib > 0.3
    assert bearing_vib > 5 * abs(efficiency_vib)
    # Efficiency loss costs outlet pressure and flow; bearing wear does not.
    efficiency_p = _mean_shift("efficiency", "outlet_pressure")
    bearing_p = _mean_shift("bearing", "outlet_pressure")
    assert efficiency_p < -0.1
    assert abs(bearing_p) < 0.3 * abs(efficiency_p)
    # A seal leak shows in oil pressure, much more than either other mode.
    seal_oil = _mean_shift("seal", "oil_pressure")
    assert seal_oil < -0.08
    assert abs(_mean_shift("bearing", "oil_pressure")) < 0.3 * abs(seal_oil)


def test_degradation_is_visible_above_noise_near_failure() -> None:
    # Over the last 100 cycles, the most affected sensor of each mode moves by far
    # more than its cycle-to-cycle noise: the signal a window model has to learn.
    main_sensor = {
        "bearing": "vibration_rms",
        "efficiency": "outlet_pressure",
        "seal": "oil_pressure",
    }
    ratios: dict[str, list[float]] = {mode: [] for mode in FAULT_MODES}
    for run in MachineSimulator(profile=NOMINAL_ONLY, seed=13).units(60):
        x = run.sensors[:, COL[main_sensor[run.fault_mode]]].astype(np.float64)
        noise = np.std(np.diff(x[:60])) / np.sqrt(2)
        change = abs(x[-10:].mean() - x[-100:-90].mean())
        ratios[run.fault_mode].append(change / noise)
    for mode, values in ratios.items():
        assert len(values) >= 10
        assert np.median(values) > 3.0, mode
        assert np.min(values) > 1.0, mode


def test_regime_weights_and_switching() -> None:
    high = MachineSimulator(profile=SiteProfile(regime_weights=(0, 0, 1)), seed=2).next_unit()
    low = MachineSimulator(profile=SiteProfile(regime_weights=(1, 0, 0)), seed=2).next_unit()
    assert set(high.regimes.tolist()) == {2}
    assert set(low.regimes.tolist()) == {0}
    speed = COL["shaft_speed"]
    assert high.sensors[:, speed].mean() > low.sensors[:, speed].mean() + 100
    frozen = MachineSimulator(profile=SiteProfile(switch_prob=0.0), seed=2).units(10)
    assert all(len(set(r.regimes.tolist())) == 1 for r in frozen)
    busy = MachineSimulator(profile=SiteProfile(switch_prob=0.5), seed=2).next_unit()
    assert len(set(busy.regimes.tolist())) == 3
    assert np.count_nonzero(np.diff(busy.regimes)) > 20


def test_noise_scale_scales_noise() -> None:
    # inlet_temp has neither regime nor fault effect: its spread within a unit is noise.
    col = COL["inlet_temp"]

    def spread(scale: float) -> float:
        runs = MachineSimulator(profile=SiteProfile(noise_scale=scale), seed=4).units(10)
        return float(np.mean([r.sensors[:, col].std() for r in runs]))

    assert 1.7 <= spread(2.0) / spread(1.0) <= 2.3


def test_generation_is_fast() -> None:
    profiles = make_site_profiles(8, seed=0, non_iid=True)
    start = time.perf_counter()
    for i, profile in enumerate(profiles):
        MachineSimulator(profile=profile, seed=i).units(20)
    assert time.perf_counter() - start < 1.0


def test_iid_profiles_are_identical() -> None:
    profiles = make_site_profiles(5, seed=0, non_iid=False)
    assert len(profiles) == 5
    assert all(p == SiteProfile() for p in profiles)


def test_non_iid_profiles_differ_and_are_deterministic() -> None:
    profiles = make_site_profiles(6, seed=7, non_iid=True)
    assert profiles == make_site_profiles(6, seed=7, non_iid=True)
    assert profiles != make_site_profiles(6, seed=8, non_iid=True)
    assert len(set(profiles)) == 6
    assert len({p.life_scale for p in profiles}) == 6
    # Each site leans to its own regime and fault mode.
    for i, p in enumerate(profiles):
        assert int(np.argmax(p.fault_mix)) == i % len(FAULT_MODES)
        assert int(np.argmax(p.regime_weights)) == i % len(REGIME_NAMES)
        assert sum(p.fault_mix) == pytest.approx(1.0)
    # ... which shows in the units the sites produce.
    runs = MachineSimulator(profile=profiles[0], seed=1).units(60)
    share = sum(r.fault_mode == FAULT_MODES[0] for r in runs) / len(runs)
    assert share > 0.55


@pytest.mark.parametrize(
    "kwargs",
    [
        {"regime_weights": (1.0, 1.0)},
        {"regime_weights": (1.0, -1.0, 1.0)},
        {"fault_mix": (0.0, 0.0, 0.0)},
        {"switch_prob": 1.5},
        {"life_scale": 0.0},
        {"life_scale": float("nan")},
        {"noise_scale": float("nan")},
        {"drift_scale": -1.0},
        {"max_initial_wear": 0.95},
    ],
)
def test_profile_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(DataError):
        SiteProfile(**kwargs)  # type: ignore[arg-type]


def test_simulator_argument_validation() -> None:
    with pytest.raises(DataError):
        MachineSimulator(profile=SiteProfile(), seed=-1)
    sim = MachineSimulator(profile=SiteProfile(), seed=0)
    with pytest.raises(DataError):
        sim.unit(0)
    with pytest.raises(DataError):
        sim.units(-1)
    with pytest.raises(DataError):
        make_site_profiles(-1, seed=0, non_iid=True)
