"""The sensor-source seam: where an agent's readings come from.

A source yields one :class:`SensorSample` per reading. When a unit fails (its
last cycle) the sample says so; the agent then knows that unit's length and can
label its readings with remaining useful life. ``history`` gives runs that were
logged before the agent was installed (a simulated source makes them up; a real
deployment imports them), so a new device has something to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fedge.data.simulator import UnitRun

__all__ = ["SensorSample", "SensorSource"]


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
