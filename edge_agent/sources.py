"""Sensor sources: where an agent's readings come from.

A source yields one :class:`SensorSample` per machine cycle. When a unit fails
(its last cycle) the sample says so; the agent then knows that unit's length and
can label its readings with remaining useful life. ``history`` gives runs that
were logged before the agent was installed (a simulated source makes them up; a
real deployment imports them), so a new device has something to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fedge.data.simulator import MachineSimulator, SiteProfile, UnitRun

__all__ = ["ReplaySensorSource", "SensorSample", "SensorSource", "SimulatedSensorSource"]


@dataclass(frozen=True, slots=True)
class SensorSample:
    """One cycle of one machine. ``failed`` marks the unit's last cycle."""

    unit: int
    cycle: int
    values: np.ndarray
    failed: bool = False


@runtime_checkable
class SensorSource(Protocol):
    """Anything that produces readings for one machine."""

    @property
    def sensor_names(self) -> tuple[str, ...]: ...

    def read(self) -> SensorSample | None:
        """The next reading, or None when the source is exhausted."""
        ...

    def history(self, n_units: int) -> list[UnitRun]:
        """Up to ``n_units`` completed run-to-failure units logged before the agent started."""
        ...


class SimulatedSensorSource:
    """A machine from the fleet simulator: history first, then live cycles, forever."""

    def __init__(self, *, profile: SiteProfile, seed: int) -> None:
        self._sim = MachineSimulator(profile=profile, seed=seed)
        self._current: UnitRun | None = None
        self._cycle = 0

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._sim.sensor_names

    def history(self, n_units: int) -> list[UnitRun]:
        if self._current is not None:
            raise RuntimeError("history must be taken before live reading starts")
        return self._sim.units(n_units)

    def read(self) -> SensorSample:
        if self._current is None or self._cycle >= self._current.n_cycles:
            self._current = self._sim.next_unit()
            self._cycle = 0
        run = self._current
        cycle = self._cycle
        self._cycle += 1
        return SensorSample(
            unit=run.unit,
            cycle=cycle,
            values=run.sensors[cycle],
            failed=cycle == run.n_cycles - 1,
        )


class ReplaySensorSource:
    """Replays recorded units (e.g. C-MAPSS engines) as if they were this machine.

    ``history`` are completed run-to-failure units handed to the agent at start;
    ``live`` units are then streamed cycle by cycle. A live unit is reported as
    failed at its last cycle only if ``live_failed`` (C-MAPSS *test* engines stop
    before failure; *train* engines run to it). After the last live cycle the
    source is exhausted (``read`` returns None) unless ``loop``.
    """

    def __init__(
        self,
        *,
        sensor_names: tuple[str, ...],
        history: list[UnitRun],
        live: list[UnitRun] | None = None,
        live_failed: bool = True,
        loop: bool = False,
    ) -> None:
        for run in [*history, *(live or [])]:
            if run.sensors.shape[1] != len(sensor_names):
                raise ValueError(
                    f"unit {run.unit} has {run.sensors.shape[1]} features, "
                    f"expected {len(sensor_names)}"
                )
        self._names = sensor_names
        self._history = list(history)
        self._live = list(live or [])
        self._live_failed = live_failed
        self._loop = loop
        self._position = (0, 0)  # (live unit index, cycle)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._names

    def history(self, n_units: int) -> list[UnitRun]:
        return self._history[:n_units]

    def read(self) -> SensorSample | None:
        index, cycle = self._position
        if index >= len(self._live):
            if not self._loop or not self._live:
                return None
            index = 0
        run = self._live[index]
        last = cycle == run.n_cycles - 1
        self._position = (index + 1, 0) if last else (index, cycle + 1)
        return SensorSample(
            unit=run.unit,
            cycle=cycle,
            values=run.sensors[cycle],
            failed=last and self._live_failed,
        )
