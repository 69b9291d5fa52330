"""The layout of a provisioning directory and what callers get back: paths, identities, errors.

See :mod:`broker.provision` for what each file is and how it is made.
"""

from __future__ import annotations

import os
import pwd
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from broker.fleet_manifest import FleetManifest, load_manifest
from broker.rendering import AGGREGATOR, OPERATOR
from fedge.config import BrokerEndpoint
from fedge.errors import ConfigError

__all__ = [
    "Auth",
    "DeviceExistsError",
    "FleetExistsError",
    "FleetLayout",
    "IdentityFiles",
    "NotProvisionedError",
    "ProvisionedFleet",
    "ProvisioningError",
    "Role",
    "UnknownDeviceError",
    "current_user",
    "load_fleet",
    "load_layout_manifest",
    "role_of",
    "signs",
]

Auth = Literal["cert", "password"]
Role = Literal["device", "aggregator", "ingest", "operator"]


class ProvisioningError(ConfigError):
    """A provisioning request cannot be carried out; nothing unsafe was written."""


class FleetExistsError(ProvisioningError):
    """The directory already holds a provisioned fleet (its CA is never overwritten)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} already holds a provisioned fleet")
        self.directory = directory


class NotProvisionedError(ProvisioningError):
    """The directory holds no provisioned fleet."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} holds no provisioned fleet (no fleet.json)")
        self.directory = directory


class DeviceExistsError(ProvisioningError):
    """``add_device`` for a device that is already provisioned."""

    def __init__(self, device: str) -> None:
        super().__init__(f"device {device!r} is already provisioned")
        self.device = device


class UnknownDeviceError(ProvisioningError):
    """``revoke_device`` (or a lookup) for a device that is not provisioned."""

    def __init__(self, device: str) -> None:
        super().__init__(f"device {device!r} is not provisioned")
        self.device = device


@dataclass(frozen=True)
class IdentityFiles:
    """What one identity (device or service) connects and signs with."""

    name: str
    role: Role
    config_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    signing_key: Path | None = None
    signing_public_key: Path | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ProvisionedFleet:
    """Every path provisioning wrote, and the identities it provisioned."""

    directory: Path
    fleet: str
    auth: Auth
    broker_host: str
    broker_port: int
    manifest_file: Path
    mosquitto_conf: Path
    acl_file: Path
    password_file: Path | None
    data_dir: Path
    ca_key: Path
    ca_cert: Path
    crl_file: Path | None
    server_key: Path
    server_cert: Path
    registry_file: Path
    identities: Mapping[str, IdentityFiles]

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, i in self.identities.items() if i.role == "device"))

    def identity(self, name: str) -> IdentityFiles:
        """The files of identity ``name``; :class:`UnknownDeviceError` if there is none."""
        try:
            return self.identities[name]
        except KeyError:
            raise UnknownDeviceError(name) from None

    def endpoint(self, name: str, *, host: str | None = None) -> BrokerEndpoint:
        """The :class:`BrokerEndpoint` identity ``name`` connects with (TLS, its credentials)."""
        ident = self.identity(name)
        return BrokerEndpoint(
            host=host or self.broker_host,
            port=self.broker_port,
            tls=True,
            ca_file=self.ca_cert,
            cert_file=ident.cert_file,
            key_file=ident.key_file,
            username=name if self.auth == "password" else None,
            password=ident.password,
        )


# Layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetLayout:
    """Where each file of a provisioning directory lives (see :mod:`broker.provision`)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "fleet.json"

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def acl(self) -> Path:
        return self.root / "acl"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca/ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca/ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "ca/crl.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server/server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server/server.crt"

    @property
    def registry(self) -> Path:
        return self.root / "keys/registry.json"

    @property
    def lock(self) -> Path:
        return self.root / ".provision.lock"

    def client_cert(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.root / "clients" / f"{name}.key"

    def signing_key(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.ed25519.pem"

    def signing_public(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.ed25519.pub.pem"

    def config(self, name: str, role: Role) -> Path:
        return self.root / "config" / (f"agent-{name}.toml" if role == "device" else f"{name}.toml")


def role_of(manifest: FleetManifest, name: str) -> Role:
    """The role of identity ``name`` in the fleet described by ``manifest``."""
    if name == AGGREGATOR:
        return "aggregator"
    if name == OPERATOR:
        return "operator"
    if name in manifest.ingest:
        return "ingest"
    return "device"


def signs(role: Role) -> bool:
    """Whether identities of ``role`` get a signing key (ingest never publishes)."""
    return role != "ingest"


def current_user() -> str:
    """The name of the effective user running this process."""
    return pwd.getpwuid(os.geteuid()).pw_name


def load_fleet(directory: Path) -> ProvisionedFleet:
    """Describe an existing provisioning (passwords are read from the client configs)."""
    layout = FleetLayout(directory.resolve())
    manifest = load_layout_manifest(layout)
    identities: dict[str, IdentityFiles] = {}
    for name in (AGGREGATOR, *manifest.ingest, OPERATOR, *manifest.devices):
        role = role_of(manifest, name)
        config = layout.config(name, role)
        identities[name] = IdentityFiles(
            name=name,
            role=role,
            config_file=config,
            cert_file=layout.client_cert(name) if manifest.auth == "cert" else None,
            key_file=layout.client_key(name) if manifest.auth == "cert" else None,
            signing_key=layout.signing_key(name) if signs(role) else None,
            signing_public_key=layout.signing_public(name) if signs(role) else None,
            password=_read_password(config) if manifest.auth == "password" else None,
        )
    return ProvisionedFleet(
        directory=layout.root,
        fleet=manifest.fleet,
        auth=manifest.auth,
        broker_host=manifest.broker_host,
        broker_port=manifest.broker_port,
        manifest_file=layout.manifest,
        mosquitto_conf=layout.conf,
        acl_file=layout.acl,
        password_file=layout.passwd if manifest.auth == "password" else None,
        data_dir=layout.data,
        ca_key=layout.ca_key,
        ca_cert=layout.ca_cert,
        crl_file=layout.crl if manifest.auth == "cert" else None,
        server_key=layout.server_key,
        server_cert=layout.server_cert,
        registry_file=layout.registry,
        identities=MappingProxyType(identities),
    )


def load_layout_manifest(layout: FleetLayout) -> FleetManifest:
    """The manifest of ``layout``; :class:`NotProvisionedError` if there is none."""
    if not layout.manifest.exists():
        raise NotProvisionedError(layout.root)
    return load_manifest(layout.manifest)


def _read_password(config: Path) -> str | None:
    try:
        with config.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read client config {config}: {exc}") from exc
    broker = data.get("broker")
    value = broker.get("password") if isinstance(broker, dict) else None
    return value if isinstance(value, str) else None
