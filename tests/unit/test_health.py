"""The health monitor: baseline statistics, change detection, persistence, NaN, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from fedge.errors import DataError
from fedge.health import HealthConfig, HealthMonitor, HealthUpdate, health_from_score

T0 = 1_700_000_000.0
NAMES = ("bearing_temp", "vibration_rms", "oil_pressure")
SCALES = np.array([0.4, 0.08, 0.03])
LEVELS = np.array([55.0, 2.0, 3.0])


def stream(
    n: int, *, seed: int = 0, change_at: int | None = None, shift: tuple[float, ...] = (3, 2, 0)
) -> np.ndarray:
    """Gaussian readings; from ``change_at`` on, each feature shifts by ``shift`` σ."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(NAMES)))
    if change_at is not None:
        z[change_at:] += np.asarray(shift)
    out: np.ndarray = LEVELS + SCALES * z
    return out


def feed_all(monitor: HealthMonitor, rows: np.ndarray, start: int = 0) -> list[HealthUpdate]:
    return [monitor.feed(T0 + start + i, row) for i, row in enumerate(rows)]


def test_baseline_median_and_scale_by_hand() -> None:
    monitor = HealthMonitor(HealthConfig(baseline_readings=5), ("a", "b", "c"))
    rows = np.array(
        [[1.0, 5.0, 7.0], [2.0, 5.0, 7.0], [3.0, 5.0, 7.0], [4.0, 5.0, 7.0], [100.0, 6.0, 7.0]]
    )
    updates = feed_all(monitor, rows)
    assert [u.phase for u in updates] == ["baseline"] * 5 and monitor.phase == "monitoring"
    np.testing.assert_allclose(monitor.baseline_median, [3.0, 5.0, 7.0])
    # a: |dev| 2 1 0 1 97 -> MAD 1 (the outlier does not matter) -> 1.4826.
    # b: MAD 0 (quantised) -> mean |dev| 0.2 -> 0.2 * 1.2533.
    # c: constant -> the floor, 1e-5 * 7.
    np.testing.assert_allclose(monitor.baseline_scale, [1.4826, 0.25066, 7e-5])
    # First scored reading: z = (4.4826 - 3)/1.4826 = 1 on a, b and c at baseline; the
    # EWMA (0.1) gives 0.1 on a; score = sqrt(0.01 / 3).
    update = monitor.feed(T0 + 5, [4.4826, 5.0, 7.0])
    assert update.score == pytest.approx(math.sqrt(0.01 / 3))
    assert update.health == pytest.approx(2 ** -((update.score / 1.5) ** 2))
    assert update.reason.startswith("a z=+0.1")


def test_constant_channel_does_not_explode() -> None:
    monitor = HealthMonitor(HealthConfig(baseline_readings=5, smoothing=1.0), ("a", "b"))
    feed_all(monitor, np.array([[7.0, float(i)] for i in range(5)]))
    update = monitor.feed(T0 + 5, [8.0, 2.0])  # +1 on a channel that never moved
    assert update.score is not None and math.isfinite(update.score)
    # z on "a" is clipped at z_clip (10); "b" is at its median.
    assert update.score == pytest.approx(math.sqrt(100 / 2))


def test_health_mapping() -> None:
    assert health_from_score(0.0, 1.5) == 1.0
    assert health_from_score(1.5, 1.5) == 0.5
    assert health_from_score(3.0, 1.5) == pytest.approx(1 / 16)


def test_change_point_is_alerted_within_a_bounded_delay_and_never_before() -> None:
    change = 300
    for seed in range(5):
        monitor = HealthMonitor(HealthConfig(), NAMES)
        updates = feed_all(monitor, stream(400, seed=seed, change_at=change))
        raised = [i for i, u in enumerate(updates) if u.newly_raised]
        assert raised, f"seed {seed}: the change was never alerted"
        # EWMA 0.1 towards RMS(3, 2, 0) = 2.08 crosses 1.5 after ~12 readings, +3 to persist.
        assert change <= raised[0] <= change + 25, (seed, raised)
        assert all(not u.alert for u in updates[:change])
        # The two shifted features lead the reason, with positive z.
        top = [part.split(" z=") for part in updates[raised[0]].reason.split(", ")[:2]]
        assert {name for name, _ in top} == {"bearing_temp", "vibration_rms"}
        assert all(z.startswith("+") for _, z in top)


