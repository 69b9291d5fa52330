"""Where ingested points go: InfluxDB (zero-loss, spooled), SQLite (zero setup), memory (tests).

The schema of the points is documented in :mod:`fedge.points`.
"""

from aggregator.sinks.base import Sink, SinkStats
from aggregator.sinks.influx import InfluxSink, InfluxTarget
from aggregator.sinks.memory import MemorySink
from aggregator.sinks.spool import SpooledBatch, SpoolStats, TelemetrySpool
from aggregator.sinks.sqlite import SqliteSink

__all__ = [
    "InfluxSink",
    "InfluxTarget",
    "MemorySink",
    "Sink",
    "SinkStats",
    "SpoolStats",
    "SpooledBatch",
    "SqliteSink",
    "TelemetrySpool",
]
