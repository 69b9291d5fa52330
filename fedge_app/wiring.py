"""The one place that builds agents, aggregators and ingest services from config.

The CLI, the demo and the in-process simulation all assemble their parts here,
so the three can no longer drift apart (before this module only the CLI passed
``store_max_readings`` to the agent's store). Each builder takes the transport
as a parameter: the caller decides between MQTT (:func:`mqtt_transport`) and the
in-memory broker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.checkpoint import CheckpointStore
from aggregator.service import AggregatorService
from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SensorSource
from edge_agent.store import ReadingStore
from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint, IngestConfig
from fedge.messages import RoundSummary
from fedge.transport import Transport

if TYPE_CHECKING:  # the sinks import influxdb-client, a server extra a device lacks
    from aggregator.ingest import IngestService
    from aggregator.sinks import Sink

__all__ = [
    "agent_client_id",
    "aggregator_client_id",
    "build_agent",
    "build_aggregator",
    "build_ingest",
    "mqtt_transport",
]


def agent_client_id(config: AgentConfig) -> str:
    """The MQTT client id of a device's agent: stable, so the broker knows it again."""
    return f"{config.fleet}-{config.device}"


def aggregator_client_id(config: AggregatorConfig) -> str:
    """The aggregator's MQTT client id (one aggregator per fleet)."""
    return f"{config.fleet}-aggregator"


def mqtt_transport(
    endpoint: BrokerEndpoint, *, client_id: str, clean_session: bool = True
) -> PahoTransport:
    """A paho-mqtt transport to ``endpoint``."""
    return PahoTransport(endpoint, client_id=client_id, clean_session=clean_session)


def build_agent(
    config: AgentConfig,
    *,
    transport: Transport,
    source: SensorSource,
    history_units: int = 0,
    store_path: Path | None = None,
) -> EdgeAgent:
    """An edge agent with its store opened as the config says (path, size bound)."""
    store = ReadingStore(
        store_path or config.store_path,
        n_features=len(source.sensor_names),
        max_readings=config.store_max_readings,
        max_bytes=config.store_max_bytes,
    )
    return EdgeAgent(
        config, transport=transport, source=source, store=store, history_units=history_units
    )


def build_aggregator(
    config: AggregatorConfig,
    *,
    transport: Transport,
    checkpoint_dir: Path | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
) -> AggregatorService:
    """The aggregator service with its checkpoint store (``config.checkpoint_dir`` by default)."""
    return AggregatorService(
        config,
        transport=transport,
        checkpoints=CheckpointStore(checkpoint_dir or config.checkpoint_dir),
        on_round=on_round,
    )


def build_ingest(
    config: IngestConfig, *, transport: Transport, sink: Sink | None = None
) -> tuple[IngestService, Sink]:
    """The ingest service and its sink (opened from config unless given).

    The caller owns the sink: stop the service, then close the sink.
    """
    # Imported here: ``fedge agent`` builds its agent through this module on a device
    # whose base install has no influxdb-client (the ``server`` extra).
    from aggregator.ingest import IngestService
    from aggregator.telemetry import open_sink

    sink = sink if sink is not None else open_sink(config)
    service = IngestService(
        transport,
        sink,
        fleet=config.fleet,
        known_devices=config.known_devices,
        shared_group=config.shared_group,
    )
    return service, sink
