"""The ``csv`` source: a CSV file replayed, or followed as a data logger appends to it.

The first line of the file is the header. Each later line is one reading (records
spanning lines are not supported). ``columns`` picks the channels (default: every
column whose values in the first 20 rows are mostly numbers, except ``time_column``
and snapshot columns);
``time_column`` holds epoch seconds or ISO 8601 times.

* **Replay** (default): ``speed = 1.0`` plays the rows in real time from the time
  column, ``2.0`` twice as fast, ``0`` as fast as ``read()`` is called (also the
  behaviour without a time column). ``loop`` starts over at the end (the readings
  then carry the agent's clock, not the file's); otherwise the source ends as
  ``exhausted``.
* **Follow** (``follow = true``): like ``tail -F``: new rows as they are written,
  through rotation and truncation (see :mod:`edge_agent.sources.tail`);
  ``from_start`` first replays the rows already there.

A bad row (wrong field count, text where a number belongs, an unreadable time) is
logged with its line number, counted in ``health().bad_rows`` and skipped. An empty
cell is a channel without a value (NaN). ``vibration`` turns snapshot columns (samples
separated by ``;``) into vibration features; a refused snapshot (dead sensor) gives
NaN features and counts as an error, the row's other channels are kept.
"""

from __future__ import annotations

import csv
import logging
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Self

import numpy as np
from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options
from edge_agent.sources.inputs import (
    InputError,
    LimitedLog,
    SnapshotFeatures,
    VibrationChannel,
    parse_number,
    parse_timestamp,
    timezone,
)
from edge_agent.sources.tail import LineTail
from fedge.errors import ConfigError, DataError

__all__ = ["CsvOptions", "CsvSource"]

log = logging.getLogger(__name__)

Column = Annotated[str, StringConstraints(min_length=1, max_length=128)]

# Work per read() call, so a file of bad rows cannot hold the agent's thread.
_MAX_LINES_PER_READ = 500
_MAX_SECONDS_PER_READ = 0.005
# Data rows looked at to decide which columns are numeric.
_INFER_ROWS = 20


