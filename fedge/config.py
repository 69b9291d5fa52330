"""Configuration: frozen pydantic models, from TOML files, environment and options.

Precedence, highest first: explicit keyword arguments (CLI options), environment
variables (``FEDGE_AGENT_*`` / ``FEDGE_AGGREGATOR_*``, nested with ``__``), the TOML
file given with ``--config``, defaults. Every failure is a :class:`ConfigError`
naming the offending field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fedge.compression.scheme import UpdateCodec
from fedge.errors import ConfigError
from fedge.messages import Identifier, SensorName, TrainingConfig
from fedge.spec import ModelSpec, feature_specs

__all__ = [
    "AgentConfig",
    "AgentSecurity",
    "AggregatorConfig",
    "BrokerEndpoint",
    "FedgeSettings",
    "IngestConfig",
    "ModelSpec",
    "ServiceSecurity",
    "default_fleet_model",
    "load_config",
]

_TOML_DATA: ContextVar[dict[str, Any] | None] = ContextVar("_TOML_DATA", default=None)


class BrokerEndpoint(BaseModel):
    """Where and how to reach the MQTT broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    protocol: Literal["3.1.1", "5"] = "3.1.1"

    @classmethod
    def from_url(cls, url: str, **extra: Any) -> BrokerEndpoint:
        """Parse ``mqtt://[user[:password]@]host[:port]`` (``mqtts://`` for TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"broker URL {url!r}: {exc}") from exc
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        try:
            return cls(
                host=parts.hostname,
                port=port if port is not None else (8883 if tls else 1883),
                tls=tls,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                **extra,
            )
        except ValidationError as exc:
            raise ConfigError(f"broker URL {url!r}: {exc}") from exc

    @property
    def url(self) -> str:
        """The URL without credentials (safe to log)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


class AgentSecurity(BaseModel):
    """``[security]`` of an agent (written by ``fedge broker provision``).

    ``signing_key``: this device's Ed25519 private key (PEM); ``aggregator_public_key`` /
    ``operator_public_key``: the pinned public keys (base64 of the raw 32 bytes) whose
    signatures the agent accepts on models, rounds and maintenance events.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    signing_key: Path | None = None
    aggregator_public_key: Annotated[str, Field(max_length=64)] | None = None
    operator_public_key: Annotated[str, Field(max_length=64)] | None = None


class ServiceSecurity(BaseModel):
    """``[security]`` of the aggregator or ingest: its signing key (aggregator only) and the
    key registry (``keys/registry.json``) that names every device's public key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signing_key: Path | None = None
    key_registry: Path | None = None