def test_a_single_spike_raises_nothing_but_a_persistent_excess_does() -> None:
    config = HealthConfig(smoothing=1.0, persistence_k=3, persistence_n=5)
    monitor = HealthMonitor(config, NAMES)
    feed_all(monitor, stream(30))
    spike = LEVELS + SCALES * 8
    calm = LEVELS
    # One spike, then two more that are too far apart to make 3 of the last 5.
    sequence = [spike, calm, calm, calm, calm, spike, calm, calm, calm, calm, spike, calm]
    updates = feed_all(monitor, np.array(sequence), start=30)
    assert not any(u.alert for u in updates)
    assert updates[0].health is not None and updates[0].health < 0.5  # above threshold, no alarm
    # Three spikes within five readings: raised exactly once, on the third.
    updates = feed_all(monitor, np.array([calm] * 5 + [spike, calm, spike, spike, spike]), start=50)
    assert [u.newly_raised for u in updates] == [False] * 8 + [True, False]
    assert [u.alert for u in updates] == [False] * 8 + [True, True]


def test_alert_clears_with_hysteresis() -> None:
    config = HealthConfig(
        baseline_readings=10,
        smoothing=1.0,
        threshold=2.0,
        clear_threshold=1.0,
        persistence_k=1,
        persistence_n=3,
    )
    monitor = HealthMonitor(config, ("a",))
    feed_all(
        monitor, np.array([[v] for v in (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0, 0.0)])
    )
    # Scale: |dev| 1 0 1 1 0 1 1 0 1 0 -> MAD 1 -> 1.4826.
    s = 1.4826
    updates = feed_all(
        monitor,
        np.array([[3.0 * s], [1.5 * s], [1.5 * s], [0.5 * s], [0.5 * s], [0.5 * s]]),
        start=10,
    )
    assert [u.newly_raised for u in updates] == [True, False, False, False, False, False]
    # Between the thresholds the alert holds; three readings below 1.0 clear it.
    assert [u.alert for u in updates] == [True, True, True, True, True, False]
    assert [u.cleared for u in updates] == [False] * 5 + [True]


def test_dead_channel_is_named_and_left_out() -> None:
    monitor = HealthMonitor(HealthConfig(), NAMES)
    feed_all(monitor, stream(30))
    rows = stream(20, seed=1, change_at=0, shift=(4, 4, 0))
    rows[:, 2] = np.nan
    updates = feed_all(monitor, rows, start=30)
    assert all(u.health is not None and math.isfinite(u.health) for u in updates)
    assert all(u.dead == ("oil_pressure",) for u in updates)
    assert updates[-1].reason.endswith("dead: oil_pressure")
    # Left out, not counted as 0: the score is the RMS over the two live channels.
    assert updates[-1].alert


def test_all_channels_dead_gives_no_score_and_keeps_the_alert_state() -> None:
    monitor = HealthMonitor(HealthConfig(), NAMES)
    feed_all(monitor, stream(30))
    update = monitor.feed(T0 + 31, [np.nan, np.inf, -np.inf])
    assert update.health is None and update.score is None and not update.alert
    assert update.reason.startswith("no usable sensor")
    assert update.dead == NAMES


def test_channel_dead_during_the_baseline_is_never_scored() -> None:
    monitor = HealthMonitor(HealthConfig(baseline_readings=10), NAMES)
    rows = stream(10)
    rows[:, 1] = np.nan
    feed_all(monitor, rows)
    twin = HealthMonitor.from_state(monitor.state())
    update = monitor.feed(T0 + 10, LEVELS + np.array([0.0, 100.0, 0.0]))
    assert update.dead == ("vibration_rms",)
    # Whatever vibration_rms reads, it does not move the score.
    assert update.score == twin.feed(T0 + 10, LEVELS + np.array([0.0, np.nan, 0.0])).score


