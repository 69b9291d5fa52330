"""The replay source: recorded units (e.g. C-MAPSS engines) played back as this machine."""

from __future__ import annotations

from edge_agent.sources.base import SensorSample
from fedge.data.simulator import UnitRun

__all__ = ["ReplaySensorSource"]


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
