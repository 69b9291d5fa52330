"""Choosing and opening the telemetry sink from configuration."""

from __future__ import annotations

from aggregator.sinks import InfluxSink, InfluxTarget, Sink, SqliteSink
from fedge.config import IngestConfig

__all__ = ["describe_sink", "open_sink"]


def open_sink(config: IngestConfig) -> Sink:
    """InfluxDB (spooled, zero loss) when ``influx_url`` is set, else the local SQLite file."""
    if config.influx_url is None:
        return SqliteSink(config.sqlite_path)
    target = InfluxTarget.v2(
        config.influx_url,
        org=config.influx_org,
        bucket=config.influx_bucket,
        token=config.influx_token,
    )
    return InfluxSink(target, config.spool_path)


def describe_sink(config: IngestConfig) -> str:
    """Where points go, for humans (no credentials)."""
    if config.influx_url is None:
        return f"SQLite {config.sqlite_path}"
    return f"InfluxDB {config.influx_url} bucket {config.influx_bucket} (spool {config.spool_path})"
