"""The ``simulated`` source: one machine of fedge's fleet simulator."""

from __future__ import annotations

from edge_agent.sources.base import SensorSample
from fedge.data.simulator import MachineSimulator, SiteProfile, UnitRun

__all__ = ["SimulatedSensorSource"]


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
