"""Turning what devices deliver into numbers: timestamps, cells, JSON paths, snapshots.

Shared by the text-based sources (csv, command, mqtt). Every parser raises
:class:`InputError` with a message meant for the log; the source counts the record
as bad, logs it (through :class:`LimitedLog`, so a broken device cannot flood the
journal) and carries on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import Field, StringConstraints

from fedge.errors import SensorError
from fedge.features import (
    VibrationConfig,
    feature_names,
    snapshot_from_csv_field,
    snapshot_from_json,
    vibration_features,
)

__all__ = [
    "MAX_EPOCH_S",
    "InputError",
    "LatestValues",
    "LimitedLog",
    "SnapshotFeatures",
    "VibrationChannel",
    "json_number",
    "lookup_path",
    "parse_number",
    "parse_timestamp",
    "timezone",
]

# 1e11 s is the year 5138: a larger "epoch seconds" value is almost certainly in
# milliseconds or microseconds, and silently reading it as seconds would be worse.
MAX_EPOCH_S = 1e11


class InputError(ValueError):
    """One record (row, line, payload, value) cannot be used; the message says why."""


def timezone(name: str) -> tzinfo:
    """The IANA time zone ``name`` (e.g. "UTC", "Europe/Berlin"), or ValueError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _epoch(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_EPOCH_S:
        raise InputError(
            f"timestamp {value!r} is not epoch seconds (milliseconds? expected at most "
            f"{MAX_EPOCH_S:.0e})"
        )
    return value


def parse_timestamp(value: object, *, naive_tz: tzinfo) -> float:
    """Unix seconds from epoch seconds (number or numeric text) or ISO 8601 text.

    ``2024-05-01T12:00:00Z``, ``2024-05-01 12:00:00.250+02:00`` and ``1714564800.25``
    all work; an ISO time without an offset is read in ``naive_tz``.
    """
    if isinstance(value, bool):
        raise InputError(f"timestamp {value!r} is a boolean")
    if isinstance(value, int | float):
        return _epoch(float(value))
    if not isinstance(value, str):
        raise InputError(f"timestamp of type {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InputError("empty timestamp")
    try:
        number = float(text)
    except ValueError:
        pass  # not a number: try ISO 8601
    else:
        return _epoch(number)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"timestamp {text[:40]!r} is neither epoch seconds nor ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=naive_tz)
    return moment.timestamp()


def parse_number(text: str) -> float:
    """A reading from a text cell: empty means "no value" (NaN); inf is refused."""
    cell = text.strip()
    if not cell:
        return math.nan
    try:
        value = float(cell)
    except ValueError as exc:
        raise InputError(f"{cell[:40]!r} is not a number") from exc
    if math.isinf(value):
        raise InputError(f"{cell!r} is not a finite number")
    return value


def json_number(value: object, *, what: str) -> float:
    """A reading from a decoded JSON value: null is "no value" (NaN); bools are refused."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise InputError(f"{what}: {value} does not fit a float") from exc
    if not math.isfinite(number):
        raise InputError(f"{what}: {number} is not finite")
    return number


def lookup_path(document: object, path: Sequence[str]) -> object:
    """The value at a dotted path (already split) in decoded JSON; list items by index."""
    node = document
    for depth, key in enumerate(path):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            where = ".".join(path[: depth + 1])
            raise InputError(f"no {where!r} in the payload")
    return node


class VibrationChannel(VibrationConfig):
    """An accelerometer snapshot turned into vibration features.

    ``column`` is where the snapshot is: a CSV column (samples separated by ``sep``)
    or a key of a JSON object (an array of numbers). The other fields are
    :class:`fedge.features.VibrationConfig`: ``prefix`` names the features
    (``{prefix}_rms``, ...), ``sample_rate_hz`` and ``bands_hz`` add spectral ones.
    """

    column: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    sep: Annotated[str, Field(min_length=1, max_length=4)] = ";"


class SnapshotFeatures:
    """The feature columns of a list of :class:`VibrationChannel` (possibly empty)."""

    def __init__(self, channels: Sequence[VibrationChannel]) -> None:
        self.channels = tuple(channels)
        self.names: tuple[str, ...] = tuple(n for c in self.channels for n in feature_names(c))
        self.columns = frozenset(c.column for c in self.channels)

    def __len__(self) -> int:
        return len(self.names)

    def compute(
        self, get: Mapping[str, object], *, from_text: bool
    ) -> tuple[np.ndarray, list[str]]:
        """Feature values (NaN where a snapshot is missing or refused) and the refusals.

        ``get`` maps a channel's ``column`` to its raw snapshot (CSV text when
        ``from_text``, else decoded JSON); a missing column gives NaN without a refusal.
        """
        out = np.full(len(self.names), np.nan)
        problems: list[str] = []
        at = 0
        for channel in self.channels:
            width = len(feature_names(channel))
            raw = get.get(channel.column)
            if raw is not None and raw != "":
                try:
                    snapshot = (
                        snapshot_from_csv_field(
                            str(raw), sep=channel.sep, max_samples=channel.max_samples
                        )
                        if from_text
                        else snapshot_from_json(raw, max_samples=channel.max_samples)
                    )
                    features = vibration_features(snapshot, channel)
                    out[at : at + width] = list(features.values())
                except SensorError as exc:
                    problems.append(f"snapshot {channel.column!r}: {exc}")
            at += width
        return out, problems


class LimitedLog:
    """Logs at most ``burst`` messages per ``period_s``, then says how many it dropped."""

    def __init__(self, logger: logging.Logger, *, burst: int = 20, period_s: float = 60.0) -> None:
        self._log = logger
        self._burst = burst
        self._period = period_s
        self._window_start = -math.inf
        self._sent = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: Any) -> None:
        """Log a warning unless the budget for this period is spent."""
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self._period:
                if self._dropped:
                    self._log.warning("%d similar messages suppressed", self._dropped)
                self._window_start, self._sent, self._dropped = now, 0, 0
            if self._sent >= self._burst:
                self._dropped += 1
                return
            self._sent += 1
        self._log.warning(message, *args)


class LatestValues:
    """The newest value per channel, for sources fed by change notifications (mqtt, opcua).

    :meth:`take` makes one reading from whatever arrived since the previous call
    (``None`` if nothing did); a channel whose value is older than ``max_age_s`` (or
    never came) reads NaN. The reading's ``ts`` is the newest update's timestamp.
    Thread-safe: updates come from the network thread, ``take`` from the agent.
    """

    def __init__(self, n_channels: int, *, max_age_s: float | None) -> None:
        self._values = np.full(n_channels, np.nan)
        self._updated_at = np.full(n_channels, -np.inf)  # time.monotonic() of each update
        self._max_age = max_age_s
        self._newest_ts: float | None = None
        self._fresh = False
        self._lock = threading.Lock()
        self.updates = 0  # channel values received, for benchmarks and diagnostics

    def set(self, index: int, value: float, *, ts: float) -> None:
        """Channel ``index`` now reads ``value`` (measured at unix time ``ts``)."""
        with self._lock:
            self._values[index] = value
            self._updated_at[index] = time.monotonic()
            self._newest_ts = ts if self._newest_ts is None else max(ts, self._newest_ts)
            self._fresh = True
            self.updates += 1

    def take(self) -> tuple[np.ndarray, float] | None:
        """``(values, ts)`` if anything arrived since the last call, else None."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            values = self._values.copy()
            ts = self._newest_ts if self._newest_ts is not None else time.time()
            if self._max_age is not None:
                values[time.monotonic() - self._updated_at > self._max_age] = np.nan
            return values, ts
