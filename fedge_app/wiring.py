"""The one place that builds agents, aggregators and ingest services from config.

The CLI, the demo and the in-process simulation all assemble their parts here,
so the three can no longer drift apart (before this module only the CLI passed
``store_max_readings`` to the agent's store). Each builder takes the transport
as a parameter: the caller decides between MQTT (:func:`mqtt_transport`) and the
in-memory broker.

Security (``[security]`` of each config, written by ``fedge broker provision``): the
key files named there are read here, once, and handed to the services as
:class:`~fedge.signing.Authenticator` (what they verify) and
:class:`~fedge.signing.Signer` (what they sign). Mode ``verify`` is the default
whenever the verifying keys are configured, ``off`` otherwise (the demo and the
simulations configure none); see :class:`~fedge.config.AgentSecurity`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import SensorSource, source_from_table
from edge_agent.sources.base import BaseSource
from edge_agent.store import ReadingStore
from fedge.config import (
    AgentConfig,
    AgentSecurity,
    AggregatorConfig,
    BrokerEndpoint,
    IngestConfig,
    ServiceSecurity,
)
from fedge.errors import ConfigError
from fedge.messages import RoundSummary
from fedge.signing import AGGREGATOR_SIGNER, Authenticator, Signer
from fedge.transport import Transport

if TYPE_CHECKING:
    # Imported where they are built, not here: `fedge agent` imports this module, and a
    # device must not load the server side (the sinks need influxdb-client, the
    # aggregator's safeguards dp-accounting: server extras a device lacks).
    from aggregator.ingest import IngestService
    from aggregator.ingest_identity import IngestInstance
    from aggregator.service import AggregatorService
    from aggregator.sinks import Sink

__all__ = [
    "agent_client_id",
    "agent_security",
    "agent_source",
    "agent_transport",
    "aggregator_client_id",
    "build_agent",
    "build_aggregator",
    "build_ingest",
    "ingest_client_id",
    "ingest_transport",
    "mqtt_transport",
    "service_security",
]


def _read(path: Path | None, what: str) -> bytes | None:
    """The bytes of a key file named in ``[security]``; ConfigError if unreadable."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def agent_security(security: AgentSecurity, *, device: str) -> tuple[Authenticator, Signer]:
    """What a device verifies (the pinned aggregator key) and signs with (its own key).

    Raises ConfigError for a missing or bad key file, or mode ``verify`` without keys.
    """
    policy = security.policy()
    pem = _read(security.signing_key, "signing key")
    return policy.authenticator(None), Signer(policy.signing_key(pem, signer=device))


def service_security(
    security: ServiceSecurity, *, fleet: str, signer: str | None
) -> tuple[Authenticator, Signer]:
    """What the aggregator (``signer="aggregator"``) or ingest (``signer=None``: it signs
    nothing) verifies, from the key registry file, and signs with."""
    policy = security.policy()
    registry = _read(security.key_registry, "key registry")
    authenticator = policy.authenticator(registry, fleet=fleet)
    if signer is None:
        return authenticator, Signer()
    pem = _read(security.signing_key, "signing key")
    return authenticator, Signer(policy.signing_key(pem, signer=signer))


def agent_client_id(config: AgentConfig) -> str:
    """The MQTT client id of a device's agent: stable, so the broker knows it again."""
    return f"{config.fleet}-{config.device}"


def aggregator_client_id(config: AggregatorConfig) -> str:
    """The aggregator's MQTT client id (one aggregator per fleet)."""
    return f"{config.fleet}-aggregator"


def ingest_client_id(config: IngestConfig, instance: IngestInstance) -> str:
    """``config.client_id``, else ``<fleet>-ingest[-<group>]-<instance id prefix>``.

    Stable for one instance (its id file persists), distinct between instances: the
    broker resumes this instance's session and never confuses two of them.
    """
    if config.client_id is not None:
        return config.client_id
    group = f"-{config.shared_group}" if config.shared_group else ""
    return f"{config.fleet}-ingest{group}-{instance.instance_id[:12]}"


def ingest_transport(config: IngestConfig, instance: IngestInstance) -> PahoTransport:
    """The ingest's MQTT transport: persistent session, manual acks (ack after durable)."""
    return PahoTransport(
        config.broker,
        client_id=ingest_client_id(config, instance),
        clean_session=False,
        manual_ack=True,
        session_expiry_s=config.session_expiry_s,
    )


def mqtt_transport(
    endpoint: BrokerEndpoint, *, client_id: str, clean_session: bool = True
) -> PahoTransport:
    """A paho-mqtt transport to ``endpoint``."""
    return PahoTransport(endpoint, client_id=client_id, clean_session=clean_session)


def agent_transport(config: AgentConfig) -> PahoTransport:
    """The agent's MQTT transport: its stable client id and a persistent session.

    The broker keeps the session's subscriptions and what it queued for the device
    (maintenance events, stored-up-to acks) while the agent is away; over MQTT
    3.1.1 for as long as the broker's ``persistent_client_expiration`` (7 days in the
    provisioned and the demo mosquitto.conf), over MQTT 5 for the transport's
    session expiry (7 days).
    """
    return PahoTransport(config.broker, client_id=agent_client_id(config), clean_session=False)


def agent_source(config: AgentConfig, *, kind: str | None = None) -> BaseSource:
    """The sensor source the agent's ``[source]`` table describes (``kind`` overrides it).

    Each device's simulated machine gets its own seed (from the fleet seed and the
    device id), so a fleet of simulated agents does not run identical machines.
    """
    table = dict(config.source)
    if kind is not None:
        table["kind"] = kind
    seed = zlib.crc32(f"{config.seed}:{config.device}".encode())
    return source_from_table(table, seed=seed)


def build_agent(
    config: AgentConfig,
    *,
    transport: Transport,
    source: SensorSource,
    history_units: int = 0,
    store_path: Path | None = None,
) -> EdgeAgent:
    """An edge agent with its store opened as the config says (path, size bound) and
    its keys loaded from ``config.security``."""
    authenticator, signer = agent_security(config.security, device=config.device)
    store = ReadingStore(
        store_path or config.store_path,
        n_features=len(source.sensor_names),
        max_readings=config.store_max_readings,
        max_bytes=config.store_max_bytes,
    )
    return EdgeAgent(
        config,
        transport=transport,
        source=source,
        store=store,
        history_units=history_units,
        authenticator=authenticator,
        signer=signer,
    )


def build_aggregator(
    config: AggregatorConfig,
    *,
    transport: Transport,
    checkpoint_dir: Path | None = None,
    on_round: Callable[[RoundSummary], None] | None = None,
) -> AggregatorService:
    """The aggregator service with its checkpoint store (``config.checkpoint_dir`` by
    default) and its keys loaded from ``config.security``."""
    authenticator, signer = service_security(
        config.security, fleet=config.fleet, signer=AGGREGATOR_SIGNER
    )
    from aggregator.checkpoint import CheckpointStore
    from aggregator.service import AggregatorService

    return AggregatorService(
        config,
        transport=transport,
        checkpoints=CheckpointStore(checkpoint_dir or config.checkpoint_dir),
        on_round=on_round,
        authenticator=authenticator,
        signer=signer,
    )


def build_ingest(
    config: IngestConfig, *, transport: Transport, sink: Sink | None = None
) -> tuple[IngestService, Sink]:
    """The ingest service and its sink (opened from config unless given).

    The caller owns the sink: stop the service, then close the sink.
    """
    authenticator, _ = service_security(config.security, fleet=config.fleet, signer=None)
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
        authenticator=authenticator,
        stored_acks=config.stored_acks,
    )
    return service, sink
