"""Sensor sources: where an agent's readings come from (one source per module)."""

from edge_agent.sources.base import SensorSample, SensorSource
from edge_agent.sources.replay import ReplaySensorSource
from edge_agent.sources.simulated import SimulatedSensorSource

__all__ = ["ReplaySensorSource", "SensorSample", "SensorSource", "SimulatedSensorSource"]
