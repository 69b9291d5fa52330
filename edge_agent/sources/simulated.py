"""The ``simulated`` source: one machine of fedge's fleet simulator."""

from __future__ import annotations

import time
from typing import Annotated, ClassVar, Self

import numpy as np
from pydantic import BaseModel, Field

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options
from fedge.data.simulator import MachineSimulator, SiteProfile, UnitRun
from fedge.errors import ConfigError, DataError

__all__ = ["SimulatedOptions", "SimulatedSensorSource"]


class SimulatedOptions(SourceOptions):
    """How the simulated site runs its machines (see :class:`fedge.data.simulator.SiteProfile`)."""

    regime_weights: Annotated[tuple[float, ...], Field(min_length=1)] = (1 / 3, 1 / 3, 1 / 3)
    fault_mix: Annotated[tuple[float, ...], Field(min_length=1)] = (1 / 3, 1 / 3, 1 / 3)
    switch_prob: float = 0.05
    life_scale: float = 1.0
    noise_scale: float = 1.0
    drift_scale: float = 1.0
    max_initial_wear: float = 0.2


class SimulatedSensorSource(BaseSource):
    """A machine from the fleet simulator: history first, then live cycles, forever."""

    kind: ClassVar[str] = "simulated"
    Options: ClassVar[type[BaseModel]] = SimulatedOptions

    def __init__(self, *, profile: SiteProfile, seed: int) -> None:
        super().__init__()
        self._sim = MachineSimulator(profile=profile, seed=seed)
        self._current: UnitRun | None = None
        self._cycle = 0

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        opts = expect_options(options, SimulatedOptions)
        try:
            profile = SiteProfile(**opts.model_dump())
        except DataError as exc:  # the profile's own range checks
            raise ConfigError(f"source 'simulated': {exc}") from exc
        return cls(profile=profile, seed=seed)

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
        self._health.reading(time.time())
        return SensorSample(
            unit=run.unit,
            cycle=cycle,
            values=np.asarray(run.sensors[cycle], dtype=np.float64),
            failed=cycle == run.n_cycles - 1,
        )
