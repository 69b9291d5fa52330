"""``fleet.json``: what a provisioning directory holds, the source of truth for regenerating it.

The ACL, mosquitto.conf and CRL are rendered from this manifest after every change,
so they can never drift from the list of provisioned devices. It holds no secret.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.pki import write_bytes_atomic
from fedge.errors import ConfigError
from fedge.messages import Identifier

__all__ = ["FleetManifest", "Revocation", "load_manifest", "write_manifest"]

MANIFEST_VERSION: Literal[1] = 1


class Revocation(BaseModel):
    """One revoked client certificate (kept forever: the CRL lists every one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identity: Identifier
    serial: Annotated[int, Field(ge=1)]
    revoked_at: dt.datetime


class FleetManifest(BaseModel):
    """The provisioning parameters and the current identities of one fleet broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = MANIFEST_VERSION
    fleet: Identifier
    auth: Literal["cert", "password"]
    broker_host: str
    broker_port: Annotated[int, Field(ge=1, le=65535)]
    bind_address: str | None
    broker_user: str
    valid_days: Annotated[int, Field(ge=1)]
    max_message_bytes: Annotated[int, Field(ge=1024)]
    ingest: tuple[Identifier, ...]
    devices: tuple[Identifier, ...]
    created_at: dt.datetime
    # Serial number of each identity's current client certificate (auth="cert").
    serials: dict[Identifier, int] = Field(default_factory=dict)
    revoked: tuple[Revocation, ...] = ()
    crl_number: Annotated[int, Field(ge=1)] = 1


def write_manifest(path: Path, manifest: FleetManifest) -> None:
    """Write ``manifest`` as indented JSON (0644)."""
    text = manifest.model_dump_json(indent=2) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode=0o644)


def load_manifest(path: Path) -> FleetManifest:
    """Read and validate ``fleet.json``; every failure is a :class:`ConfigError`."""
    try:
        return FleetManifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid fleet manifest: {exc}") from exc
