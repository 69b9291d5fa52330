"""The ``command`` source: a program that prints one JSON reading per line.

The escape hatch for everything without a built-in source (a vendor SDK, a serial
protocol, a script around ``i2cget``): ``argv`` is run without a shell and each line
it prints on stdout is one reading, either ``{"ts": ..., "values": {"temp": 41.2}}``
or a flat object ``{"ts": ..., "temp": 41.2}`` (``ts`` optional: epoch seconds or ISO
8601; absent means the agent's clock). ``channels`` lists the keys to read; a key
that is missing or ``null`` is a channel without a value (NaN). A key named in
``vibration`` holds a snapshot array turned into vibration features.

A bad line (not JSON, not an object, a non-number where a number belongs) is logged
with its run and line number, counted in ``health().bad_rows`` and skipped. stderr
lines go to the ``edge_agent.sources.command`` logger. When the program exits it is
started again with exponential backoff and jitter (``reconnect_*`` options); a run
that lasted ``healthy_after_s`` resets the backoff. ``close()`` sends SIGTERM to the
program's process group, then SIGKILL after a second.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Annotated, ClassVar, Self

import numpy as np
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from edge_agent.sources.base import BaseSource, SensorSample, expect_options
from edge_agent.sources.inputs import (
    InputError,
    LimitedLog,
    SnapshotFeatures,
    VibrationChannel,
    json_number,
    parse_timestamp,
    timezone,
)
from edge_agent.sources.supervisor import ReconnectOptions, SessionEnded, Worker

__all__ = ["CommandOptions", "CommandSource"]

log = logging.getLogger(__name__)

Key = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Arg = Annotated[str, StringConstraints(min_length=1)]

# SIGTERM, then SIGKILL after this long; reaping a killed process takes a moment.
_KILL_AFTER_S = 1.0
_REAP_S = 0.5


class CommandOptions(ReconnectOptions):
    """Options of the ``command`` source (see the module docstring)."""

    argv: Annotated[tuple[Arg, ...], Field(min_length=1)]
    channels: Annotated[tuple[Key, ...], Field(min_length=1)]
    vibration: tuple[VibrationChannel, ...] = ()
    time_key: Key = "ts"
    timezone: str = "UTC"
    cwd: Path | None = None
    env: dict[str, str] = Field(default_factory=dict)
    max_line_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    buffer: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        timezone(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        keys = [*self.channels, *(c.column for c in self.vibration)]
        if len(set(keys)) != len(keys):
            raise ValueError("channels and vibration columns must be distinct keys")
        if self.time_key in keys:
            raise ValueError(f"time_key {self.time_key!r} is also a channel")
        return self


class CommandSource(BaseSource):
    """Readings printed by a child process, one JSON object per line."""

    kind: ClassVar[str] = "command"
    Options: ClassVar[type[BaseModel]] = CommandOptions

    def __init__(self, options: CommandOptions) -> None:
        super().__init__()
        self.options = options
        self._features = SnapshotFeatures(options.vibration)
        self._names = tuple(options.channels) + self._features.names
        self._tz = timezone(options.timezone)
        self._queue: deque[SensorSample] = deque(maxlen=options.buffer)
        self._worker = Worker(f"source-command-{Path(options.argv[0]).name}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._bad = LimitedLog(log)
        self._stderr_log = LimitedLog(log, burst=100)
        self._runs = 0
        self.dropped = 0

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        return cls(expect_options(options, CommandOptions))

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._names

    # Lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if self._worker.stop_event.is_set():
            return
        self._worker.start(self._supervise)

    def close(self) -> None:
        started = time.monotonic()
        self._worker.stop_event.set()
        self._terminate()
        self._worker.stop(timeout=max(0.1, 2.0 - (time.monotonic() - started)))
        self._health.set_state("down")

    def _terminate(self) -> None:
        with self._proc_lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # The program runs in its own session (start_new_session): signal the whole
        # group so helpers it started do not keep our pipes open.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=_KILL_AFTER_S)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit on SIGTERM; killing it", self.options.argv[0])
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=_REAP_S)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def _supervise(self) -> None:
        self._worker.supervise(self._run_once, self.options, on_failure=self._on_failure)

    def _on_failure(self, exc: BaseException, delay_s: float) -> None:
        message = f"{self.options.argv[0]}: {exc}"
        down = isinstance(exc, OSError)  # cannot even be started (missing, not executable)
        self._health.error(message, state="down" if down else "reconnecting")
        log.warning("%s; restarting in %.1f s", message, delay_s)

    # One run ------------------------------------------------------------------------
    def _run_once(self) -> None:
        o = self.options
        env = {**os.environ, **o.env} if o.env else None
        proc = subprocess.Popen(  # noqa: S603 - argv from the operator's config, no shell
            list(o.argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=o.cwd,
            env=env,
            start_new_session=True,
        )
        with self._proc_lock:
            self._proc = proc
        if self._worker.stop_event.is_set():
            self._terminate()  # close() ran while we were starting it
        self._runs += 1
        run = self._runs
        self._health.connected()
        log.info("started %s (run %d, pid %d)", o.argv[0], run, proc.pid)
        assert proc.stdout is not None and proc.stderr is not None  # noqa: S101 - PIPE
        errors = threading.Thread(
            target=self._pump_stderr, args=(proc.stderr, run), name="stderr", daemon=True
        )
        errors.start()
        try:
            self._pump_stdout(proc.stdout, run)
        finally:
            if self._worker.stop_event.is_set():
                self._terminate()
            code: int | None
            try:
                code = proc.wait(timeout=_KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                self._terminate()
                code = proc.poll()
            errors.join(timeout=_KILL_AFTER_S)
            proc.stdout.close()
            proc.stderr.close()
        raise SessionEnded(f"run {run} exited with code {code}")

    def _pump_stdout(self, stream: IO[bytes], run: int) -> None:
        limit = self.options.max_line_bytes
        line_no = 0
        overlong = False
        while True:
            raw = stream.readline(limit + 1)
            if not raw:
                return
            if not raw.endswith(b"\n") and len(raw) > limit:
                overlong = True  # the rest of this line arrives with the next reads
                continue
            line_no += 1
            if overlong:
                overlong = False
                self._bad_line(run, line_no, f"longer than {limit} bytes")
                continue
            self._take_line(run, line_no, raw)

    def _pump_stderr(self, stream: IO[bytes], run: int) -> None:
        for raw in iter(lambda: stream.readline(4096), b""):
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr_log.warning("%s (run %d) stderr: %s", self.options.argv[0], run, text)

    def _bad_line(self, run: int, line_no: int, reason: str) -> None:
        message = f"{self.options.argv[0]} run {run} line {line_no}: {reason}"
        self._health.bad_row(message)
        self._bad.warning("bad line skipped: %s", message)

    def _take_line(self, run: int, line_no: int, raw: bytes) -> None:
        text = raw.strip()
        if not text:
            return
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._bad_line(run, line_no, f"not JSON: {exc}")
            return
        try:
            sample, problems = self._sample(document)
        except InputError as exc:
            self._bad_line(run, line_no, str(exc))
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the agent is not reading; keep the newest
        self._queue.append(sample)
        for problem in problems:
            message = f"{self.options.argv[0]} run {run} line {line_no}: {problem}"
            self._health.error(message)
            self._bad.warning("%s", message)

    def _sample(self, document: object) -> tuple[SensorSample, list[str]]:
        if not isinstance(document, dict):
            raise InputError(f"expected a JSON object, got {type(document).__name__}")
        values_obj = document.get("values")
        fields: Mapping[str, object] = values_obj if isinstance(values_obj, dict) else document
        raw_ts = document.get(self.options.time_key)
        ts = None if raw_ts is None else parse_timestamp(raw_ts, naive_tz=self._tz)
        values = np.full(len(self._names), np.nan)
        for j, key in enumerate(self.options.channels):
            values[j] = json_number(fields.get(key), what=key)
        problems: list[str] = []
        if self._features.channels:
            feats, problems = self._features.compute(fields, from_text=False)
            values[len(self.options.channels) :] = feats
        return SensorSample(values=values, ts=ts), problems

    # Agent side ---------------------------------------------------------------------
    def read(self) -> SensorSample | None:
        try:
            sample = self._queue.popleft()
        except IndexError:
            return None
        self._health.reading(sample.ts if sample.ts is not None else time.time())
        return sample