def test_hours_baseline() -> None:
    monitor = HealthMonitor(HealthConfig(baseline_hours=1.0, min_baseline_readings=5), NAMES)
    rows = stream(12)
    # One reading every 10 minutes: the baseline is complete at the reading 60 minutes in.
    phases = [monitor.feed(T0 + 600 * i, row).phase for i, row in enumerate(rows)]
    assert phases == ["baseline"] * 7 + ["monitoring"] * 5


def test_operating_condition_compensation() -> None:
    rng = np.random.default_rng(3)
    # The baseline (first 30 readings) sees the three loads, then the machine runs 20 at each.
    load = np.r_[np.repeat([0.0, 1.0, -1.0], 10), np.tile(np.repeat([-1.0, 0.0, 1.0], 20), 7)[:370]]
    speed = 3000 + 200 * load + rng.normal(0, 1, 400)
    temp = 50 + 5 * load + rng.normal(0, 0.2, 400)  # follows the load, healthy
    temp[300:] += 1.0  # +5 σ from cycle 300: a fault
    rows = np.stack([speed, temp], axis=1)
    plain = HealthMonitor(HealthConfig(), ("speed", "temp"))
    plain_alerts = [u.alert for u in feed_all(plain, rows)]
    # Without compensation the baseline's spread is the load's: the fault drowns in it.
    assert not any(plain_alerts[300:330])
    config = HealthConfig(condition_features=("speed",))
    compensated = HealthMonitor(config, ("speed", "temp"))
    updates = feed_all(compensated, rows)
    assert not any(u.alert for u in updates[:300])
    assert any(u.alert for u in updates[300:330])
    assert "speed" not in updates[-1].reason


def test_unseen_operating_point_is_not_scored() -> None:
    config = HealthConfig(baseline_readings=10, condition_features=("speed",))
    monitor = HealthMonitor(config, ("speed", "temp"))
    rng = np.random.default_rng(0)
    feed_all(monitor, np.stack([3000 + rng.normal(0, 1, 10), 50 + rng.normal(0, 0.2, 10)], axis=1))
    update = monitor.feed(T0 + 10, [3200.0, 60.0])
    assert update.score is None and not update.alert
    assert update.reason.startswith("operating point outside the baseline: speed=3200")


def test_state_round_trip_gives_identical_updates() -> None:
    config = HealthConfig(condition_features=("oil_pressure",))
    rows = stream(120, change_at=80)
    for cut in (10, 60):  # inside the baseline, and while monitoring
        original = HealthMonitor(config, NAMES)
        feed_all(original, rows[:cut])
        restored = HealthMonitor.from_state(original.state())
        assert feed_all(restored, rows[cut:], start=cut) == feed_all(
            original, rows[cut:], start=cut
        )


def test_malformed_state_is_a_data_error() -> None:
    state = HealthMonitor(HealthConfig(), NAMES).state()
    broken = dict(state)
    broken["median"] = np.zeros(7)
    with pytest.raises(DataError, match="shapes"):
        HealthMonitor.from_state(broken)
    del broken["recent"]
    with pytest.raises(DataError, match="malformed"):
        HealthMonitor.from_state(broken)


def test_bad_input_and_config() -> None:
    monitor = HealthMonitor(HealthConfig(), NAMES)
    with pytest.raises(DataError, match="expected 3 values"):
        monitor.feed(T0, [1.0, 2.0])
    monitor.feed(T0, LEVELS)
    with pytest.raises(DataError, match="older"):
        monitor.feed(T0 - 1, LEVELS)
    with pytest.raises(DataError, match="not among"):
        HealthMonitor(HealthConfig(condition_features=("rpm",)), NAMES)
    for bad in (
        {"baseline_readings": 10, "baseline_hours": 1.0},
        {"threshold": 1.0, "clear_threshold": 2.0},
        {"persistence_k": 4, "persistence_n": 3},
        {"smoothing": 0.0},
    ):
        with pytest.raises(ValidationError):
            HealthConfig.model_validate(bad)
