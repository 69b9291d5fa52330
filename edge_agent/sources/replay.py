"""The replay source: recorded units (e.g. C-MAPSS engines) played back as this machine."""

from __future__ import annotations

import time
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions
from fedge.data.simulator import UnitRun
from fedge.errors import ConfigError

__all__ = ["ReplaySensorSource"]


class ReplaySensorSource(BaseSource):
    """Replays recorded units (e.g. C-MAPSS engines) as if they were this machine.

    ``history`` are completed run-to-failure units handed to the agent at start;
    ``live`` units are then streamed cycle by cycle. A live unit is reported as
    failed at its last cycle only if ``live_failed`` (C-MAPSS *test* engines stop
    before failure; *train* engines run to it). After the last live cycle the
    source is exhausted (``read`` returns None, health says ``exhausted``) unless
    ``loop``.

    The runs come from code (simulations, benchmarks); from a config file, use the
    ``cmapss`` source (:class:`edge_agent.sources.cmapss.CmapssSource`, a subclass).
    """

    kind: ClassVar[str] = "replay"
    Options: ClassVar[type[BaseModel]] = SourceOptions

    def __init__(
        self,
        *,
        sensor_names: tuple[str, ...],
        history: list[UnitRun],
        live: list[UnitRun] | None = None,
        live_failed: bool = True,
        loop: bool = False,
    ) -> None:
        super().__init__()
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

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        raise ConfigError(
            "source 'replay' takes its recorded runs from code; "
            "in a config file use kind = 'cmapss' or kind = 'csv'"
        )

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return self._names

    def history(self, n_units: int) -> list[UnitRun]:
        return self._history[:n_units]

    def read(self) -> SensorSample | None:
        index, cycle = self._position
        if index >= len(self._live):
            if not self._loop or not self._live:
                self._health.set_state("exhausted")
                return None
            index = 0
        run = self._live[index]
        last = cycle == run.n_cycles - 1
        self._position = (index + 1, 0) if last else (index, cycle + 1)
        self._health.reading(time.time())
        return SensorSample(
            unit=run.unit,
            cycle=cycle,
            values=np.asarray(run.sensors[cycle], dtype=np.float64),
            failed=last and self._live_failed,
        )
