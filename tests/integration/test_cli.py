"""The ``fedge`` command line as a user runs it (subprocesses, real embedded broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FEDGE = [sys.executable, "-m", "fedge_app.cli"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEDGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_top_level_help_lists_every_subcommand() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for sub in ("demo", "agent", "aggregator", "broker", "ingest", "dashboards", "status"):
        assert sub in result.stdout


@pytest.mark.parametrize(
    ("sub", "options"),
    [
        ("demo", ["--devices", "--rounds", "--broker", "--summary-json"]),
        ("agent", ["--device", "--config", "--broker", "--store", "status"]),
        ("agent status", ["--store", "--json"]),
        ("status", ["--broker", "--fleet", "--json", "--timeout"]),
        ("aggregator", ["--config", "--broker", "--rounds", "--min-clients", "--strategy"]),
        ("broker", ["--embedded", "--port", "--config"]),
        ("ingest", ["--broker", "--influx-url", "--influx-bucket", "--sqlite", "--shared-group"]),
        ("dashboards", ["export"]),
    ],
)
def test_subcommand_help_describes_options(sub: str, options: list[str]) -> None:
    result = _run(*sub.split(), "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, f"{sub} --help lacks {option}"


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text('device = "pump-1"\nunknown_key = 3\n')
    result = _run("agent", "--config", str(bad))
    assert result.returncode == 2
    assert "unknown_key" in result.stderr and "Traceback" not in result.stderr


def test_aggregator_with_an_unusable_checkpoint_directory_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # No broker listens on port 1: the directory is checked before any connection.
    result = _run("aggregator", "--broker", "mqtt://127.0.0.1:1",
                  "--checkpoint-dir", str(blocker / "ckpt"), timeout=30)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "is not usable: Not a directory" in message and "Traceback" not in message


def test_dashboards_export_writes_grafana_files(tmp_path: Path) -> None:
    result = _run("dashboards", "export", str(tmp_path / "grafana"))
    assert result.returncode == 0, result.stderr
    written = sorted(
        p.relative_to(tmp_path / "grafana").as_posix()
        for p in (tmp_path / "grafana").rglob("*")
        if p.is_file()
    )
    assert written == [
        "dashboards/fedge-device.json",
        "dashboards/fedge-fleet.json",
        "dashboards/fedge-training.json",
        "provisioning/dashboards/fedge.yaml",
        "provisioning/datasources/fedge.yaml",
    ]
    fleet = json.loads((tmp_path / "grafana/dashboards/fedge-fleet.json").read_text())
    assert fleet["panels"], "fleet dashboard has no panels"


def test_bad_broker_url_is_a_clear_error() -> None:
    result = _run("aggregator", "--broker", "http://nowhere:1883")
    assert result.returncode == 2
    assert "mqtt://" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_demo_learns_and_writes_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = _run(
        "demo",
        "--devices",
        "3",
        "--rounds",
        "3",
        "--summary-json",
        str(summary),
        "--workdir",
        str(tmp_path / "work"),
        timeout=200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(summary.read_text())
    assert data["rounds"] == 3
    assert data["wall_s"] > 0
    # The federated model must clearly beat the untrained one on held-out units.
    assert data["val_error_final"] < 0.6 * data["val_error_round0"]
    assert "validation RMSE" in result.stdout
    # Telemetry went through the ingest service into the SQLite file, and the report
    # was rendered from it.
    assert data["telemetry"]["points_written"] > 0
    assert data["telemetry"]["rejected"] == 0
    report = Path(data["report_path"]).read_text()
    assert report.count("<svg") >= 2 and "validation RMSE" in report


def test_broker_provision_add_and_revoke_write_loadable_configs(tmp_path: Path) -> None:
    from fedge.config import AgentConfig, AggregatorConfig, IngestConfig, load_config

    fleet_dir = tmp_path / "fleet"
    result = _run("broker", "provision", str(fleet_dir), "--fleet", "plant", "--devices", "a,b")
    assert result.returncode == 0, result.stderr
    assert "fedge broker --config" in result.stdout
    assert _run("broker", "add-device", str(fleet_dir), "c").returncode == 0
    agent = load_config(AgentConfig, fleet_dir / "config" / "agent-c.toml")
    assert agent.device == "c" and agent.broker.tls and agent.broker.cert_file is not None
    assert agent.security.aggregator_public_key is not None
    aggregator = load_config(AggregatorConfig, fleet_dir / "config" / "aggregator.toml")
    assert aggregator.security.key_registry is not None
    assert load_config(IngestConfig, fleet_dir / "config" / "ingest.toml").broker.port == 8883
    assert _run("broker", "revoke-device", str(fleet_dir), "a").returncode == 0
    assert not (fleet_dir / "config" / "agent-a.toml").exists()
    again = _run("broker", "revoke-device", str(fleet_dir), "a")
    assert again.returncode == 2 and "not provisioned" in again.stderr
    conf = (fleet_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
