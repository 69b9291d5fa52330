"""The source seam: health counters, option validation, simulated/replay/cmapss as plugins."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources import ReplaySensorSource, SensorSample, SimulatedSensorSource
from edge_agent.sources.base import HealthTracker, SourceHealth
from edge_agent.sources.cmapss import CmapssOptions, CmapssSource, cmapss_source
from fedge.data.simulator import SiteProfile, UnitRun
from fedge.errors import ConfigError


def test_sample_defaults_leave_life_cycle_and_time_to_the_agent() -> None:
    s = SensorSample(values=np.array([1.0, np.nan]))
    assert (s.unit, s.cycle, s.failed, s.ts) == (None, None, False, None)


def test_health_tracker_counts_and_states() -> None:
    h = HealthTracker()
    assert h.snapshot() == SourceHealth(state="starting")
    h.connected()
    h.reading(100.0)
    h.reading(101.5)
    h.bad_row("x.csv:3: 2 fields")
    h.error("lost", state="reconnecting")
    h.connected()  # the second connection is a reconnect
    snap = h.snapshot()
    assert snap == SourceHealth(
        state="ok",
        last_error="lost",
        errors=1,
        reconnects=1,
        readings=2,
        last_reading_ts=101.5,
        bad_rows=1,
    )


def test_health_tracker_is_consistent_under_threads() -> None:
    h = HealthTracker()

    def bump() -> None:
        for _ in range(2000):
            h.reading(1.0)
            h.bad_row("b")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (h.snapshot().readings, h.snapshot().bad_rows) == (8000, 8000)


def test_from_options_names_the_bad_field() -> None:
    with pytest.raises(ConfigError, match=r"source 'simulated': switch_prob: Input should be"):
        SimulatedSensorSource.from_options({"switch_prob": "often"})
    with pytest.raises(ConfigError, match=r"source 'simulated': colour: Extra inputs"):
        SimulatedSensorSource.from_options({"colour": "red"})
    with pytest.raises(ConfigError, match=r"life_scale must be in"):  # the profile's own check
        SimulatedSensorSource.from_options({"life_scale": 1e9})
    with pytest.raises(ConfigError, match="options must be a table"):
        SimulatedSensorSource.from_options(["not", "a", "table"])  # type: ignore[arg-type]


def test_simulated_from_options_matches_direct_construction() -> None:
    direct = SimulatedSensorSource(profile=SiteProfile(life_scale=0.5), seed=7)
    built = SimulatedSensorSource.from_options({"life_scale": 0.5}, seed=7)
    assert built.sensor_names == direct.sensor_names
    for a, b in zip(direct.history(2), built.history(2), strict=True):
        np.testing.assert_array_equal(a.sensors, b.sensors)
    for _ in range(50):
        x, y = direct.read(), built.read()
        assert (x.unit, x.cycle, x.failed) == (y.unit, y.cycle, y.failed)
        assert x.values.dtype == np.float64
        np.testing.assert_array_equal(x.values, y.values)
    assert built.health().readings == 50


def _run(unit: int, n: int, width: int = 2) -> UnitRun:
    sensors = np.arange(n * width, dtype=np.float32).reshape(n, width) + unit * 100
    return UnitRun(unit=unit, fault_mode="x", regimes=np.zeros(n, np.int64), sensors=sensors)


def test_replay_streams_live_units_then_is_exhausted() -> None:
    src = ReplaySensorSource(sensor_names=("a", "b"), history=[_run(1, 3)], live=[_run(2, 2)])
    src.start()
    assert [r.unit for r in src.history(5)] == [1]
    first, last = src.read(), src.read()
    assert first is not None and last is not None
    assert (first.unit, first.cycle, first.failed) == (2, 0, False)
    assert (last.unit, last.cycle, last.failed) == (2, 1, True)
    np.testing.assert_array_equal(last.values, [202.0, 203.0])
    assert src.read() is None
    assert src.health().state == "exhausted"


def test_replay_cannot_come_from_a_config_file() -> None:
    with pytest.raises(ConfigError, match="use kind = 'cmapss'"):
        ReplaySensorSource.from_options({})


def _write_cmapss(root: Path, n_engines: int = 3, n_cycles: int = 12) -> None:
    """A tiny FD001-shaped subset: 26 columns, informative sensors s2 and s3 drift."""
    rng = np.random.default_rng(0)
    rows = []
    for engine in range(1, n_engines + 1):
        for cycle in range(1, n_cycles + 1):
            sensors = np.full(21, 5.0)
            sensors[1] = 640.0 + cycle * 0.5 + rng.normal(0, 0.1)
            sensors[2] = 1580.0 + cycle * 2.0 + rng.normal(0, 1.0)
            rows.append([engine, cycle, 0.0, 0.0, 100.0, *sensors])
    text = "\n".join(" ".join(f"{v:.4f}" for v in r) for r in rows) + "\n"
    (root / "train_FD001.txt").write_text(text)
    (root / "test_FD001.txt").write_text(text)
    (root / "RUL_FD001.txt").write_text("\n".join("10" for _ in range(n_engines)) + "\n")


def test_cmapss_source_history_then_last_engine_live(tmp_path: Path) -> None:
    _write_cmapss(tmp_path)
    src = CmapssSource.from_options({"path": str(tmp_path), "subset": "fd001", "engines": "1-3"})
    assert src.sensor_names == ("s2", "s3")
    assert [r.unit for r in src.history(10)] == [1, 2]
    samples = [src.read() for _ in range(12)]
    assert all(s is not None and s.unit == 3 for s in samples)
    assert samples[-1] is not None and samples[-1].failed
    assert src.read() is None
    assert cmapss_source(tmp_path, "FD001", "2-3").history(10)[0].unit == 2


def test_cmapss_options_refuse_bad_engine_ranges(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="engines"):
        CmapssSource.from_options({"path": str(tmp_path), "engines": "5-2"})
    with pytest.raises(ConfigError, match="engines"):
        CmapssSource.from_options({"path": str(tmp_path), "engines": "all"})
    _write_cmapss(tmp_path)
    with pytest.raises(ConfigError, match="selects 1 engines"):
        CmapssSource.from_options({"path": str(tmp_path), "engines": "3-9"})
    assert CmapssOptions(path=tmp_path, engines="4").engine_range == (4, 4)
