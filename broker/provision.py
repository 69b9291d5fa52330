"""Provisioning of a secure fleet broker: CA, certificates, passwords, ACL, signing keys, configs.

``provision_fleet`` writes everything one Mosquitto broker and its clients need into
one directory; ``add_device`` and ``revoke_device`` change an existing one. The
directory (absolute paths everywhere, so the broker and services can run from any
working directory)::

    fleet.json                  manifest: what was provisioned (the source of truth)
    mosquitto.conf              TLS-only, authenticated, ACL-checked broker
    acl                         one explicit user block per identity
    passwd                      Mosquitto password file (auth="password" only)
    data/                       Mosquitto persistence (retained messages, sessions)
    ca/ca.key (0600) ca.crt     the fleet CA (EC P-256)
    ca/crl.pem                  revoked client certificates (auth="cert" only)
    server/server.key server.crt
    clients/<identity>.key .crt TLS client certificates, CN = identity (auth="cert")
    keys/<identity>.ed25519.pem (0600) and .ed25519.pub.pem: message-signing keys
    keys/registry.json          the pinned public signing keys of the fleet
    config/agent-<device>.toml, aggregator.toml, ingest.toml, operator.toml (0600)

Identities: every device, ``aggregator``, ``ingest`` (``ingest-2``... with
``ingest_workers > 1``: one identity per process, because client ids are bound to
usernames and two processes of one identity would take over each other's session)
and ``operator`` (the tool that sends maintenance events).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import pwd
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import passwd, pki
from broker.fleet_layout import (
    Auth,
    DeviceExistsError,
    FleetExistsError,
    FleetLayout,
    IdentityFiles,
    NotProvisionedError,
    ProvisionedFleet,
    ProvisioningError,
    UnknownDeviceError,
    current_user,
    load_fleet,
    load_layout_manifest,
    role_of,
    signs,
)
from broker.fleet_manifest import FleetManifest, Revocation, write_manifest
from broker.rendering import (
    AGGREGATOR,
    INGEST,
    OPERATOR,
    BrokerFiles,
    TomlValue,
    render_acl,
    render_mosquitto_conf,
    render_toml,
)
from broker.signing_keys import (
    KeyRegistry,
    load_registry,
    public_key_b64,
    write_registry,
    write_signing_key,
)
from fedge.errors import ConfigError, TopicError
from fedge.topics import validate_segment

__all__ = [
    "DeviceExistsError",
    "FleetExistsError",
    "IdentityFiles",
    "NotProvisionedError",
    "ProvisionedFleet",
    "ProvisioningError",
    "UnknownDeviceError",
    "add_device",
    "load_fleet",
    "provision_fleet",
    "revoke_device",
]


# Validation ----------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
_RESERVED = re.compile(rf"({AGGREGATOR}|{OPERATOR}|{INGEST}(-[0-9]+)?)")


def _check_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if _HOSTNAME.fullmatch(host) is None:
            raise ConfigError(
                f"broker host {host!r} is neither an IP address nor a DNS name"
            ) from None
    return host


def _check_device(device: str) -> str:
    try:
        validate_segment(device, what="device")
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    if _RESERVED.fullmatch(device):
        raise ProvisioningError(f"device name {device!r} is reserved for a fleet service")
    return device


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ConfigError("now must be timezone-aware")
    return now.astimezone(dt.UTC)


# Public API ----------------------------------------------------------------------------------


def provision_fleet(
    directory: Path,
    *,
    fleet: str,
    devices: Sequence[str],
    broker_host: str = "127.0.0.1",
    broker_port: int = 8883,
    auth: Auth = "cert",
    valid_days: int = 825,
    ca_valid_days: int = 3650,
    server_names: Sequence[str] = (),
    bind_address: str | None = None,
    ingest_workers: int = 1,
    broker_user: str | None = None,
    max_message_bytes: int = 16 << 20,
    mosquitto_passwd: Path | None = None,
    now: dt.datetime | None = None,
) -> ProvisionedFleet:
    """Create a new fleet broker provisioning in ``directory`` (created if missing).

    ``broker_host`` is what clients connect to; it, ``server_names``, ``localhost``,
    ``127.0.0.1`` and ``::1`` are the server certificate's subject alternative names.
    ``valid_days`` bounds the server and client certificates, ``ca_valid_days`` the CA.
    ``bind_address`` restricts the listener (default: every interface).
    ``broker_user`` is the account Mosquitto runs as when started as root (default:
    whoever provisions); the broker's files are handed to it. With
    ``auth="password"`` the ``mosquitto_passwd`` binary must exist (ConfigError
    naming it otherwise), and no client certificates are made: clients verify the
    server over TLS and log in with a generated password.

    Raises :class:`FleetExistsError` if ``directory`` is already provisioned,
    :class:`ProvisioningError` / :class:`ConfigError` for invalid arguments.
    """
    now = _now(now)
    try:
        validate_segment(fleet, what="fleet")
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    names = [_check_device(d) for d in devices]
    if len(set(names)) != len(names):
        raise ProvisioningError(f"duplicate device names in {list(devices)}")
    _check_host(broker_host)
    for name in server_names:
        _check_host(name)
    if not 1 <= broker_port <= 65535:
        raise ConfigError(f"broker port {broker_port} is not in 1..65535")
    if auth not in ("cert", "password"):
        raise ConfigError(f"auth must be 'cert' or 'password', not {auth!r}")
    if valid_days < 1 or ca_valid_days < valid_days:
        raise ConfigError("need 1 <= valid_days <= ca_valid_days")
    if ingest_workers < 1:
        raise ConfigError("ingest_workers must be at least 1")
    if max_message_bytes < 1024:
        raise ConfigError("max_message_bytes must be at least 1024")
    if auth == "password":
        passwd.find_mosquitto_passwd(mosquitto_passwd)  # fail before writing anything
    layout = FleetLayout(directory.resolve())
    if layout.manifest.exists():
        raise FleetExistsError(layout.root)
    for sub in ("ca", "server", "clients", "keys", "config"):
        _mkdir(layout.root / sub, 0o755)
    _mkdir(layout.data, 0o700)

    with _locked(layout):
        if layout.manifest.exists():  # lost a race with another provisioning
            raise FleetExistsError(layout.root)
        ca = pki.new_ca(
            common_name=f"fedge {fleet} CA",
            organization=f"fedge fleet {fleet}",
            valid_days=ca_valid_days,
            now=now,
        )
        pki.write_private_key(layout.ca_key, ca.key)
        pki.write_certificate(layout.ca_cert, ca.cert)
        hosts = [broker_host, *server_names, "localhost", "127.0.0.1", "::1"]
        server_key, server_cert = pki.issue_certificate(
            ca, common_name=broker_host, usage="server", valid_days=valid_days, now=now, hosts=hosts
        )
        pki.write_private_key(layout.server_key, server_key)
        pki.write_certificate(layout.server_cert, server_cert)
        ingest = (INGEST, *(f"{INGEST}-{n}" for n in range(2, ingest_workers + 1)))
        manifest = FleetManifest(
            fleet=fleet,
            auth=auth,
            broker_host=broker_host,
            broker_port=broker_port,
            bind_address=bind_address,
            broker_user=broker_user if broker_user is not None else current_user(),
            valid_days=valid_days,
            max_message_bytes=max_message_bytes,
            ingest=ingest,
            devices=(),
            created_at=now,
        )
        ca_for_clients = ca if auth == "cert" else None
        fresh: dict[str, _Fresh] = {}
        for name in (AGGREGATOR, *ingest, OPERATOR, *names):
            manifest, fresh[name] = _new_identity(
                layout, manifest, ca_for_clients, name, now, mosquitto_passwd
            )
        registry = KeyRegistry(
            fleet,
            aggregator=_public(fresh[AGGREGATOR]),
            operator=_public(fresh[OPERATOR]),
            devices={name: _public(fresh[name]) for name in names},
        )
        if auth == "cert":
            _write_crl(layout, ca, manifest, now)
        write_registry(layout.registry, registry)
        for name, new in fresh.items():
            _write_client_config(layout, manifest, registry, name, new.password)
        _write_broker_files(layout, manifest)
        write_manifest(layout.manifest, manifest)  # last: its presence means "complete"
    return load_fleet(layout.root)


def add_device(
    directory: Path,
    device: str,
    *,
    mosquitto_passwd: Path | None = None,
    now: dt.datetime | None = None,
) -> ProvisionedFleet:
    """Provision one more device in an existing fleet, signed by the fleet's CA.

    Writes its certificate (or password), signing key, registry entry, ACL block and
    agent config. The broker picks the ACL (and password file) up on SIGHUP; new
    certificates need no reload. Raises :class:`DeviceExistsError` if the device is
    already provisioned; a device revoked earlier can be added again (new keys).
    """
    now = _now(now)
    _check_device(device)
    layout = FleetLayout(directory.resolve())
    with _locked(layout):
        manifest = load_layout_manifest(layout)
        if device in manifest.devices:
            raise DeviceExistsError(device)
        ca = pki.load_ca(layout.ca_key, layout.ca_cert) if manifest.auth == "cert" else None
        manifest, fresh = _new_identity(layout, manifest, ca, device, now, mosquitto_passwd)
        registry = load_registry(layout.registry).with_device(device, _public(fresh))
        write_registry(layout.registry, registry)
        _write_client_config(layout, manifest, registry, device, fresh.password)
        _write_broker_files(layout, manifest)
        write_manifest(layout.manifest, manifest)
    return load_fleet(layout.root)


def revoke_device(
    directory: Path,
    device: str,
    *,
    mosquitto_passwd: Path | None = None,
    now: dt.datetime | None = None,
) -> ProvisionedFleet:
    """Lock ``device`` out: CRL entry (cert auth) or password removed, ACL block and
    registry entry dropped, its private keys and config deleted.

    The broker refuses the device's new connections after a SIGHUP or restart; an
    existing connection loses all topic access at the SIGHUP (the ACL no longer
    lists it). Raises :class:`UnknownDeviceError` if it is not provisioned.
    """
    now = _now(now)
    layout = FleetLayout(directory.resolve())
    with _locked(layout):
        manifest = load_layout_manifest(layout)
        if device not in manifest.devices:
            raise UnknownDeviceError(device)
        if manifest.auth == "cert":
            serial = manifest.serials[device]
            if all(r.serial != serial for r in manifest.revoked):
                revocation = Revocation(identity=device, serial=serial, revoked_at=now)
                manifest = manifest.model_copy(
                    update={
                        "revoked": (*manifest.revoked, revocation),
                        "crl_number": manifest.crl_number + 1,
                    }
                )
            _write_crl(layout, pki.load_ca(layout.ca_key, layout.ca_cert), manifest, now)
        elif device in _password_users(layout.passwd):
            passwd.delete_user(layout.passwd, device, binary=mosquitto_passwd)
        serials = {k: v for k, v in manifest.serials.items() if k != device}
        devices = tuple(d for d in manifest.devices if d != device)
        manifest = manifest.model_copy(update={"devices": devices, "serials": serials})
        # Lock-out files first (CRL, password file, ACL), bookkeeping after: a crash in
        # between leaves the device locked out, and revoking again finishes the job.
        _write_broker_files(layout, manifest)
        write_registry(layout.registry, load_registry(layout.registry).without_device(device))
        write_manifest(layout.manifest, manifest)
        for path in (
            layout.client_key(device),
            layout.client_cert(device),
            layout.signing_key(device),
            layout.signing_public(device),
            layout.config(device, "device"),
        ):
            path.unlink(missing_ok=True)
    return load_fleet(layout.root)


# Steps -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fresh:
    """Secrets of a new identity, between their creation and their config file."""

    signing_key: Ed25519PrivateKey | None
    password: str | None = field(default=None, repr=False)


def _new_identity(
    layout: FleetLayout,
    manifest: FleetManifest,
    ca: pki.CertificateAuthority | None,
    name: str,
    now: dt.datetime,
    mosquitto_passwd: Path | None,
) -> tuple[FleetManifest, _Fresh]:
    """TLS credentials and signing key of one identity; returns the updated manifest."""
    role = role_of(manifest, name)
    serials = dict(manifest.serials)
    password: str | None = None
    if ca is not None:
        key, cert = pki.issue_certificate(
            ca, common_name=name, usage="client", valid_days=manifest.valid_days, now=now
        )
        pki.write_private_key(layout.client_key(name), key)
        pki.write_certificate(layout.client_cert(name), cert)
        serials[name] = cert.serial_number
    else:
        password = secrets.token_urlsafe(32)
        passwd.set_password(layout.passwd, name, password, binary=mosquitto_passwd)
    signing_key: Ed25519PrivateKey | None = None
    if signs(role):
        signing_key = Ed25519PrivateKey.generate()
        write_signing_key(layout.signing_key(name), layout.signing_public(name), signing_key)
    devices = (*manifest.devices, name) if role == "device" else manifest.devices
    update = {"devices": devices, "serials": serials}
    return manifest.model_copy(update=update), _Fresh(signing_key, password)


def _public(fresh: _Fresh) -> str:
    assert fresh.signing_key is not None  # noqa: S101 - devices, aggregator, operator sign
    return public_key_b64(fresh.signing_key)


def _write_crl(
    layout: FleetLayout, ca: pki.CertificateAuthority, manifest: FleetManifest, now: dt.datetime
) -> None:
    crl = pki.build_crl(
        ca,
        ((r.serial, r.revoked_at) for r in manifest.revoked),
        number=manifest.crl_number,
        now=now,
    )
    pki.write_bytes_atomic(layout.crl, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_broker_files(layout: FleetLayout, manifest: FleetManifest) -> None:
    acl = render_acl(manifest.fleet, manifest.devices, ingest=manifest.ingest)
    pki.write_bytes_atomic(layout.acl, acl.encode("utf-8"), mode=0o600)
    files = BrokerFiles(
        acl_file=layout.acl,
        ca_cert=layout.ca_cert,
        server_cert=layout.server_cert,
        server_key=layout.server_key,
        data_dir=layout.data,
        crl_file=layout.crl if manifest.auth == "cert" else None,
        password_file=layout.passwd if manifest.auth == "password" else None,
    )
    conf = render_mosquitto_conf(
        manifest.fleet,
        files,
        auth=manifest.auth,
        port=manifest.broker_port,
        bind_address=manifest.bind_address,
        run_as_user=manifest.broker_user,
        max_message_bytes=manifest.max_message_bytes,
    )
    pki.write_bytes_atomic(layout.conf, conf.encode("utf-8"), mode=0o644)
    _hand_to_broker(layout, manifest)


def _hand_to_broker(layout: FleetLayout, manifest: FleetManifest) -> None:
    """Give the files Mosquitto reads after dropping root to its account."""
    if manifest.broker_user == current_user():
        return
    try:
        entry = pwd.getpwnam(manifest.broker_user)
    except KeyError:
        raise ConfigError(f"broker user {manifest.broker_user!r} does not exist") from None
    paths = [layout.acl, layout.server_key, layout.data, *layout.data.iterdir()]
    paths += [layout.crl] if manifest.auth == "cert" else [layout.passwd]
    for path in paths:
        try:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise ConfigError(
                f"cannot give {path} to broker user {manifest.broker_user!r}: {exc.strerror}"
                " (provision as root, or as that user)"
            ) from exc


def _write_client_config(
    layout: FleetLayout,
    manifest: FleetManifest,
    registry: KeyRegistry,
    name: str,
    password: str | None,
) -> None:
    role = role_of(manifest, name)
    broker: dict[str, TomlValue] = {
        "host": manifest.broker_host,
        "port": manifest.broker_port,
        "tls": True,
        "ca_file": layout.ca_cert,
    }
    if manifest.auth == "cert":
        broker |= {"cert_file": layout.client_cert(name), "key_file": layout.client_key(name)}
    elif password is not None:
        broker |= {"username": name, "password": password}
    top: dict[str, TomlValue] = {"fleet": manifest.fleet}
    security: dict[str, TomlValue] = {}
    if signs(role):
        security["signing_key"] = layout.signing_key(name)
    if role == "device":
        top["device"] = name
        security |= {
            "aggregator_public_key": registry.aggregator,
            "operator_public_key": registry.operator,
        }
    elif role in ("aggregator", "ingest"):
        security["key_registry"] = layout.registry
        if role == "ingest" and len(manifest.ingest) > 1:
            top["shared_group"] = INGEST  # the workers split the fleet's messages
        elif role == "ingest":
            # One ingest sees all of a device's telemetry: it confirms what it stored,
            # so agents keep readings until then (edge_agent.telemetry_confirm).
            top["stored_acks"] = True
    header = [
        f"fedge {role} {name!r} of fleet {manifest.fleet!r}, written by broker.provision.",
        "Private (mode 0600): it names this identity's keys"
        + (" and holds its broker password." if manifest.auth == "password" else "."),
    ]
    text = render_toml(header, top, {"broker": broker, "security": security})
    pki.write_bytes_atomic(layout.config(name, role), text.encode("utf-8"), mode=0o600)


# Helpers ---------------------------------------------------------------------------------------


def _mkdir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chmod(path, mode)
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from exc


@contextmanager
def _locked(layout: FleetLayout) -> Iterator[None]:
    """Serialise provisioning commands on one directory (an advisory lock file)."""
    try:
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if not layout.root.exists():
            raise NotProvisionedError(layout.root) from exc
        raise ConfigError(f"cannot lock {layout.lock}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _password_users(path: Path) -> set[str]:
    # Only the user names (text before the first ':'); the hashes stay opaque.
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return {line.split(":", 1)[0] for line in lines if ":" in line}
