"""Ed25519 message-signing keys and the fleet's public key registry.

Transport security (TLS, ACLs) protects the broker; signatures protect the messages
even from a misconfigured broker. Provisioning makes one Ed25519 key pair per
device, for the aggregator and for the operator tool, and writes
``keys/registry.json`` so every party can pin the others' public keys::

    {
      "version": 1,
      "fleet": "plant-7",
      "algorithm": "ed25519",
      "aggregator": "<base64 of the raw 32-byte public key>",
      "operator": "<base64>",
      "devices": {"pump-01": "<base64>", ...}
    }
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.pki import write_bytes_atomic
from fedge.errors import ConfigError, TopicError
from fedge.topics import validate_segment

__all__ = [
    "KeyRegistry",
    "load_registry",
    "load_signing_key",
    "public_key_b64",
    "write_registry",
    "write_signing_key",
]

REGISTRY_VERSION = 1


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 (standard alphabet, padded) of the raw 32-byte Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _decode_public(text: object, *, what: str) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{what}: public key must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{what}: not a base64 raw 32-byte Ed25519 public key") from exc
    return text


def write_signing_key(private_path: Path, public_path: Path, key: Ed25519PrivateKey) -> None:
    """The private key as PKCS#8 PEM (0600) and the public key as SPKI PEM (0644)."""
    write_bytes_atomic(
        private_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_bytes_atomic(
        public_path,
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        mode=0o644,
    )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read a private key written by :func:`write_signing_key`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class KeyRegistry:
    """The pinned public keys of one fleet (base64 raw Ed25519 keys)."""

    fleet: str
    aggregator: str
    operator: str
    devices: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_segment(self.fleet, what="fleet")
        _decode_public(self.aggregator, what="aggregator")
        _decode_public(self.operator, what="operator")
        for device, key in self.devices.items():
            validate_segment(device, what="device")
            _decode_public(key, what=f"device {device!r}")
        # Frozen all the way down: a registry is a snapshot, replaced, never edited.
        object.__setattr__(self, "devices", MappingProxyType(dict(sorted(self.devices.items()))))

    def with_device(self, device: str, key: str) -> KeyRegistry:
        """A copy with ``device`` added or its key replaced."""
        devices = {**self.devices, device: key}
        return KeyRegistry(self.fleet, self.aggregator, self.operator, devices)

    def without_device(self, device: str) -> KeyRegistry:
        """A copy without ``device``."""
        rest = {name: key for name, key in self.devices.items() if name != device}
        return KeyRegistry(self.fleet, self.aggregator, self.operator, rest)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REGISTRY_VERSION,
            "fleet": self.fleet,
            "algorithm": "ed25519",
            "aggregator": self.aggregator,
            "operator": self.operator,
            "devices": dict(self.devices),
        }

    @classmethod
    def from_json(cls, data: object) -> KeyRegistry:
        """Validate and build a registry from parsed JSON; errors are :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError("key registry: expected a JSON object")
        if data.get("version") != REGISTRY_VERSION or data.get("algorithm") != "ed25519":
            raise ConfigError(
                f"key registry: unsupported version/algorithm "
                f"{data.get('version')!r}/{data.get('algorithm')!r}"
            )
        devices = data.get("devices")
        if not isinstance(devices, dict):
            raise ConfigError("key registry: 'devices' must be an object")
        fleet = data.get("fleet")
        if not isinstance(fleet, str):
            raise ConfigError("key registry: 'fleet' must be a string")
        try:
            return cls(
                fleet=fleet,
                aggregator=_decode_public(data.get("aggregator"), what="aggregator"),
                operator=_decode_public(data.get("operator"), what="operator"),
                devices=devices,
            )
        except TopicError as exc:
            raise ConfigError(f"key registry: {exc}") from exc


def write_registry(path: Path, registry: KeyRegistry) -> None:
    """Write ``registry`` as indented JSON (0644: public keys only)."""
    text = json.dumps(registry.to_json(), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode=0o644)


def load_registry(path: Path) -> KeyRegistry:
    """Read and validate ``keys/registry.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read key registry {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"key registry {path} is not valid JSON: {exc}") from exc
    return KeyRegistry.from_json(data)
