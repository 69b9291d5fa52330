"""The csv source: replay and follow, bad rows by line number, times, snapshot columns."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources.base import SensorSample
from edge_agent.sources.csv import CsvSource
from fedge.errors import ConfigError
from tests.support import wait_until


@pytest.fixture
def opened() -> Iterator[list[CsvSource]]:
    sources: list[CsvSource] = []
    yield sources
    for src in sources:
        src.close()


def _open(opened: list[CsvSource], **options: object) -> CsvSource:
    src = CsvSource.from_options(options)
    src.start()
    opened.append(src)
    return src


def _all(src: CsvSource, limit: int = 1000) -> list[SensorSample]:
    out = []
    for _ in range(limit):
        sample = src.read()
        if sample is None:
            if src.health().state == "exhausted":
                break
            continue
        out.append(sample)
    return out


GOOD_AND_BAD = (
    "time,temp,pressure,status\n"  # line 1
    "2024-05-01T12:00:00Z,40.5,1.20,ok\n"  # 2
    "2024-05-01T12:00:01Z,abc,1.21,ok\n"  # 3: text in a numeric column
    "2024-05-01T12:00:02Z,41.0\n"  # 4: too few fields
    "not a time,41.5,1.22,ok\n"  # 5: bad timestamp
    "1714564803,42.0,,ok\n"  # 6: epoch seconds, empty pressure
    "\n"  # 7: blank line, skipped silently
    "2024-05-01 14:00:04+02:00,42.5,1.24,ok\n"  # 8: ISO with an offset
)


def test_replay_skips_bad_rows_and_names_their_lines(
    tmp_path: Path, opened: list[CsvSource], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pump.csv"
    path.write_text(GOOD_AND_BAD)
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources.csv"):
        src = _open(opened, path=str(path), time_column="time", speed=0)
        samples = _all(src)
    assert src.sensor_names == ("temp", "pressure")  # "status" is not numeric
    assert [s.ts for s in samples] == [1714564800.0, 1714564803.0, 1714564804.0]
    np.testing.assert_array_equal(samples[0].values, [40.5, 1.20])
    assert samples[1].values[0] == 42.0 and math.isnan(samples[1].values[1])
    assert all(s.unit is None and s.cycle is None for s in samples)
    health = src.health()
    assert (health.state, health.readings, health.bad_rows) == ("exhausted", 3, 3)
    assert health.last_reading_ts == 1714564804.0
    for line, reason in [
        (3, "'abc' is not a number"),
        (4, "2 fields, the header has 4"),
        (5, "neither epoch seconds nor ISO 8601"),
    ]:
        assert f"pump.csv:{line}: " in caplog.text
        assert reason in caplog.text
    assert "pump.csv:7" not in caplog.text


def test_chosen_columns_and_one_missing_from_the_header(
    tmp_path: Path, opened: list[CsvSource]
) -> None:
    path = tmp_path / "a.csv"
    path.write_text("t;b;a\n1;2;3\n")
    src = _open(opened, path=str(path), columns=["a", "b", "c"], delimiter=";", speed=0)
    (sample,) = _all(src)
    np.testing.assert_array_equal(sample.values[:2], [3.0, 2.0])
    assert math.isnan(sample.values[2])  # "c" is not in the header
    assert sample.ts is None  # no time column: the agent's clock
    assert "header lacks c" in (src.health().last_error or "")


def test_real_time_pacing_holds_rows_until_they_are_due(
    tmp_path: Path, opened: list[CsvSource]
) -> None:
    path = tmp_path / "a.csv"
    path.write_text("time,x\n0,1\n3600,2\n")  # an hour apart
    src = _open(opened, path=str(path), time_column="time", speed=1.0)
    first = src.read()
    assert first is not None and first.values[0] == 1.0
    assert src.read() is None  # due in an hour, not now
    assert src.health().state == "ok"


def test_loop_starts_over_with_the_agent_clock(tmp_path: Path, opened: list[CsvSource]) -> None:
    path = tmp_path / "a.csv"
    path.write_text("time,x\n100,1\n101,2\n")
    src = _open(opened, path=str(path), time_column="time", speed=0, loop=True)
    got = [src.read() for _ in range(8)]
    values = [s.values[0] for s in got if s is not None]
    assert values[:4] == [1.0, 2.0, 1.0, 2.0]
    assert all(s.ts is None for s in got if s is not None)


def test_snapshot_column_becomes_vibration_features(
    tmp_path: Path, opened: list[CsvSource]
) -> None:
    square = ";".join(["2", "-2"] * 32)  # rms 2, peak 2, crest 1, kurtosis 1
    flat = ";".join(["1"] * 64)  # a dead sensor
    path = tmp_path / "a.csv"
    path.write_text(f"time,temp,accel\n1,40,{square}\n2,41,{flat}\n3,42,\n")
    src = _open(
        opened,
        path=str(path),
        time_column="time",
        speed=0,
        vibration=[{"column": "accel", "prefix": "bearing"}],
    )
    assert src.sensor_names == (
        "temp",
        "bearing_rms",
        "bearing_peak",
        "bearing_crest",
        "bearing_kurtosis",
    )
    good, dead, empty = _all(src)
    np.testing.assert_allclose(good.values, [40.0, 2.0, 2.0, 1.0, 1.0])
    assert dead.values[0] == 41.0 and np.isnan(dead.values[1:]).all()
    assert empty.values[0] == 42.0 and np.isnan(empty.values[1:]).all()
    health = src.health()
    assert health.errors == 1 and "a.csv:3: snapshot 'accel': flat_line" in (
        health.last_error or ""
    )
    assert health.bad_rows == 0  # the row's other channels were kept


def test_follow_a_growing_file(tmp_path: Path, opened: list[CsvSource]) -> None:
    path = tmp_path / "log.csv"
    path.write_text("time,temp\n2024-05-01T00:00:00Z,1\n")  # before the agent: skipped
    src = _open(opened, path=str(path), time_column="time", follow=True, columns=["temp"])
    assert src.read() is None
    with path.open("a") as fh:
        fh.write("2024-05-01T00:00:01Z,2\n2024-05-01T00:00:02Z,3")  # the last line unfinished
        fh.flush()
        got = [s for s in (src.read() for _ in range(5)) if s is not None]
        assert [s.values[0] for s in got] == [2.0]
        fh.write("\nbad,row\n2024-05-01T00:00:03Z,4\n")
    got = [s for s in (src.read() for _ in range(5)) if s is not None]
    assert [s.values[0] for s in got] == [3.0, 4.0]
    assert got[-1].ts == 1714521603.0
    assert src.health().bad_rows == 1
    assert "log.csv:5" in (src.health().last_error or "")
    assert src.health().state == "ok"


def test_follow_through_rotation_and_a_file_that_appears_later(
    tmp_path: Path, opened: list[CsvSource]
) -> None:
    path = tmp_path / "log.csv"
    src = _open(opened, path=str(path), follow=True, columns=["x"])
    assert src.read() is None  # not there yet: waiting, not failing
    path.write_text("x\n1\n")
    assert wait_until(lambda: (s := src.read()) is not None and s.values[0] == 1.0, timeout=5)
    path.rename(tmp_path / "log.csv.1")
    path.write_text("x\n2\n")
    assert wait_until(lambda: (s := src.read()) is not None and s.values[0] == 2.0, timeout=5)


def test_column_inference_needs_data_or_a_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; to wait for it, list `columns`"):
        CsvSource.from_options({"path": str(tmp_path / "nope.csv")})
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b\n")
    with pytest.raises(ConfigError, match="no data rows"):
        CsvSource.from_options({"path": str(empty)})
    with pytest.raises(ConfigError, match="follow and loop"):
        CsvSource.from_options({"path": str(empty), "follow": True, "loop": True})
    with pytest.raises(ConfigError, match="timezone"):
        CsvSource.from_options({"path": str(empty), "timezone": "Nowhere/Land"})
