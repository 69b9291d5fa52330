"""deploy/install-agent.sh installs a working agent into a prefix, without root or systemd.

The script runs for real into a temporary directory (``--prefix DIR --no-systemd``):
a virtualenv with the base install from this repository (pip with the machine's
configured index; torch pinned by constraints.txt). Then: no server or demo package
was installed, the installed ``fedge agent`` runs against a real Mosquitto (retained
status online, offline after SIGTERM, store under DIR/var), and ``systemd-analyze
verify`` accepts the units pointed at the installed console script (where the binary
exists). The install takes a minute or two; it is skipped only if pip cannot reach
any package index.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.messages import DeviceStatus, decode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVER_OR_DEMO = {"influxdb-client", "influxdb_client", "dp-accounting", "dp_accounting",
                  "amqtt", "matplotlib", "flwr"}
NO_INDEX = ("No matching distribution found", "Could not find a version",
            "NewConnectionError", "Temporary failure in name resolution")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("install") / "fedge"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDGE_", "VIRTUAL_ENV"))}
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "install-agent.sh"), "--prefix", str(prefix),
         "--no-systemd", "--python", _base_python()],
        capture_output=True, text=True, timeout=540, env=env, check=False,
    )
    if done.returncode != 0 and any(s in done.stderr for s in NO_INDEX):
        pytest.skip(f"pip cannot reach a package index: {done.stderr[-500:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{prefix}/.venv/bin/fedge agent --config {prefix}/etc/agent.toml" in done.stdout
    return prefix


def _base_python() -> str:
    """The interpreter the test venv was made from (a venv's python points at it)."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}."
               f"{sys.version_info[1]}")


def _distributions(prefix: Path) -> set[str]:
    out = subprocess.run(
        [str(prefix / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return {d["name"].lower() for d in json.loads(out)}


def test_the_base_install_has_no_server_or_demo_package(installed: Path) -> None:
    dists = _distributions(installed)
    assert {"fedge", "torch", "paho-mqtt", "numpy", "pydantic"} <= dists
    assert dists & SERVER_OR_DEMO == set()
    assert not {"pymodbus", "asyncua"} & dists  # the [agent] extra was not asked for
    config = (installed / "etc" / "agent.toml").read_text()
    assert f'store_path = "{installed}/var/agent.sqlite"' in config
    assert (installed / "etc" / "agent.env").stat().st_mode & 0o777 == 0o640


def test_the_installed_agent_runs_against_a_real_broker(installed: Path, tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "mosquitto") as broker:
        seen: list[InboundMessage] = []
        probe = PahoTransport(BrokerEndpoint.from_url(broker.url), client_id="probe")
        probe.connect(on_message=seen.append)
        topic = Topics("plant-7").status("pump-03")
        probe.subscribe(topic)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGE_")}
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(
                [str(installed / ".venv" / "bin" / "fedge"), "agent", "--config",
                 str(installed / "etc" / "agent.toml"), "--broker", broker.url,
                 "--history-units", "1"],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            def states() -> list[str]:
                return [decode_message(DeviceStatus, m.payload).state for m in seen]

            assert wait_until(lambda: "online" in states(), timeout=60), log.read_text()
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0, log.read_text()
            assert wait_until(lambda: states()[-1] == "offline", timeout=10)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
            probe.close()
    assert (installed / "var" / "agent.sqlite").exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("name", ["agent", "aggregator", "ingest"])
def test_systemd_analyze_verifies_the_units(installed: Path, tmp_path: Path, name: str) -> None:
    text = (REPO / "deploy" / f"fedge-{name}.service").read_text()
    unit = tmp_path / f"fedge-{name}.service"
    # As install-agent.sh writes it for this prefix: the binary must exist to verify.
    unit.write_text(text.replace("/opt/fedge/", f"{installed}/"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # verify only warns about bad values: any output is a defect.
    assert done.stderr.strip() == "" and done.stdout.strip() == ""