class FedgeSettings(BaseSettings):
    """Settings base: frozen, unknown keys refused, TOML file as the lowest source."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_nested_delimiter="__")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML_DATA.get() or {}
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=toml))


class AgentConfig(FedgeSettings):
    """Everything an edge agent needs. Env prefix ``FEDGE_AGENT_``."""

    model_config = SettingsConfigDict(env_prefix="FEDGE_AGENT_")

    fleet: Identifier = "demo"
    device: Identifier
    site: Identifier | None = None
    broker: BrokerEndpoint = BrokerEndpoint()
    store_path: Path = Path("fedge-agent.sqlite")
    store_max_readings: Annotated[int, Field(ge=1000)] = 500_000
    holdout_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    telemetry_batch: Annotated[int, Field(ge=1, le=10_000)] = 50
    telemetry_interval_s: Annotated[float, Field(gt=0)] = 1.0
    status_interval_s: Annotated[float, Field(gt=0)] = 10.0
    sample_interval_s: Annotated[float, Field(ge=0)] = 0.1
    alert_rul: Annotated[float, Field(ge=0)] = 30.0
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    seed: int = 0
    # Train on a worker thread, so sampling and telemetry keep their rate during a round
    # (in-process simulations train inline, which keeps them deterministic).
    background_training: bool = True
    # Broker unreachable: retry with exponential backoff and jitter between these bounds.
    reconnect_initial_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Small devices: torch intra-op threads (None = torch's default, one per core); stop
    # local training after this many seconds and send what it has; the store's size in
    # bytes (bounds store_max_readings further); train only while the 1-minute load
    # average per core is below this percentage (postponed, declined as "busy" when
    # the round's deadline comes too close).
    torch_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    max_train_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None
    store_max_bytes: Annotated[int, Field(ge=1 << 20)] | None = None
    max_cpu_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    # [features]: fleet feature name -> this device's channel name. A feature not listed
    # is read from the channel of the same name.
    features: dict[SensorName, Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=dict
    )
    security: AgentSecurity = AgentSecurity()


def default_fleet_model() -> ModelSpec:
    """The model a fleet gets without a ``[model]`` section: the simulated pump's 15
    named features, so the default agent (simulated source) and aggregator train together."""
    from fedge.data.simulator import SENSOR_NAMES, SENSOR_UNITS

    return ModelSpec(
        n_features=len(SENSOR_NAMES), features=feature_specs(SENSOR_NAMES, SENSOR_UNITS)
    )


class AggregatorConfig(FedgeSettings):
    """Everything the aggregator needs. Env prefix ``FEDGE_AGGREGATOR_``."""

    model_config = SettingsConfigDict(env_prefix="FEDGE_AGGREGATOR_")

    fleet: Identifier = "demo"
    broker: BrokerEndpoint = BrokerEndpoint()
    rounds: Annotated[int, Field(ge=1)] | None = 10
    min_clients: Annotated[int, Field(ge=1)] = 2
    target_clients: Annotated[int, Field(ge=1)] | None = None
    round_timeout_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 60.0
    # The strategy's three parts, each by name (see fedge.strategies): the server step,
    # the reducer of training rounds, the participation policy.
    strategy: str = "fedavg"
    strategy_options: dict[str, float] = Field(default_factory=dict)
    reducer: str = "mean"
    reducer_options: dict[str, float] = Field(default_factory=dict)
    participation: str = "sync"
    participation_options: dict[str, float] = Field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    model: ModelSpec = Field(default_factory=default_fleet_model)
    checkpoint_dir: Path = Path("fedge-checkpoints")
    max_update_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    # [codec]: how devices encode their training updates (fedge.compression.UpdateCodec),
    # announced with every training round; e.g. dtype = "int8", delta = true,
    # error_feedback = true. The default is plain float32 (protocol v1).
    codec: UpdateCodec = UpdateCodec()
    # Update frames above this many bytes travel as chunks (set it below the broker's
    # max_packet_size minus the topic length); None: never chunk.
    max_message_bytes: Annotated[int, Field(ge=1024)] | None = None
    allowed_devices: frozenset[Identifier] | None = None
    federated_stats: bool = True
    final_evaluation: bool = True
    seed: int = 0
    security: ServiceSecurity = ServiceSecurity()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from fedge.strategies import STRATEGIES  # local: strategies import torch-free numpy only

        return _known(value, STRATEGIES, "strategy")

    @field_validator("reducer")
    @classmethod
    def _known_reducer(cls, value: str) -> str:
        from fedge.strategies import REDUCERS

        return _known(value, REDUCERS, "reducer")

    @field_validator("participation")
    @classmethod
    def _known_participation(cls, value: str) -> str:
        from fedge.strategies import PARTICIPATION

        return _known(value, PARTICIPATION, "participation policy")


def _known(value: str, registry: Mapping[str, object], what: str) -> str:
    """``value`` if it names an entry of ``registry``, else a ValueError listing the names."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(registry)}")
    return value


class IngestConfig(FedgeSettings):
    """Telemetry ingestion. Env prefix ``FEDGE_INGEST_``.

    Without ``influx_url`` points go to the local SQLite file ``sqlite_path``
    (same schema). For InfluxDB 1.8+ use its v2 compatibility API: token
    ``user:password`` and bucket ``database/retention_policy``.
    """

    model_config = SettingsConfigDict(env_prefix="FEDGE_INGEST_")

    fleet: Identifier = "demo"
    broker: BrokerEndpoint = BrokerEndpoint()
    influx_url: str | None = None
    influx_org: str = "-"
    influx_bucket: str = "fedge"
    influx_token: str = Field(default="", repr=False)
    sqlite_path: Path = Path("fedge-telemetry.sqlite")
    spool_path: Path = Path("fedge-spool.sqlite")
    shared_group: Identifier | None = None
    known_devices: frozenset[Identifier] | None = None
    security: ServiceSecurity = ServiceSecurity()

    @field_validator("influx_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("influx_url must start with http:// or https://")
        return value


S = TypeVar("S", bound=FedgeSettings)


def load_config(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from an optional TOML file, the environment and ``overrides``.

    ``None`` overrides are ignored so CLI options that were not given fall through
    to the environment and the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    token = _TOML_DATA.set(data)
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        ]
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid {cls.__name__}{source}: " + "; ".join(lines)) from exc
    finally:
        _TOML_DATA.reset(token)
