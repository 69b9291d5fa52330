"""The systemd units in deploy/ parse and are hardened as documented."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ("agent", "aggregator", "ingest")

HARDENING = {
    "Restart": "on-failure",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ReadWritePaths": "/var/lib/fedge",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
    "User": "fedge",
    "UMask": "0027",
}


def parse_unit(path: Path) -> configparser.ConfigParser:
    """A unit file as INI (keys case-sensitive, no interpolation); duplicate keys refused."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), source=str(path))
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_unit_parses_with_the_three_sections(name: str) -> None:
    unit = parse_unit(DEPLOY / f"fedge-{name}.service")
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Service"]["ExecStart"].startswith(f"/opt/fedge/.venv/bin/fedge {name} ")


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_hardened(name: str) -> None:
    service = parse_unit(DEPLOY / f"fedge-{name}.service")["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    # torch generates kernels at run time: W^X memory would break it.
    assert "MemoryDenyWriteExecute" not in service
    families = set(service["RestrictAddressFamilies"].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_only_the_agent_may_open_devices_and_it_yields_the_cpu() -> None:
    agent = parse_unit(DEPLOY / "fedge-agent.service")["Service"]
    assert "PrivateDevices" not in agent  # a Modbus RTU source reads a serial port
    assert int(agent["Nice"]) > 0
    for name in ("aggregator", "ingest"):
        assert parse_unit(DEPLOY / f"fedge-{name}.service")["Service"]["PrivateDevices"] == "yes"
