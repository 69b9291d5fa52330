"""The sensor-source seam: where an agent's readings come from.

A source yields one :class:`SensorSample` per reading. Every source is a plugin: a
subclass of :class:`BaseSource` with a ``kind`` (its name in a config file's
``[source]`` table), a frozen pydantic ``Options`` model, and an entry point in the
``fedge.sources`` group (see :mod:`edge_agent.sources.registry`).

The contract the agent relies on:

* ``read()`` returns at once (within ~10 ms) and never raises. ``None`` means "no new
  reading right now"; :meth:`BaseSource.health` says whether the source is merely
  quiet (``ok``), retrying a connection (``reconnecting``), given up (``down``) or
  finished (``exhausted``, a replay that reached its end).
* Failures (a lost connection, a malformed line, a dead accelerometer) are logged,
  counted in :class:`SourceHealth` and never propagate.
* ``values`` follow ``sensor_names``; a channel without a fresh value is NaN.
* Recorded and simulated sources know which life (``unit``) and ``cycle`` a reading
  belongs to and set them; live plant sources leave both ``None`` and the agent
  assigns the machine's current life and cycle.

``history`` gives runs that were logged before the agent was installed (a simulated
source makes them up; a replay hands over its recorded engines), so a new device has
something to learn from.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from fedge.data.simulator import UnitRun
from fedge.errors import ConfigError

__all__ = [
    "BaseSource",
    "HealthTracker",
    "SensorSample",
    "SensorSource",
    "SourceHealth",
    "SourceOptions",
    "SourceState",
    "expect_options",
    "parse_options",
]

SourceState = Literal["starting", "ok", "reconnecting", "down", "exhausted"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SensorSample:
    """One reading of one machine.

    ``values`` is float64 in the source's ``sensor_names`` order, NaN where a channel
    has no fresh value. ``unit``/``cycle`` are ``None`` for live sources (the agent
    assigns the machine's current life and cycle). ``failed`` marks a unit's last
    cycle. ``ts`` is the source's own timestamp (unix seconds), ``None`` to use the
    agent's clock.
    """

    values: np.ndarray
    unit: int | None = None
    cycle: int | None = None
    failed: bool = False
    ts: float | None = None


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """A snapshot of how a source is doing (safe to read from any thread).

    ``errors`` counts failures of any kind (connection attempts, channel reads,
    refused snapshots); ``bad_rows`` counts input records (CSV rows, JSON lines,
    MQTT payloads, OPC UA values) that were skipped as malformed; ``reconnects``
    counts connections (or process restarts) after the first; ``readings`` counts
    samples handed out by ``read()``.
    """

    state: SourceState
    last_error: str | None = None
    errors: int = 0
    reconnects: int = 0
    readings: int = 0
    last_reading_ts: float | None = None
    bad_rows: int = 0


class HealthTracker:
    """Thread-safe counters behind :class:`SourceHealth`, updated by a source's threads."""

    def __init__(self, state: SourceState = "starting") -> None:
        self._lock = threading.Lock()
        self._health = SourceHealth(state=state)
        self._connected_once = False

    def snapshot(self) -> SourceHealth:
        """The current health (an immutable copy)."""
        with self._lock:
            return self._health

    @property
    def state(self) -> SourceState:
        """The current state."""
        return self.snapshot().state

    def set_state(self, state: SourceState) -> None:
        """Move to ``state`` without touching the counters."""
        with self._lock:
            self._health = replace(self._health, state=state)

    def connected(self) -> None:
        """A connection (or process) is up; the second and later ones count as reconnects."""
        with self._lock:
            h = self._health
            again = 1 if self._connected_once else 0
            self._connected_once = True
            self._health = replace(h, state="ok", reconnects=h.reconnects + again)

    def error(self, message: str, *, state: SourceState | None = None) -> None:
        """Count a failure; optionally change state (``reconnecting``, ``down``)."""
        with self._lock:
            h = self._health
            self._health = replace(
                h, errors=h.errors + 1, last_error=message, state=state or h.state
            )

    def bad_row(self, message: str) -> None:
        """Count a malformed input record that was skipped."""
        with self._lock:
            h = self._health
            self._health = replace(h, bad_rows=h.bad_rows + 1, last_error=message)

    def reading(self, ts: float) -> None:
        """Count a sample handed to the agent at (source or wall) time ``ts``."""
        with self._lock:
            h = self._health
            self._health = replace(h, readings=h.readings + 1, last_reading_ts=ts)


class SourceOptions(BaseModel):
    """Base for a source's ``Options``: frozen, unknown keys refused, no NaN/inf."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def parse_options(model: type[M], options: Mapping[str, Any], *, kind: str) -> M:
    """Validate a ``[source]`` table against ``model``; ConfigError naming each bad field."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"source {kind!r}: options must be a table, got {type(options).__name__}")
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<options>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"source {kind!r}: {problems}") from exc


def expect_options(options: BaseModel, model: type[M]) -> M:
    """Narrow the validated options to the source's own model (a TypeError is a bug)."""
    if not isinstance(options, model):
        raise TypeError(f"expected {model.__name__}, got {type(options).__name__}")
    return options


class BaseSource(ABC):
    """Base of every sensor source (built-in or plugin).

    A subclass sets ``kind`` and ``Options`` (a frozen pydantic model with
    ``extra="forbid"``) and implements :meth:`from_model`, :attr:`sensor_names` and
    :meth:`read`. Sources with background work override :meth:`start` and
    :meth:`close` (both idempotent; ``close`` returns within ~2 s).
    """

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]]

    def __init__(self) -> None:
        self._health = HealthTracker()

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, seed: int = 0) -> Self:
        """Build the source from a config table; ConfigError naming the bad field.

        Only validates and prepares: connections and threads start in :meth:`start`.
        """
        return cls.from_model(parse_options(cls.Options, options, kind=cls.kind), seed=seed)

    @classmethod
    @abstractmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        """Build the source from its validated ``Options`` (see :func:`expect_options`)."""

    @property
    @abstractmethod
    def sensor_names(self) -> tuple[str, ...]:
        """The channels of every sample, in order."""

    @abstractmethod
    def read(self) -> SensorSample | None:
        """The next reading, or None if none is ready; returns at once, never raises."""

    def history(self, n_units: int) -> list[UnitRun]:
        """Up to ``n_units`` completed run-to-failure units logged before the agent started."""
        return []

    def start(self) -> None:
        """Open connections and start background work (idempotent)."""
        if self._health.state == "starting":
            self._health.set_state("ok")

    def close(self) -> None:  # noqa: B027 - optional hook: sources without resources skip it
        """Stop background work and release connections within ~2 s (idempotent)."""

    def health(self) -> SourceHealth:
        """How the source is doing."""
        return self._health.snapshot()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@runtime_checkable
class SensorSource(Protocol):
    """The part of a source the agent reads from (every :class:`BaseSource` is one)."""

    @property
    def sensor_names(self) -> tuple[str, ...]: ...

    def read(self) -> SensorSample | None:
        """The next reading, or None when none is ready."""
        ...

    def history(self, n_units: int) -> list[UnitRun]:
        """Up to ``n_units`` completed run-to-failure units logged before the agent started."""
        ...

    def start(self) -> None:
        """Open connections / start threads (after ``history``)."""
        ...

    def close(self) -> None:
        """Stop within ~2 s; idempotent."""
        ...

    def health(self) -> SourceHealth:
        """How the source is doing (for the agent's status)."""
        ...
