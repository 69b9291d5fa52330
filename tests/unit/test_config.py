"""Configuration: broker URLs, TOML files, environment and explicit overrides."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint, load_config
from fedge.errors import ConfigError
from fedge.spec import ModelSpec


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's shell must not leak FEDGE_* settings into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FEDGE_"):
            monkeypatch.delenv(name)
    yield


# BrokerEndpoint.from_url -------------------------------------------------------------------


def test_plain_mqtt_url() -> None:
    ep = BrokerEndpoint.from_url("mqtt://broker.local:1884")
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password) == (
        "broker.local", 1884, False, None, None,
    )
    assert ep.url == "mqtt://broker.local:1884"


@pytest.mark.parametrize(("url", "port"), [("mqtt://h", 1883), ("tcp://h", 1883)])
def test_mqtt_default_port(url: str, port: int) -> None:
    ep = BrokerEndpoint.from_url(url)
    assert ep.port == port
    assert ep.tls is False


@pytest.mark.parametrize("scheme", ["mqtts", "ssl"])
def test_mqtts_defaults_to_8883_and_tls(scheme: str) -> None:
    ep = BrokerEndpoint.from_url(f"{scheme}://broker.example.com")
    assert ep.port == 8883
    assert ep.tls is True
    assert ep.url == "mqtts://broker.example.com:8883"


def test_mqtts_explicit_port() -> None:
    assert BrokerEndpoint.from_url("mqtts://h:9999").port == 9999


def test_credentials_with_percent_escapes() -> None:
    ep = BrokerEndpoint.from_url("mqtt://pump%4003:p%3Ass%2Fw%40rd%25@h:1883")
    assert ep.username == "pump@03"
    assert ep.password == "p:ss/w@rd%"  # noqa: S105 - test data
    assert "p:ss" not in repr(ep)  # the password is kept out of repr
    assert "pump@03" not in ep.url  # and out of the loggable URL


def test_username_only() -> None:
    ep = BrokerEndpoint.from_url("mqtt://device-7@h")
    assert ep.username == "device-7"
    assert ep.password is None


def test_ipv6_host() -> None:
    ep = BrokerEndpoint.from_url("mqtt://[::1]:1884")
    assert ep.host == "::1"
    assert ep.port == 1884


def test_extra_fields_are_passed_through() -> None:
    ep = BrokerEndpoint.from_url("mqtts://h", keepalive=60, ca_file=Path("/etc/ca.pem"))
    assert ep.keepalive == 60
    assert ep.ca_file == Path("/etc/ca.pem")


def test_invalid_extra_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="keepalive"):
        BrokerEndpoint.from_url("mqtt://h", keepalive=1)


@pytest.mark.parametrize("url", ["http://h", "ws://h:80", "h:1883", "broker.local", ""])
def test_bad_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="scheme must be mqtt:// or mqtts://"):
        BrokerEndpoint.from_url(url)


@pytest.mark.parametrize("url", ["mqtt://", "mqtt://:1883", "mqtts://user:pw@:8883", "mqtt:///x"])
def test_no_host(url: str) -> None:
    with pytest.raises(ConfigError, match="has no host"):
        BrokerEndpoint.from_url(url)


@pytest.mark.parametrize("url", ["mqtt://h:abc", "mqtt://h:99999", "mqtt://h:-1", "mqtt://h:1x"])
def test_bad_port(url: str) -> None:
    with pytest.raises(ConfigError, match="broker URL"):
        BrokerEndpoint.from_url(url)


def test_port_zero_is_refused() -> None:
    with pytest.raises(ConfigError):
        BrokerEndpoint.from_url("mqtt://h:0")


# load_config -------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedge.toml"
    path.write_text(text)
    return path


AGENT_TOML = """
fleet = "plant-7"
device = "pump-03"
site = "hall-2"
telemetry_batch = 25

[broker]
host = "broker.local"
port = 1884
username = "pump-03"
"""


def test_load_agent_config_from_toml(tmp_path: Path) -> None:
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
    assert cfg.fleet == "plant-7"
    assert cfg.device == "pump-03"
    assert cfg.site == "hall-2"
    assert cfg.telemetry_batch == 25
    assert cfg.broker == BrokerEndpoint(host="broker.local", port=1884, username="pump-03")
    assert cfg.holdout_fraction == 0.2  # default kept


def test_load_aggregator_config_from_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, """
fleet = "plant-7"
rounds = 3
min_clients = 4
strategy = "fedavg"
allowed_devices = ["pump-01", "pump-02"]

[model]
name = "gru"
n_features = 5

