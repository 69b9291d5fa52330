"""The files broker.provision writes: exact ACL lines, safe conf, private keys, registry, certs."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.provision import (
    DeviceExistsError,
    FleetExistsError,
    NotProvisionedError,
    ProvisionedFleet,
    ProvisioningError,
    UnknownDeviceError,
    add_device,
    provision_fleet,
    revoke_device,
)
from broker.rendering import render_acl
from broker.signing_keys import load_registry, load_signing_key, public_key_b64
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.errors import ConfigError

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
BROKER = Path(__file__).resolve().parents[2] / "broker"


def _provision(directory: Path, **kwargs: object) -> ProvisionedFleet:
    options: dict[str, object] = {
        "fleet": "f1",
        "devices": ["pump-02", "pump-01"],
        "broker_host": "broker.plant.example",
        "broker_port": 18883,
        "valid_days": 30,
        "now": NOW,
    }
    options.update(kwargs)
    return provision_fleet(directory, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedFleet:
    return _provision(tmp_path_factory.mktemp("prov") / "fleet")


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ACL ------------------------------------------------------------------------------------------


def test_acl_lines_are_exactly_the_policy(fleet: ProvisionedFleet) -> None:
    r = "fedge/v1/f1"
    assert _lines(fleet.acl_file) == [
        "user aggregator",
        f"topic read {r}/devices/+/status",
        f"topic read {r}/rounds/+/updates/+",
        f"topic read {r}/rounds/+/updates/+/chunks",
        f"topic write {r}/rounds/#",
        f"topic write {r}/model/global",
        "user ingest",
        f"topic read {r}/devices/+/telemetry",
        f"topic read {r}/devices/+/prediction",
        f"topic read {r}/devices/+/status",
        f"topic read {r}/devices/+/events",
        f"topic read {r}/rounds/summary",
        f"topic readwrite {r}/devices/+/stored",
        "user operator",
        f"topic write {r}/devices/+/events",
        "user pump-01",
        f"topic write {r}/devices/pump-01/telemetry",
        f"topic write {r}/devices/pump-01/status",
        f"topic write {r}/devices/pump-01/prediction",
        f"topic write {r}/devices/pump-01/events",
        f"topic write {r}/rounds/+/updates/pump-01",
        f"topic write {r}/rounds/+/updates/pump-01/chunks",
        f"topic read {r}/rounds/current",
        f"topic read {r}/model/global",
        f"topic read {r}/devices/pump-01/events",
        f"topic read {r}/devices/pump-01/stored",
        "user pump-02",
        f"topic write {r}/devices/pump-02/telemetry",
        f"topic write {r}/devices/pump-02/status",
        f"topic write {r}/devices/pump-02/prediction",
        f"topic write {r}/devices/pump-02/events",
        f"topic write {r}/rounds/+/updates/pump-02",
        f"topic write {r}/rounds/+/updates/pump-02/chunks",
        f"topic read {r}/rounds/current",
        f"topic read {r}/model/global",
        f"topic read {r}/devices/pump-02/events",
        f"topic read {r}/devices/pump-02/stored",
    ]
    assert _mode(fleet.acl_file) == 0o600


LEAVES = ("telemetry", "status", "prediction", "events")
device_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda n: n not in {"aggregator", "operator"} and not n.startswith("ingest")
)


@settings(max_examples=50, deadline=None)
@given(st.lists(device_names, min_size=1, max_size=6, unique=True))
def test_acl_device_blocks_write_only_their_own_topics(devices: list[str]) -> None:
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in render_acl("f1", devices).splitlines():
        if line.startswith("user "):
            user = line.removeprefix("user ")
            blocks[user] = []
        elif line.startswith("topic "):
            blocks[user].append(line)
    for device in devices:
        writes = [ln.split()[2] for ln in blocks[device] if ln.split()[1] == "write"]
        assert writes == [
            *(f"fedge/v1/f1/devices/{device}/{leaf}" for leaf in LEAVES),
            f"fedge/v1/f1/rounds/+/updates/{device}",
            f"fedge/v1/f1/rounds/+/updates/{device}/chunks",
        ]
        # Never ingest's confirmation of its own readings (nor a wildcard that covers it).
        assert not any(w.endswith(("/stored", "#", "+")) for w in writes)
        reads = [ln.split()[2] for ln in blocks[device] if ln.split()[1] == "read"]
        assert f"fedge/v1/f1/devices/{device}/stored" in reads
        assert all(ln.split()[1] in ("read", "write") for ln in blocks[device])
    assert not any(line.startswith("pattern") for line in render_acl("f1", devices).splitlines())


def test_shipped_example_acl_is_what_provisioning_writes() -> None:
    shipped = (BROKER / "fedge.acl").read_text()
    assert shipped.startswith("# Example")
    assert shipped.endswith(render_acl("plant-7", ["pump-01", "pump-02", "pump-03"]))


# mosquitto.conf -------------------------------------------------------------------------------


def test_conf_is_tls_only_authenticated_and_bound_to_identities(fleet: ProvisionedFleet) -> None:
    lines = _lines(fleet.mosquitto_conf)
    assert "allow_anonymous true" not in fleet.mosquitto_conf.read_text()
    assert [ln for ln in lines if ln.startswith("allow_anonymous")] == ["allow_anonymous false"]
    assert [ln for ln in lines if ln.startswith("listener")] == ["listener 18883"]
    for needed in (
        "per_listener_settings false",
        f"acl_file {fleet.acl_file}",
        f"cafile {fleet.ca_cert}",
        f"certfile {fleet.server_cert}",
        f"keyfile {fleet.server_key}",
        f"crlfile {fleet.crl_file}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        "persistence true",
        f"persistence_location {fleet.data_dir}/",
        "autosave_interval 1",
        "autosave_on_changes false",
        "persistent_client_expiration 7d",
        f"max_packet_size {16 * 1024 * 1024 + 64 * 1024}",
        "set_tcp_nodelay true",
        "log_dest stderr",
    ):
        assert needed in lines, needed
    assert not any(ln.startswith(("password_file", "message_size_limit")) for ln in lines)
    # Every file the broker reads is an absolute path inside the directory, and exists.
    for line in lines:
        key, _, value = line.partition(" ")
        if key in ("acl_file", "cafile", "certfile", "keyfile", "crlfile", "persistence_location"):
            path = Path(value)
            assert path.is_absolute() and path.exists()
            assert path.resolve().is_relative_to(fleet.directory)


def test_password_conf_uses_the_password_file(tmp_path: Path) -> None:
    fleet = _provision(tmp_path / "fleet", auth="password", bind_address="127.0.0.1")
    lines = _lines(fleet.mosquitto_conf)
    assert f"password_file {fleet.password_file}" in lines
    assert "require_certificate false" in lines
    assert "use_username_as_clientid true" in lines
    assert "listener 18883 127.0.0.1" in lines
    assert not any(ln.startswith(("use_identity_as_username", "crlfile")) for ln in lines)
    assert "allow_anonymous true" not in fleet.mosquitto_conf.read_text()
    assert fleet.password_file is not None and _mode(fleet.password_file) == 0o600
    users = [ln.split(":", 1)[0] for ln in fleet.password_file.read_text().splitlines()]
    assert sorted(users) == ["aggregator", "ingest", "operator", "pump-01", "pump-02"]
    assert all(
        ln.split(":", 1)[1].startswith("$7$") for ln in fleet.password_file.read_text().splitlines()
    )
    # No client certificates: identities log in with passwords over server-verified TLS.
    assert not list((fleet.directory / "clients").iterdir())
    config = tomllib.loads(fleet.identity("pump-01").config_file.read_text())
    endpoint = BrokerEndpoint(**config["broker"])
    assert endpoint.username == "pump-01"
    assert endpoint.password == fleet.identity("pump-01").password
    assert len(endpoint.password or "") >= 40
    assert endpoint.cert_file is None

    revoke_device(fleet.directory, "pump-02")
    users = [ln.split(":", 1)[0] for ln in fleet.password_file.read_text().splitlines()]
    assert "pump-02" not in users and "pump-01" in users


def test_shipped_demo_conf_allows_anonymous_only_on_loopback() -> None:
    lines = _lines(BROKER / "mosquitto.conf")
    assert [ln for ln in lines if ln.startswith("listener")] == ["listener 1883 127.0.0.1"]
    assert [ln for ln in lines if ln.startswith("allow_anonymous")] == ["allow_anonymous true"]
    # per-listener, and after the loopback listener, so it can never cover another one
    assert lines.index("per_listener_settings true") < lines.index("listener 1883 127.0.0.1")
    assert lines.index("listener 1883 127.0.0.1") < lines.index("allow_anonymous true")
    assert "fedge broker provision" in (BROKER / "mosquitto.conf").read_text()
    assert "set_tcp_nodelay true" in lines  # no Nagle delay on what the broker sends


# Keys, registry, certificates ----------------------------------------------------------------


def test_private_files_are_owner_only_and_public_ones_readable(fleet: ProvisionedFleet) -> None:
    private = [fleet.ca_key, fleet.server_key, fleet.acl_file]
    public = [fleet.ca_cert, fleet.server_cert, fleet.registry_file, fleet.mosquitto_conf]
    for ident in fleet.identities.values():
        private.append(ident.config_file)
        for path in (ident.key_file, ident.signing_key):
            if path is not None:
                private.append(path)
        for path in (ident.cert_file, ident.signing_public_key):
            if path is not None:
                public.append(path)
    assert len(private) == 3 + 5 + 5 + 4  # configs, TLS keys, signing keys (not ingest)
    assert {p: _mode(p) for p in private} == {p: 0o600 for p in private}
    assert {p: _mode(p) for p in public} == {p: 0o644 for p in public}
    assert _mode(fleet.data_dir) == 0o700


def test_registry_pins_every_signing_key(fleet: ProvisionedFleet) -> None:
    data = json.loads(fleet.registry_file.read_text())
    assert data["version"] == 1 and data["algorithm"] == "ed25519" and data["fleet"] == "f1"
    assert sorted(data["devices"]) == ["pump-01", "pump-02"]
    for name in ("pump-01", "pump-02", "aggregator", "operator"):
        ident = fleet.identity(name)
        assert ident.signing_key is not None
        key = load_signing_key(ident.signing_key)
        pinned = data["devices"][name] if name.startswith("pump") else data[name]
        assert len(base64.b64decode(pinned)) == 32
        assert pinned == public_key_b64(key)
    assert fleet.identity("ingest").signing_key is None  # ingest never publishes
    assert load_registry(fleet.registry_file).devices == data["devices"]


def _cert(path: Path | None) -> x509.Certificate:
    assert path is not None
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_certificates_names_usages_and_validity(fleet: ProvisionedFleet) -> None:
    ca = _cert(fleet.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc == dt.datetime(2039, 12, 30, tzinfo=dt.UTC)  # +3650 days
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)

    server = _cert(fleet.server_cert)
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.plant.example", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.not_valid_before_utc == dt.datetime(2029, 12, 31, 23, 55, tzinfo=dt.UTC)
    assert server.not_valid_after_utc == dt.datetime(2030, 1, 31, tzinfo=dt.UTC)  # +30 days

    for name in ("aggregator", "ingest", "operator", "pump-01", "pump-02"):
        cert = _cert(fleet.identity(name).cert_file)
        cert.verify_directly_issued_by(ca)
        assert _cn(cert) == name
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.not_valid_after_utc == dt.datetime(2030, 1, 31, tzinfo=dt.UTC)
        key = serialization.load_pem_private_key(
            fleet.identity(name).key_file.read_bytes(),  # type: ignore[union-attr]
            password=None,
        )
        assert key.public_key() == cert.public_key()


def test_server_san_of_an_ip_broker_host(tmp_path: Path) -> None:
    fleet = _provision(tmp_path / "f", broker_host="10.1.2.3", server_names=["mqtt.local"])
    sans = _cert(fleet.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",
        "::1",
    ]
    assert sans.value.get_values_for_type(x509.DNSName) == ["mqtt.local", "localhost"]


# Client configs ------------------------------------------------------------------------------


def test_client_configs_match_the_config_models(fleet: ProvisionedFleet) -> None:
    registry = json.loads(fleet.registry_file.read_text())
    agent = tomllib.loads(fleet.identity("pump-01").config_file.read_text())
    security = agent.pop("security")
    config = AgentConfig(**agent)  # everything but [security] is valid today
    assert (config.fleet, config.device) == ("f1", "pump-01")
    assert config.broker == BrokerEndpoint(
        host="broker.plant.example",
        port=18883,
        tls=True,
        ca_file=fleet.ca_cert,
        cert_file=fleet.identity("pump-01").cert_file,
        key_file=fleet.identity("pump-01").key_file,
    )
    assert config.broker == fleet.endpoint("pump-01")
    assert security == {
        "signing_key": str(fleet.identity("pump-01").signing_key),
        "aggregator_public_key": registry["aggregator"],
        "operator_public_key": registry["operator"],
    }
    aggregator = tomllib.loads(fleet.identity("aggregator").config_file.read_text())
    assert aggregator["security"] == {
        "signing_key": str(fleet.identity("aggregator").signing_key),
        "key_registry": str(fleet.registry_file),
    }
    ingest = tomllib.loads(fleet.identity("ingest").config_file.read_text())
    assert ingest["security"] == {"key_registry": str(fleet.registry_file)}
    assert "shared_group" not in ingest
    assert ingest["stored_acks"] is True  # the one ingest confirms what it stored


def test_ingest_workers_get_their_own_identities(tmp_path: Path) -> None:
    fleet = _provision(tmp_path / "f", ingest_workers=3)
    assert [n for n, i in fleet.identities.items() if i.role == "ingest"] == [
        "ingest",
        "ingest-2",
        "ingest-3",
    ]
    assert "user ingest-3" in _lines(fleet.acl_file)
    for name in ("ingest", "ingest-3"):
        config = tomllib.loads(fleet.identity(name).config_file.read_text())
        assert config["shared_group"] == "ingest"
        assert "stored_acks" not in config  # needs all of a device's telemetry
        assert _cn(_cert(fleet.identity(name).cert_file)) == name


# Add, revoke, errors ---------------------------------------------------------------------------


def test_revoke_lists_the_certificate_in_a_signed_crl_and_add_reuses_the_ca(
    tmp_path: Path,
) -> None:
    fleet = _provision(tmp_path / "f")
    ca = _cert(fleet.ca_cert)
    old_serial = _cert(fleet.identity("pump-02").cert_file).serial_number
    crl = x509.load_pem_x509_crl(fleet.crl_file.read_bytes())  # type: ignore[union-attr]
    assert len(list(crl)) == 0 and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]

    later = NOW + dt.timedelta(days=1)
    after = revoke_device(fleet.directory, "pump-02", now=later)
    assert after.devices == ("pump-01",)
    crl = x509.load_pem_x509_crl(fleet.crl_file.read_bytes())  # type: ignore[union-attr]
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(old_serial)
    assert entry is not None and entry.revocation_date_utc == later
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.next_update_utc == ca.not_valid_after_utc  # never expires before the CA
    assert "user pump-02" not in _lines(fleet.acl_file)
    assert "pump-02" not in load_registry(fleet.registry_file).devices
    for path in (
        tmp_path / "f" / "clients" / "pump-02.key",
        tmp_path / "f" / "config" / "agent-pump-02.toml",
    ):
        assert not path.exists()
    with pytest.raises(UnknownDeviceError) as err:
        revoke_device(fleet.directory, "pump-02")
    assert err.value.device == "pump-02"

    again = add_device(fleet.directory, "pump-02", now=later)
    new_cert = _cert(again.identity("pump-02").cert_file)
    new_cert.verify_directly_issued_by(ca)
    assert new_cert.serial_number != old_serial
    assert "user pump-02" in _lines(fleet.acl_file)
    crl = x509.load_pem_x509_crl(fleet.crl_file.read_bytes())  # type: ignore[union-attr]
    assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None
    with pytest.raises(DeviceExistsError):
        add_device(fleet.directory, "pump-02")


def test_a_provisioned_directory_is_never_overwritten(fleet: ProvisionedFleet) -> None:
    ca_before = fleet.ca_key.read_bytes()
    with pytest.raises(FleetExistsError):
        _provision(fleet.directory)
    assert fleet.ca_key.read_bytes() == ca_before


@pytest.mark.parametrize("name", ["aggregator", "operator", "ingest", "ingest-7", "a/b", "+", ""])
def test_reserved_and_invalid_device_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ProvisioningError):
        _provision(tmp_path / "f", devices=[name])
    assert not (tmp_path / "f" / "fleet.json").exists()


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ProvisioningError, match="duplicate"):
        _provision(tmp_path / "a", devices=["x", "x"])
    with pytest.raises(ConfigError, match="broker host"):
        _provision(tmp_path / "b", broker_host="not a host")
    with pytest.raises(ConfigError, match="valid_days"):
        _provision(tmp_path / "c", valid_days=0)
    with pytest.raises(NotProvisionedError):
        add_device(tmp_path / "nowhere", "pump-09")


def test_password_auth_without_mosquitto_passwd_names_the_binary(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "mosquitto_passwd"
    with pytest.raises(ConfigError, match=r"mosquitto_passwd.*apt-get install mosquitto"):
        _provision(tmp_path / "f", auth="password", mosquitto_passwd=missing)
    assert not (tmp_path / "f").exists()
