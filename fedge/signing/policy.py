"""The security configuration and the one object receivers call: :class:`Authenticator`.

Mode ``off`` is the demo: nothing is verified, envelopes are unwrapped, frames pass.
Mode ``verify`` refuses anything unsigned, forged, from an unknown device or replayed,
whatever the broker lets through. There is deliberately no "verify if signed" mode:
an attacker would simply send unsigned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedge.codec import DEFAULT_MAX_FRAME_BYTES
from fedge.errors import ConfigError
from fedge.signing.envelope import MAX_ENVELOPE_BYTES, unwrap_message, verify_message
from fedge.signing.frames import verify_frame
from fedge.signing.keys import KeyRegistry, SigningKey, VerifyKey
from fedge.signing.replay import ReplayGuard

__all__ = ["Authenticator", "SecurityMode", "SecurityPolicy"]

SecurityMode = Literal["off", "verify"]


class SecurityPolicy(BaseModel):
    """Signing configuration of one service (agent, aggregator or ingest).

    The app layer reads the files named here and passes their bytes to
    :meth:`registry` / :meth:`signing_key`; the core never opens files.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: SecurityMode = "off"
    private_key_path: Path | None = None
    """This service's PEM private key (a device's, or the aggregator's)."""
    registry_path: Path | None = None
    """``keys/registry.json``: the aggregator's and every device's public key."""
    aggregator_key: Annotated[str, Field(max_length=128)] | None = None
    """Pinned aggregator public key (base64 raw 32 bytes); the registry must agree."""
    max_age_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 300.0
    max_future_s: Annotated[float, Field(ge=0.0, le=3_600.0)] = 30.0
    replay_capacity: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.aggregator_key is not None:
            VerifyKey.from_base64(self.aggregator_key)  # ConfigError if not a key
        if self.mode == "verify" and self.registry_path is None and self.aggregator_key is None:
            raise ValueError("mode 'verify' needs registry_path or aggregator_key")
        return self

    def replay_guard(self) -> ReplayGuard:
        """A fresh guard with this policy's window and capacity."""
        return ReplayGuard(
            max_age_s=self.max_age_s,
            max_future_s=self.max_future_s,
            capacity=self.replay_capacity,
        )

    def registry(
        self, registry_json: bytes | None, *, fleet: str | None = None
    ) -> KeyRegistry | None:
        """The trusted keys: the registry file's bytes, checked against the pinned key
        (and against ``fleet``, if the file names one).

        Without a registry file, an agent can still verify the aggregator from the
        pinned key alone (it needs no device keys). None in mode ``off`` with neither.
        """
        if registry_json is not None:
            return KeyRegistry.from_json(
                registry_json, pinned_aggregator=self.aggregator_key, fleet=fleet
            )
        if self.aggregator_key is not None:
            return KeyRegistry(VerifyKey.from_base64(self.aggregator_key))
        if self.mode == "verify":
            raise ConfigError("mode 'verify' needs the key registry or a pinned aggregator key")
        return None

    def signing_key(self, pem: bytes | None, *, signer: str) -> SigningKey | None:
        """This service's key from its PEM bytes; None in mode ``off`` without one."""
        if pem is not None:
            return SigningKey.from_pem(pem, signer=signer)
        if self.mode == "verify":
            raise ConfigError(f"mode 'verify' needs a private key for {signer!r}")
        return None

    def authenticator(
        self, registry_json: bytes | None, *, fleet: str | None = None
    ) -> Authenticator:
        """The receiving side of this policy."""
        return Authenticator(self.mode, self.registry(registry_json, fleet=fleet))


@dataclass(frozen=True, slots=True)
class Authenticator:
    """What a receiver calls on every frame and message before decoding it.

    The expected signer comes from the topic (``expected_signer``); every failure is a
    :class:`~fedge.errors.SignatureError` (a ProtocolError) whose ``reason`` is data.
    """

    mode: SecurityMode
    registry: KeyRegistry | None = None

    def __post_init__(self) -> None:
        if self.mode == "verify" and self.registry is None:
            raise ConfigError("an Authenticator in mode 'verify' needs a key registry")

    def open_message(
        self,
        data: bytes,
        topic: str,
        *,
        now: float,
        guard: ReplayGuard | None = None,
        max_bytes: int = MAX_ENVELOPE_BYTES,
    ) -> bytes:
        """The message bytes to hand to ``decode_message``, once authenticated.

        ``guard`` adds nonce and freshness checks (use one for non-retained topics;
        see the package docstring for which). In mode ``off`` nothing is checked.
        """
        if self.mode == "off":
            return unwrap_message(data, max_bytes=max_bytes)
        if self.registry is None:  # pragma: no cover - __post_init__ forbids it
            raise ConfigError("verify mode without a registry")
        return verify_message(
            data, topic, self.registry, now=now, guard=guard, max_bytes=max_bytes
        ).payload

    def open_stamped(
        self,
        data: bytes,
        topic: str,
        *,
        now: float,
        guard: ReplayGuard | None = None,
        max_bytes: int = MAX_ENVELOPE_BYTES,
    ) -> tuple[bytes, float | None]:
        """:meth:`open_message`, and the signer's verified timestamp (None in mode off).

        For retained topics without a guard (device status), where the receiver keeps
        the newest stamp per signer itself (:class:`~fedge.signing.StatusStamps`).
        """
        if self.mode == "off":
            return unwrap_message(data, max_bytes=max_bytes), None
        if self.registry is None:  # pragma: no cover - __post_init__ forbids it
            raise ConfigError("verify mode without a registry")
        signed = verify_message(
            data, topic, self.registry, now=now, guard=guard, max_bytes=max_bytes
        )
        return signed.payload, signed.ts

    def check_frame(
        self, frame: bytes, topic: str, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        """Raise SignatureError unless ``frame`` may be decoded (always passes in mode off)."""
        if self.mode == "off":
            return
        if self.registry is None:  # pragma: no cover - __post_init__ forbids it
            raise ConfigError("verify mode without a registry")
        verify_frame(frame, topic, self.registry, max_bytes=max_bytes)