[training]
epochs = 2
learning_rate = 0.01
""")
    cfg = load_config(AggregatorConfig, path)
    assert cfg.rounds == 3
    assert cfg.min_clients == 4
    assert cfg.allowed_devices == frozenset({"pump-01", "pump-02"})
    assert cfg.model == ModelSpec(name="gru", n_features=5)
    assert cfg.training.epochs == 2
    assert cfg.training.learning_rate == 0.01


def test_no_file_uses_defaults_and_overrides() -> None:
    cfg = load_config(AgentConfig, device="pump-09")
    assert cfg.fleet == "demo"
    assert cfg.device == "pump-09"
    assert cfg.broker == BrokerEndpoint()


def test_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGENT_FLEET", "plant-9")
    monkeypatch.setenv("FEDGE_AGENT_BROKER__PORT", "1999")
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
    assert cfg.fleet == "plant-9"
    assert cfg.broker.port == 1999
    # Nested env merges into the file's table instead of replacing it.
    assert cfg.broker.host == "broker.local"
    assert cfg.broker.username == "pump-03"
    assert cfg.device == "pump-03"


def test_explicit_kwargs_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGENT_FLEET", "plant-9")
    monkeypatch.setenv("FEDGE_AGENT_TELEMETRY_BATCH", "77")
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML), fleet="plant-11")
    assert cfg.fleet == "plant-11"
    assert cfg.telemetry_batch == 77


def test_explicit_broker_beats_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGE_AGENT_BROKER__PORT", "1999")
    broker = BrokerEndpoint.from_url("mqtts://cli-host")
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML), broker=broker)
    assert cfg.broker.host == "cli-host"
    assert cfg.broker.tls is True


def test_none_kwargs_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGENT_SITE", "hall-9")
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML), fleet=None, site=None,
                      seed=None)
    assert cfg.fleet == "plant-7"  # from the file
    assert cfg.site == "hall-9"  # from the environment
    assert cfg.seed == 0  # default


def test_env_prefixes_are_separate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGENT_FLEET", "agents-only")
    monkeypatch.setenv("FEDGE_AGGREGATOR_ROUNDS", "7")
    assert load_config(AggregatorConfig).fleet == "demo"
    assert load_config(AggregatorConfig).rounds == 7
    assert load_config(AgentConfig, device="d").fleet == "agents-only"


def test_toml_does_not_leak_between_calls(tmp_path: Path) -> None:
    load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
    assert load_config(AgentConfig, device="x").fleet == "demo"


def test_configs_are_frozen(tmp_path: Path) -> None:
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
    with pytest.raises(ValueError, match="frozen"):
        cfg.fleet = "other"  # type: ignore[misc]


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = _write(tmp_path, 'fleet = "plant-7\ndevice = pump\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(AgentConfig, path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load_config(AgentConfig, tmp_path / "nope.toml")


def test_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, AGENT_TOML.replace("site =", "sight =", 1))
    with pytest.raises(ConfigError, match=r"invalid AgentConfig in .*fedge.toml: .*sight: Extra"):
        load_config(AgentConfig, path)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = _write(tmp_path, AGENT_TOML + 'hostname = "x"\n')
    with pytest.raises(ConfigError, match=r"broker\.hostname"):
        load_config(AgentConfig, path)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('telemetry_batch = "many"', "telemetry_batch"),
        ("holdout_fraction = 1.5", "holdout_fraction"),
        ("store_max_readings = 10", "store_max_readings"),
        ('fleet = "bad fleet"', "fleet"),
    ],
)
def test_wrong_type_or_value(tmp_path: Path, line: str, field: str) -> None:
    key = line.split(" =")[0]
    text = "\n".join(
        ln for ln in AGENT_TOML.splitlines() if not ln.startswith(f"{key} =")
    )
    path = _write(tmp_path, f"{line}\n{text}")
    with pytest.raises(ConfigError, match=rf"(^|: ){field}: "):
        load_config(AgentConfig, path)


def test_wrong_nested_type(tmp_path: Path) -> None:
    path = _write(tmp_path, AGENT_TOML.replace("port = 1884", 'port = "eighty"'))
    with pytest.raises(ConfigError, match=r"broker\.port"):
        load_config(AgentConfig, path)


def test_wrong_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGENT_BROKER__PORT", "70000")
    with pytest.raises(ConfigError, match=r"broker\.port"):
        load_config(AgentConfig, device="d")


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError, match="device: Field required"):
        load_config(AgentConfig)


def test_unknown_strategy(tmp_path: Path) -> None:
    path = _write(tmp_path, 'strategy = "fedmagic"\n')
    with pytest.raises(ConfigError, match=r"strategy: .*unknown strategy 'fedmagic'"):
        load_config(AggregatorConfig, path)


def test_unknown_strategy_from_kwargs() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        load_config(AggregatorConfig, strategy="FedAvg")


def test_telemetry_confirmation_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(AgentConfig, _write(tmp_path, AGENT_TOML)).telemetry_confirm == "auto"
    monkeypatch.setenv("FEDGE_AGENT_TELEMETRY_CONFIRM", "off")
    monkeypatch.setenv("FEDGE_AGENT_TELEMETRY_CONFIRM_TIMEOUT_S", "5")
    cfg = load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
    assert (cfg.telemetry_confirm, cfg.telemetry_confirm_timeout_s) == ("off", 5.0)
    monkeypatch.setenv("FEDGE_AGENT_TELEMETRY_CONFIRM", "always")
    with pytest.raises(ConfigError, match="telemetry_confirm"):
        load_config(AgentConfig, _write(tmp_path, AGENT_TOML))
