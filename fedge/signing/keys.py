"""Ed25519 key material for signed frames and messages (pure: takes bytes, never files).

Provisioning writes one PEM key pair per device and one for the aggregator, plus a
registry of public keys (``broker.signing_keys`` writes it)::

    {"version": 1, "fleet": "plant-7", "algorithm": "ed25519",
     "aggregator": "<base64 raw 32-byte key>", "operator": "<base64>",
     "devices": {"<device id>": "<base64>"}}

``version``, ``fleet``, ``algorithm`` and ``operator`` may be left out (test
registries); when present they must be 1, the receiver's fleet and ``ed25519``.

The app layer reads those files and hands the bytes to the constructors here; every
problem with key material is a :class:`~fedge.errors.ConfigError`. The crypto is the
``cryptography`` library's; this module only wraps it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedge.errors import ConfigError, RejectReason, SignatureError
from fedge.messages import Identifier

__all__ = [
    "AGGREGATOR_SIGNER",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "KeyRegistry",
    "SigningKey",
    "VerifyKey",
]

AGGREGATOR_SIGNER = "aggregator"
"""The signer id of the aggregator; reserved, so no device may be called that."""
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_SIGNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_signer(signer: str) -> str:
    if not isinstance(signer, str) or _SIGNER.fullmatch(signer) is None:
        raise ConfigError(f"invalid signer id {signer!r}: use 1-64 characters from [A-Za-z0-9_.-]")
    return signer


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """An Ed25519 public key."""

    key: Ed25519PublicKey = field(repr=False)

    @classmethod
    def from_raw(cls, raw: bytes) -> VerifyKey:
        """The 32 raw public-key bytes."""
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ConfigError(
                f"Ed25519 public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}"
            )
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"invalid Ed25519 public key: {exc}") from exc

    @classmethod
    def from_base64(cls, text: str) -> VerifyKey:
        """Standard base64 (with padding) of the 32 raw public-key bytes."""
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise ConfigError(f"public key is not valid base64: {exc}") from exc
        return cls.from_raw(raw)

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyKey:
        """A PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) block holding an Ed25519 key."""
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"cannot load PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"PEM public key is {type(key).__name__}, expected Ed25519")
        return cls(key)

    @property
    def raw(self) -> bytes:
        """The 32 raw public-key bytes."""
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def base64(self) -> str:
        """The registry's encoding of this key."""
        return base64.b64encode(self.raw).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise SignatureError(BAD_SIGNATURE) unless ``signature`` is valid for ``data``."""
        try:
            self.key.verify(signature, data)
        except InvalidSignature as exc:
            raise SignatureError(RejectReason.BAD_SIGNATURE, "signature does not verify") from exc


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key and the signer id it signs as (a device id or ``aggregator``)."""

    signer: str
    key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _check_signer(self.signer)

    @classmethod
    def from_pem(cls, data: bytes, *, signer: str, password: bytes | None = None) -> SigningKey:
        """A PEM ``PRIVATE KEY`` (PKCS#8) block holding an Ed25519 key."""
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # TypeError: encrypted key without password, or a password for a plain key.
            raise ConfigError(f"cannot load PEM private key for {signer!r}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"PEM private key is {type(key).__name__}, expected Ed25519")
        return cls(signer, key)

    @classmethod
    def from_seed(cls, seed: bytes, *, signer: str) -> SigningKey:
        """The 32-byte Ed25519 seed (RFC 8032 private key); used for fixed test keys."""
        if len(seed) != 32:
            raise ConfigError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        return cls(signer, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return VerifyKey(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic, RFC 8032)."""
        return self.key.sign(data)


class _RegistryFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] | None = None
    fleet: Identifier | None = None
    algorithm: Literal["ed25519"] | None = None
    aggregator: str = Field(max_length=128)
    operator: Annotated[str, Field(max_length=128)] | None = None
    devices: dict[Identifier, Annotated[str, Field(max_length=128)]] = Field(
        default_factory=dict, max_length=100_000
    )


@dataclass(frozen=True, slots=True)
class KeyRegistry:
    """The public keys a receiver trusts: the aggregator's and one per known device."""

    aggregator: VerifyKey
    devices: Mapping[str, VerifyKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if AGGREGATOR_SIGNER in self.devices:
            raise ConfigError(f"device id {AGGREGATOR_SIGNER!r} is reserved for the aggregator")
        for device in self.devices:
            _check_signer(device)
        # Read-only view so a shared registry cannot be changed behind a verifier's back.
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))

    @classmethod
    def from_json(
        cls, data: bytes, *, pinned_aggregator: str | None = None, fleet: str | None = None
    ) -> KeyRegistry:
        """Parse ``keys/registry.json``; ``pinned_aggregator`` (base64) must match if given,
        and so must ``fleet`` if both it and the file name one.

        Pinning lets an agent refuse a registry file whose aggregator key was swapped;
        the fleet check, a service started with another fleet's registry.
        """
        try:
            parsed = _RegistryFile.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ConfigError(f"invalid key registry: {where}: {first['msg']}") from exc
        if fleet is not None and parsed.fleet is not None and parsed.fleet != fleet:
            raise ConfigError(f"key registry is fleet {parsed.fleet!r}, not {fleet!r}")
        aggregator = VerifyKey.from_base64(parsed.aggregator)
        if parsed.operator is not None:
            VerifyKey.from_base64(parsed.operator)  # ConfigError if not a key
        if pinned_aggregator is not None and (
            VerifyKey.from_base64(pinned_aggregator).raw != aggregator.raw
        ):
            raise ConfigError("key registry's aggregator key differs from the pinned key")
        devices = {device: VerifyKey.from_base64(text) for device, text in parsed.devices.items()}
        return cls(aggregator, devices)

    def knows(self, device: str) -> bool:
        """True if ``device`` has a registered key."""
        return device in self.devices

    def for_device(self, device: str) -> VerifyKey:
        """The device's key; SignatureError(UNKNOWN_DEVICE) if it has none."""
        try:
            return self.devices[device]
        except KeyError:
            raise SignatureError(
                RejectReason.UNKNOWN_DEVICE, f"no key registered for device {device!r}"
            ) from None

    def for_signer(self, signer: str) -> VerifyKey:
        """The key of ``signer``: the aggregator's for ``aggregator``, else the device's."""
        return self.aggregator if signer == AGGREGATOR_SIGNER else self.for_device(signer)

    def to_json(self) -> bytes:
        """The registry file format (sorted devices), for provisioning and tests."""
        return _RegistryFile(
            aggregator=self.aggregator.base64,
            devices={d: self.devices[d].base64 for d in sorted(self.devices)},
        ).model_dump_json().encode()
