"""The command source with real child processes: JSON lines, bad lines, stderr, restarts."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.sources.base import SensorSample
from edge_agent.sources.command import CommandSource
from tests.support import wait_until

pytestmark = pytest.mark.integration

SQUARE = [1.0, -1.0] * 32  # rms 1, peak 1, crest 1, kurtosis 1

READER = f"""
import json, sys
print(json.dumps({{"ts": 1714564800.5, "values": {{"temp": 40.5, "flow": 3}}}}), flush=True)
print("this is not json", flush=True)                                     # line 2
print(json.dumps({{"temp": "hot"}}), flush=True)                           # line 3
print("warming up the sensor", file=sys.stderr, flush=True)
print(json.dumps([1, 2, 3]), flush=True)                                  # line 4
print(json.dumps({{"ts": "2024-05-01T12:00:01Z", "temp": 41.0, "accel": {SQUARE}}}), flush=True)
print(json.dumps({{"temp": None, "flow": 4}}), flush=True)                 # line 6
sys.exit(3)
"""

STUBBORN = """
import signal, sys, time
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print('{"temp": 1}', flush=True)
time.sleep(120)
"""


def _source(tmp_path: Path, code: str, *args: str, **extra: Any) -> CommandSource:
    script = tmp_path / "reader.py"
    script.write_text(code)
    return CommandSource.from_options(
        {
            "argv": [sys.executable, str(script), *args],
            "channels": ["temp", "flow"],
            "vibration": [{"column": "accel", "prefix": "bearing"}],
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "healthy_after_s": 30.0,
            **extra,
        }
    )


def _next(src: CommandSource, *, timeout: float = 10.0) -> SensorSample:
    """The next reading, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = src.read()
        if sample is not None:
            return sample
        time.sleep(0.01)
    raise AssertionError(f"no reading within {timeout} s; {src.health()}")


def test_lines_bad_lines_stderr_and_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _source(tmp_path, READER)
    assert src.sensor_names[:3] == ("temp", "flow", "bearing_rms")
    with caplog.at_level(logging.INFO, logger="edge_agent.sources.command"):
        src.start()
        try:
            first, second, third = _next(src), _next(src), _next(src)
            assert first.ts == 1714564800.5
            np.testing.assert_array_equal(first.values[:2], [40.5, 3.0])
            assert np.isnan(first.values[2:]).all()  # no snapshot in that line
            assert second.ts == 1714564801.0
            assert second.values[0] == 41.0 and np.isnan(second.values[1])
            np.testing.assert_allclose(second.values[2:6], [1.0, 1.0, 1.0, 1.0])
            assert third.ts is None and np.isnan(third.values[0]) and third.values[1] == 4.0

            # The program exits after each run and is started again.
            assert wait_until(lambda: src.health().reconnects >= 2, timeout=15)
            again = _next(src)
            assert again.ts == 1714564800.5
        finally:
            src.close()
    assert not src._worker.running
    health = src.health()
    assert health.state == "down"
    # Three per run; runs 1 and 2 ended before run 3 started (close may cut run 3 short).
    assert health.bad_rows >= 6
    text = caplog.text
    for line, reason in [
        (2, "not JSON"),
        (3, "temp: expected a number"),
        (4, "expected a JSON object"),
    ]:
        for run in (1, 2):
            assert f"run {run} line {line}: {reason}" in text, (run, line)
    assert "run 1 line 5" not in text and "run 1 line 6" not in text
    assert "(run 1) stderr: warming up the sensor" in text
    assert "run 1 exited with code 3" in text


@pytest.mark.parametrize("mode", ["exit-on-term", "ignore-term"])
def test_close_stops_a_running_program(tmp_path: Path, mode: str) -> None:
    src = _source(tmp_path, STUBBORN, mode)
    src.start()
    try:
        assert _next(src).values[0] == 1.0
        proc = src._proc
        assert proc is not None and proc.poll() is None
    finally:
        src.close()  # SIGTERM, then SIGKILL after a second for the stubborn one
    assert proc.poll() is not None
    assert not src._worker.running


def test_a_missing_program_is_down_not_fatal(tmp_path: Path) -> None:
    src = CommandSource.from_options(
        {
            "argv": [str(tmp_path / "no-such-reader")],
            "channels": ["temp"],
            "reconnect_initial_s": 0.05,
            "reconnect_max_s": 0.1,
        }
    )
    src.start()
    try:
        assert wait_until(lambda: src.health().errors >= 2, timeout=10)  # keeps trying
        assert src.health().state == "down"
        assert "No such file" in (src.health().last_error or "")
        assert src.read() is None
    finally:
        src.close()
