"""The ``fedge`` command line as a user runs it (subprocesses, real embedded broker)."""

from __future__ import annotations

import json
import sqlite3
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
    # The maintenance story: machines failed during the demo, the technician recorded it,
    # and each failure's alerts were scored.
    failed = [life for life in data["lives"] if life["end_kind"] == "failure"]
    assert data["failures"] == len(failed) >= 1
    assert data["failures_alerted"] == sum(life["alerted"] for life in failed)
    leads = [life["lead"] for life in failed if life["lead"] is not None]
    assert (data["median_lead"] is None) == (not leads)
    assert data["median_lead"] is None or min(leads) <= data["median_lead"] <= max(leads) <= 125
    assert data["false_alarms"] == sum(life["false_alarms"] for life in data["lives"])
    assert "failures per device" in result.stdout
    assert f"failures: {data['failures']}, alerted >= 20 cycles ahead" in result.stdout
    assert "Failures and the alerts before them" in report and "health" in report
    with sqlite3.connect(data["telemetry_path"]) as db:
        kinds = dict(db.execute("SELECT kind, COUNT(*) FROM event GROUP BY kind").fetchall())
    assert kinds.get("failure", 0) >= 1 and kinds.get("repair", 0) >= 1  # via MQTT and ingest


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


def _history_csv(path: Path, *, bad_lines: bool) -> None:
    """200 hourly rows of three sensors; two of them drift away from row 150 on."""
    import numpy as np

    rng = np.random.default_rng(5)
    rows = ["time,temp,vib,load"]
    for i in range(200):
        drift = max(0, i - 150) * 0.5
        temp, vib, load = rng.normal([60.0, 2.0, 0.5], [0.5, 0.05, 0.01])
        rows.append(
            f"{1_700_000_000 + 3600 * i},{temp + drift:.3f},{vib + drift / 20:.4f},{load:.4f}"
        )
    if bad_lines:
        rows.insert(10, "not-a-time,1,2,3")  # line 11
        rows.insert(20, f"{1_700_000_000 + 3600 * 18},61.0")  # line 21: too few fields
    path.write_text("\n".join(rows) + "\n")


def test_backtest_prints_the_summary_and_the_bad_lines(tmp_path: Path) -> None:
    csv = tmp_path / "pump.csv"
    _history_csv(csv, bad_lines=True)
    result = _run("backtest", str(csv), "--time-column", "time")
    assert result.returncode == 0, result.stderr
    assert "rows: 200 scored, 2 skipped" in result.stdout
    assert "baseline: first 30 rows" in result.stdout
    assert "alerts raised: 1" in result.stdout
    # The drift starts at row 150 (2023-11-21T04:13:20Z); the alert follows within a day.
    first = next(line for line in result.stdout.splitlines() if line.startswith("first alert:"))
    assert first.startswith("first alert: 2023-11-21T")
    assert "line 11: bad time" in result.stderr and "line 21: 2 fields, expected 4" in result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "pump.backtest.csv").is_file() and (tmp_path / "pump.backtest.png").is_file()


def test_backtest_of_an_unusable_file_is_a_clear_error(tmp_path: Path) -> None:
    csv = tmp_path / "short.csv"
    csv.write_text("time,temp\n1700000000,1.0\nsoon,2.0\n")
    result = _run("backtest", str(csv))
    assert result.returncode == 2
    assert "baseline of 30 rows needs a longer file (1 good rows)" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _run("backtest", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_agent_event_writes_into_the_agents_store(tmp_path: Path) -> None:
    from edge_agent.maintenance_store import MaintenanceStore
    from edge_agent.store import ReadingStore

    path = tmp_path / "agent.sqlite"
    reading_store = ReadingStore(path, n_features=2)
    MaintenanceStore(reading_store.db, path=str(path)).set_identity("plant", "pump-7")
    reading_store.close()
    result = _run(
        "agent", "event", "--kind", "failure", "--at", "2024-05-01T10:00:00", "--note", "seized",
        "--store", str(path), "--device", "pump-7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded failure of plant/pump-7 at 2024-05-01T10:00:00+00:00" in result.stdout
    store = MaintenanceStore.open(path)
    (record,) = store.all_events()
    store.close()
    assert (record.event.kind, record.event.ts, record.event.note) == (
        "failure",
        1714557600.0,
        "seized",
    )
    assert record.event.source == "cli" and not record.sent and not record.applied
    for args, message in [
        (["--kind", "exploded"], "--kind must be failure, repair or replace"),
        (["--kind", "repair", "--device", "pump-8"], "belongs to device 'pump-7', not 'pump-8'"),
        (["--kind", "repair", "--at", "1990-01-01"], "--at: timestamp '1990-01-01' is not between"),
        (["--kind", "repair", "--note", "x" * 501], "invalid event: note: String should have"),
        (["--kind", "repair", "--at", "yesterday"], "--at: not epoch seconds or ISO 8601"),
    ]:
        bad = _run("agent", "event", *args, "--store", str(path))
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    missing = _run("agent", "event", "--kind", "repair", "--store", str(tmp_path / "none.sqlite"))
    assert missing.returncode == 2 and "no agent store at" in missing.stderr
