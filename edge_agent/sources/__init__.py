"""Sensor sources: where an agent's readings come from (one source per module).

Sources are plugins found by kind through the ``fedge.sources`` entry points
(:mod:`edge_agent.sources.registry`); built-ins: simulated, cmapss, csv, command,
mqtt, modbus, opcua. The protocol modules are imported only when their kind is used.
"""

from edge_agent.sources.base import (
    BaseSource,
    SensorSample,
    SensorSource,
    SourceHealth,
    SourceOptions,
    SourceState,
)
from edge_agent.sources.registry import (
    SOURCE_GROUP,
    available_sources,
    open_source,
    source_from_table,
    source_kinds,
)
from edge_agent.sources.replay import ReplaySensorSource
from edge_agent.sources.simulated import SimulatedSensorSource

__all__ = [
    "SOURCE_GROUP",
    "BaseSource",
    "ReplaySensorSource",
    "SensorSample",
    "SensorSource",
    "SimulatedSensorSource",
    "SourceHealth",
    "SourceOptions",
    "SourceState",
    "available_sources",
    "open_source",
    "source_from_table",
    "source_kinds",
]