class CsvOptions(SourceOptions):
    """Options of the ``csv`` source (see the module docstring)."""

    path: Path
    time_column: Column | None = None
    columns: Annotated[tuple[Column, ...], Field(min_length=1)] | None = None
    speed: Annotated[float, Field(ge=0.0, le=1e6)] = 1.0
    loop: bool = False
    follow: bool = False
    from_start: bool = False
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    timezone: str = "UTC"
    vibration: tuple[VibrationChannel, ...] = ()
    max_line_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        timezone(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.follow and self.loop:
            raise ValueError("follow and loop exclude each other")
        special = {c.column for c in self.vibration} | {self.time_column}
        for name in self.columns or ():
            if name in special:
                raise ValueError(f"column {name!r} is the time column or a snapshot column")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise ValueError("columns has duplicates")
        return self


def _split(text: str, delimiter: str) -> list[str]:
    return next(csv.reader([text], delimiter=delimiter, strict=True), [])


def _infer_columns(opts: CsvOptions) -> tuple[str, ...]:
    """The numeric columns of the file's first rows, in header order."""
    special = {c.column for c in opts.vibration} | {opts.time_column}
    tail = LineTail(opts.path, follow=False, max_line_bytes=opts.max_line_bytes)
    rows: list[list[str]] = []
    header: list[str] = []
    try:
        while len(rows) < _INFER_ROWS and (item := tail.next_line()) is not None:
            _, raw = item
            if raw is None:
                continue
            fields = [f.strip() for f in _split(raw.decode("utf-8", "replace"), opts.delimiter)]
            if not header:
                header = fields
            elif len(fields) == len(header):
                rows.append(fields)
    except (OSError, csv.Error) as exc:
        raise DataError(f"source 'csv': cannot read {opts.path}: {exc}") from exc
    finally:
        tail.close()
    if not tail.files_opened:
        raise ConfigError(
            f"source 'csv': {opts.path} does not exist; to wait for it, list `columns`"
        )
    if not rows:
        raise ConfigError(
            f"source 'csv': {opts.path} has no data rows to infer numeric columns from; "
            "list `columns`"
        )

    def is_number(cell: str) -> bool:
        try:
            return not math.isnan(parse_number(cell))
        except InputError:
            return False

    def numeric(i: int) -> bool:
        # Most cells numbers: a numeric column (a stray bad cell is a bad row later).
        cells = [r[i] for r in rows if r[i]]
        return sum(map(is_number, cells)) * 2 > len(cells)

    names = tuple(h for i, h in enumerate(header) if h not in special and numeric(i))
    if not names:
        raise ConfigError(f"source 'csv': {opts.path} has no numeric columns")
    return names


class CsvSource(BaseSource):
    """Readings from a CSV file, replayed or followed (see the module docstring)."""

    kind: ClassVar[str] = "csv"
    Options: ClassVar[type[BaseModel]] = CsvOptions

    def __init__(self, options: CsvOptions, *, columns: Sequence[str]) -> None:
        super().__init__()
        self.options = options
        self._columns = tuple(columns)
        self._features = SnapshotFeatures(options.vibration)
        self._names = self._columns + self._features.names
        self._tz = timezone(options.timezone)
        self._tail = LineTail(
            options.path,
            follow=options.follow,
            from_start=options.from_start or not options.follow,
            max_line_bytes=options.max_line_bytes,
        )
        self._lock = threading.Lock()
        self._bad = LimitedLog(log)
        self._header: dict[str, int] | None = None
        self._width = 0
        self._pending: tuple[float | None, np.ndarray] | None = None
        self._pace: tuple[float, float] | None = None  # (first row ts, monotonic at it)
        self._closed = False
        self._waiting_logged = False

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        opts = expect_options(options, CsvOptions)
        columns = opts.columns if opts.columns is not None else _infer_columns(opts)
        return cls(opts, columns=columns)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._names

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._tail.close()
            if self._health.state != "exhausted":
                self._health.set_state("down")

    # Rows ---------------------------------------------------------------------------
    def _where(self, line_no: int) -> str:
        return f"{self.options.path}:{line_no}"

    def _bad_row(self, line_no: int, reason: str) -> None:
        message = f"{self._where(line_no)}: {reason}"
        self._health.bad_row(message)
        self._bad.warning("bad row skipped: %s", message)

    def _take_header(self, line_no: int, text: str) -> None:
        fields = [f.strip() for f in _split(text, self.options.delimiter)]
        self._header = {name: i for i, name in enumerate(fields)}
        self._width = len(fields)
        wanted = [*self._columns, *self._features.columns]
        if self.options.time_column is not None:
            wanted.append(self.options.time_column)
        missing = [c for c in wanted if c not in self._header]
        if missing:
            message = f"{self._where(line_no)}: header lacks {', '.join(missing)}"
            self._health.error(message)
            log.error("%s (those channels read as NaN)", message)

    def _parse(self, line_no: int, text: str) -> tuple[float | None, np.ndarray] | None:
        assert self._header is not None  # noqa: S101 - the header is line 1
        try:
            fields = _split(text, self.options.delimiter)
        except csv.Error as exc:
            self._bad_row(line_no, str(exc))
            return None
        if len(fields) != self._width:
            if not "".join(fields).strip():
                return None  # blank line
            self._bad_row(line_no, f"{len(fields)} fields, the header has {self._width}")
            return None
        ts: float | None = None
        try:
            if self.options.time_column is not None:
                at = self._header.get(self.options.time_column)
                ts = None if at is None else parse_timestamp(fields[at], naive_tz=self._tz)
            values = np.full(len(self._names), np.nan)
            for j, name in enumerate(self._columns):
                at = self._header.get(name)
                if at is not None:
                    try:
                        values[j] = parse_number(fields[at])
                    except InputError as exc:
                        raise InputError(f"column {name!r}: {exc}") from exc
        except InputError as exc:
            self._bad_row(line_no, str(exc))
            return None
        if self._features.channels:
            cells = {c: fields[i] for c, i in self._header.items() if c in self._features.columns}
            feats, problems = self._features.compute(cells, from_text=True)
            values[len(self._columns) :] = feats
            for problem in problems:
                message = f"{self._where(line_no)}: {problem}"
                self._health.error(message)
                self._bad.warning("%s", message)
        return ts, values

    def _next_row(self) -> tuple[float | None, np.ndarray] | None:
        """The next good row within this call's budget, or None."""
        deadline = time.monotonic() + _MAX_SECONDS_PER_READ
        for _ in range(_MAX_LINES_PER_READ):
            try:
                item = self._tail.next_line()
            except OSError as exc:
                self._health.error(f"cannot read {self.options.path}: {exc}")
                self._bad.warning("cannot read %s: %s", self.options.path, exc)
                return None
            if item is None:
                self._at_end()
                return None
            line_no, raw = item
            if raw is None:
                self._bad_row(line_no, f"line longer than {self.options.max_line_bytes} bytes")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._bad_row(line_no, f"not UTF-8: {exc.reason}")
                continue
            if line_no == 1:
                self._take_header(line_no, text.lstrip("\ufeff"))
                continue
            if self._header is None:
                continue
            row = self._parse(line_no, text)
            if row is not None:
                return row
            if time.monotonic() > deadline:
                return None
        return None

    def _at_end(self) -> None:
        if not self._tail.is_open:
            if not self._waiting_logged:
                self._waiting_logged = True
                log.warning("waiting for %s to appear", self.options.path)
            return
        if not self._tail.eof:
            return  # following: more may come
        if self.options.loop and self._health.snapshot().readings > 0:
            self._tail.rewind()
            self._header = None
            self._pace = None
        else:
            self._health.set_state("exhausted")

    def _due(self, ts: float | None) -> bool:
        speed = self.options.speed
        if self.options.follow or ts is None or speed == 0.0:
            return True
        now = time.monotonic()
        if self._pace is None:
            self._pace = (ts, now)
            return True
        first_ts, first_at = self._pace
        return now - first_at >= (ts - first_ts) / speed

    def read(self) -> SensorSample | None:
        with self._lock:
            if self._closed or self._health.state == "exhausted":
                return None
            try:
                return self._read()
            except Exception as exc:  # never raise into the agent; this is a bug if hit
                log.exception("csv source %s failed", self.options.path)
                self._health.error(f"{type(exc).__name__}: {exc}")
                return None

    def _read(self) -> SensorSample | None:
        if self._pending is None:
            self._pending = self._next_row()
            if self._pending is None:
                return None
        ts, values = self._pending
        if not self._due(ts):
            return None
        self._pending = None
        if self._health.state in ("starting", "down"):
            self._health.set_state("ok")
        if self.options.loop:
            ts = None
        self._health.reading(ts if ts is not None else time.time())
        return SensorSample(values=values, ts=ts)
