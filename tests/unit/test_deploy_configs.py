"""The example configs shipped in deploy/ must stay valid as the config models evolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.config import AgentConfig, AggregatorConfig, IngestConfig, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize(
    ("cls", "name"),
    [(AgentConfig, "agent"), (AggregatorConfig, "aggregator"), (IngestConfig, "ingest")],
)
def test_example_config_loads(cls: type, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FEDGE_AGENT_FLEET", "FEDGE_AGGREGATOR_FLEET", "FEDGE_INGEST_FLEET"):
        monkeypatch.delenv(var, raising=False)
    config = load_config(cls, DEPLOY / f"{name}.toml")
    assert config.fleet == "plant-7"
    assert config.broker.host  # every service names its broker


def test_units_run_the_console_script_with_their_config() -> None:
    for name in ("agent", "aggregator", "ingest"):
        unit = (DEPLOY / f"fedge-{name}.service").read_text()
        assert f"/opt/fedge/.venv/bin/fedge {name} --config /etc/fedge/{name}.toml" in unit
