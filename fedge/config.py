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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fedge.compression.scheme import UpdateCodec
from fedge.errors import ConfigError
from fedge.health import HealthConfig
from fedge.limits import AgentLimits
from fedge.messages import Identifier, SensorName, TrainingConfig
from fedge.signing.policy import SecurityMode, SecurityPolicy
from fedge.spec import ModelSpec, feature_specs

__all__ = [
    "AgentConfig",
    "AgentSecurity",
    "AggregatorConfig",
    "BrokerEndpoint",
    "FedgeSettings",
    "IngestConfig",
    "ModelSpec",
    "PrivacyConfig",
    "RobustConfig",
    "ServiceSecurity",
    "default_fleet_model",
    "load_config",
]

# What fedge accepts as an explicit MQTT client id (brokers allow more; this is enough).
MqttClientId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]

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

    ``mode``: ``verify`` refuses every global model and round announcement not signed
    by the pinned aggregator key; ``off`` (the demo, simulations) verifies nothing.
    Left out, it is ``verify`` when ``aggregator_public_key`` is set, ``off``
    otherwise (see :attr:`resolved_mode`). With a ``signing_key`` the agent signs
    everything it publishes, in either mode.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: SecurityMode | None = None
    signing_key: Path | None = None
    aggregator_public_key: Annotated[str, Field(max_length=64)] | None = None
    operator_public_key: Annotated[str, Field(max_length=64)] | None = None

    @property
    def resolved_mode(self) -> SecurityMode:
        """``mode``, or ``verify`` if the aggregator key is configured, else ``off``."""
        if self.mode is not None:
            return self.mode
        return "verify" if self.aggregator_public_key is not None else "off"

    def policy(self) -> SecurityPolicy:
        """The core's :class:`~fedge.signing.SecurityPolicy` of this section.

        Raises ConfigError for mode ``verify`` without ``aggregator_public_key``, or a
        key that is not one.
        """
        mode = self.resolved_mode
        if mode == "verify" and self.aggregator_public_key is None:
            raise ConfigError("security.mode 'verify' needs security.aggregator_public_key")
        try:
            return SecurityPolicy(
                mode=mode,
                private_key_path=self.signing_key,
                aggregator_key=self.aggregator_public_key,
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["msg"]
            raise ConfigError(f"invalid [security]: {first}") from exc


class ServiceSecurity(BaseModel):
    """``[security]`` of the aggregator or ingest: its signing key (aggregator only) and the
    key registry (``keys/registry.json``) that names every device's public key.

    ``mode``: ``verify`` refuses every update, status, telemetry message or prediction
    not signed by its device's registered key; ``off`` verifies nothing. Left out, it
    is ``verify`` when ``key_registry`` is set, ``off`` otherwise. With a
    ``signing_key`` the aggregator signs its global models, announcements and summaries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: SecurityMode | None = None
    signing_key: Path | None = None
    key_registry: Path | None = None

    @property
    def resolved_mode(self) -> SecurityMode:
        """``mode``, or ``verify`` if the key registry is configured, else ``off``."""
        if self.mode is not None:
            return self.mode
        return "verify" if self.key_registry is not None else "off"

    def policy(self) -> SecurityPolicy:
        """The core's :class:`~fedge.signing.SecurityPolicy` of this section.

        Raises ConfigError for mode ``verify`` without ``key_registry``.
        """
        mode = self.resolved_mode
        if mode == "verify" and self.key_registry is None:
            raise ConfigError("security.mode 'verify' needs security.key_registry")
        return SecurityPolicy(
            mode=mode, private_key_path=self.signing_key, registry_path=self.key_registry
        )


class RobustConfig(BaseModel):
    """``[robust]`` of the aggregator: server-side bounds on each training update.

    ``max_examples`` caps the weight (example count) one update carries;
    ``examples_median_multiple`` caps it at that multiple of the round's median count.
    ``max_update_norm`` bounds ``||update - global||``; ``norm_median_multiple`` bounds
    it at that multiple of the round's median norm. ``norm_action``: ``clip`` scales a
    longer delta down to the bound (counted in the summary's ``clipped``), ``reject``
    refuses the update (reason ``norm_too_large``). Either median rule makes the round
    buffer its updates (on disk, in ``spool_dir``) and apply the bounds at the close.
    The robust reducers (median, trimmed_mean, krum, multi_krum) buffer in
    ``spool_dir`` too (default: the system temp dir); files never outlive the round.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_examples: Annotated[int, Field(ge=1)] | None = None
    examples_median_multiple: Annotated[float, Field(gt=0)] | None = None
    max_update_norm: Annotated[float, Field(gt=0)] | None = None
    norm_median_multiple: Annotated[float, Field(gt=0)] | None = None
    norm_action: Literal["clip", "reject"] = "clip"
    spool_dir: Path | None = None


class PrivacyConfig(BaseModel):
    """``[privacy]`` of the aggregator: how the privacy budget of ``training.dp`` is counted.

    ``delta``: the delta at which epsilon is reported. ``population``: the number of
    devices the round's participants are drawn from; the accountant then assumes
    Poisson sampling with ``q = participants / population``, which only holds if
    devices really are selected at random. Unset, ``q = 1`` (no amplification).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    population: Annotated[int, Field(ge=1)] | None = None


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
    # Keep readings the broker acknowledged until ingest confirms them stored (its
    # retained stored-up-to ack, `fedge ingest --stored-acks`) and re-send the
    # unconfirmed ones after a reconnect or `telemetry_confirm_timeout_s` without
    # progress. "auto": from the first ack on; "off": a PUBACK is enough (no ingest
    # confirms). See edge_agent.telemetry_confirm.
    telemetry_confirm: Literal["auto", "on", "off"] = "auto"
    telemetry_confirm_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    status_interval_s: Annotated[float, Field(gt=0)] = 10.0
    sample_interval_s: Annotated[float, Field(ge=0)] = 0.1
    alert_rul: Annotated[float, Field(ge=0)] = 30.0
    max_frame_bytes: Annotated[int, Field(ge=1024)] = 16 << 20
    seed: int = 0
    # Train on a worker thread, so sampling and telemetry keep their rate during a round
    # (in-process simulations train inline, which keeps them deterministic).
    background_training: bool = True
    # That thread's CPU priority this much below the agent's (Linux thread nice): on a
    # busy device, sampling, telemetry and MQTT are not queued behind training. 0 = same.
    training_nice: Annotated[int, Field(ge=0, le=19)] = 10
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
    # [source]: where readings come from: ``kind`` (a registered source plugin) plus that
    # source's options, validated by the source itself when the agent starts.
    source: dict[str, Any] = Field(default_factory=lambda: {"kind": "simulated"})
    # [limits]: what the agent accepts from round announcements and global models.
    limits: AgentLimits = AgentLimits()
    # A new global model is scored on the device's held-out windows first and kept out
    # if its RMSE is more than this much worse (relative: 0.5 = 50 % worse) than the
    # running model's; None loads every model that passes the limits.
    model_acceptance_margin: Annotated[float, Field(ge=0.0, le=100.0)] | None = 0.5
    # Maintenance (edge_agent.maintenance): lives that end in failure are labelled with
    # remaining useful life in cycles (readings) or operating hours (device clock).
    rul_unit: Literal["cycles", "hours"] = "cycles"
    # [health]: the health score of the current life (fedge.health.HealthConfig); its
    # condition_features must be channels of the device's source.
    health: HealthConfig = HealthConfig()
    health_enabled: bool = True
    # Persistence for RUL alerts: alert once `rul_alert_k` of the last `rul_alert_n`
    # predictions were below `alert_rul` (1 of 1: every low prediction alerts).
    rul_alert_k: Annotated[int, Field(ge=1, le=100)] = 1
    rul_alert_n: Annotated[int, Field(ge=1, le=100)] = 1
    # How a closed life's alerts are scored (fedge.alert_metrics), in units of rul_unit:
    # an alert at least `alert_min_lead` before the failure is in time; one raised more
    # than `alert_healthy_margin` before it is a false alarm.
    alert_min_lead: Annotated[float, Field(ge=0)] = 20.0
    alert_healthy_margin: Annotated[float, Field(gt=0)] = 125.0

    @model_validator(mode="after")
    def _maintenance_settings(self) -> AgentConfig:
        if self.rul_alert_k > self.rul_alert_n:
            raise ValueError("rul_alert_k must not exceed rul_alert_n")
        if self.alert_min_lead > self.alert_healthy_margin:
            raise ValueError("alert_min_lead must not exceed alert_healthy_margin")
        return self


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
    # Round summaries kept in memory (the newest; older ones are only in the sinks).
    history_limit: Annotated[int, Field(ge=1, le=1_000_000)] = 100
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
    robust: RobustConfig = RobustConfig()
    privacy: PrivacyConfig = PrivacyConfig()

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
    #: MQTT client id. Default: ``<fleet>-ingest[-<shared_group>]-<instance>`` where
    #: ``<instance>`` comes from the instance id file: stable across restarts (the
    #: broker resumes the session) and distinct between instances.
    client_id: MqttClientId | None = None
    #: Where the persistent instance id lives; default ``<spool_path>.instance``. One
    #: running process per file (it is locked), so give each instance its own spool.
    instance_id_path: Path | None = None
    #: MQTT 5: how long the broker keeps the session (and queues for it) while ingest
    #: is away. MQTT 3.1.1 sessions last until ``persistent_client_expiration``.
    session_expiry_s: Annotated[int, Field(ge=60, le=0xFFFFFFFF)] = 7 * 86_400
    #: Publish stored-up-to watermarks per device (retained ``devices/<d>/stored``)
    #: for agents that keep readings until they are stored. Not with ``shared_group``.
    stored_acks: bool = False

    @field_validator("influx_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("influx_url must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _stored_acks_need_every_message(self) -> IngestConfig:
        if self.stored_acks and self.shared_group is not None:
            raise ValueError("stored_acks cannot be combined with shared_group")
        return self

    @property
    def instance_file(self) -> Path:
        """The instance id file (``instance_id_path``, or next to the spool)."""
        if self.instance_id_path is not None:
            return self.instance_id_path
        return self.spool_path.with_name(self.spool_path.name + ".instance")


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
