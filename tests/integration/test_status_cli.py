"""``fedge status`` and ``fedge agent status`` as an operator runs them (subprocesses).

``fedge status`` against a real Mosquitto: two agent processes, one killed so that its
last will marks it offline, and a retained global model. ``fedge agent status`` on a
store written by a short in-process agent run (no broker involved).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.sources import SimulatedSensorSource
from edge_agent.store import ReadingStore
from fedge.codec import FrameHeader, encode_frame
from fedge.config import AgentConfig, BrokerEndpoint, default_fleet_model
from fedge.data.simulator import SENSOR_NAMES, SiteProfile
from fedge.messages import DeviceStatus, Prediction, decode_message
from fedge.models import build_model, state_tensors
from fedge.topics import Topics
from fedge.transport import InboundMessage, InMemoryBroker
from fedge_app.servers import Mosquitto
from tests.integration.fedge_process import REPO, FedgeProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "statusfleet"
TOPICS = Topics(FLEET)
FAST_AGENT = {
    "FEDGE_AGENT_STATUS_INTERVAL_S": "0.5",
    "FEDGE_AGENT_TELEMETRY_INTERVAL_S": "0.5",
    "FEDGE_AGENT_SAMPLE_INTERVAL_S": "0.05",
}


def fedge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge_app.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
    )


def _global_model(version: int) -> bytes:
    spec = default_fleet_model()
    header = FrameHeader(kind="global", fleet=FLEET, round_id=5, base_version=version - 1,
                         version=version, model=spec)
    return encode_frame(header, state_tensors(build_model(spec)))


def test_fleet_status_shows_online_offline_models_and_predictions(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from broker.mqtt_transport import PahoTransport

    statuses: dict[str, DeviceStatus] = {}
    published: list[Prediction] = []
    lock = threading.Lock()

    def on_message(msg: InboundMessage) -> None:
        if msg.topic.endswith("/prediction"):
            with lock:
                published.append(decode_message(Prediction, msg.payload))
        elif msg.topic.endswith("/status"):
            status = decode_message(DeviceStatus, msg.payload)
            with lock:
                statuses[status.device] = status

    probe = PahoTransport(BrokerEndpoint.from_url(mosquitto.url), client_id="status-probe")
    probe.connect(on_message=on_message)
    probe.subscribe(TOPICS.all_status)
    probe.subscribe(TOPICS.all_predictions)
    probe.publish(TOPICS.global_model, _global_model(3), retain=True).wait(10)

    def agent(device: str) -> FedgeProcess:
        return FedgeProcess(
            device,
            ["agent", "--device", device, "--broker", mosquitto.url, "--fleet", FLEET,
             "--store", str(tmp_path / f"{device}.sqlite"), "--history-units", "3",
             "--log-level", "WARNING"],
            log_dir=tmp_path, env=FAST_AGENT,
        )

    def state(device: str) -> DeviceStatus | None:
        with lock:
            return statuses.get(device)

    try:
        with agent("pump-a") as a, agent("pump-b") as b:
            assert wait_until(
                lambda: all((s := state(d)) is not None and s.state == "online"
                            and s.model_version == 3 for d in ("pump-a", "pump-b")),
                timeout=60,
            ), a.log() + b.log()
            b.kill()  # kill -9: the broker publishes pump-b's will
            assert wait_until(lambda: (s := state("pump-b")) is not None
                              and s.state == "offline", timeout=20), b.log()

            result = fedge("status", "--broker", mosquitto.url, "--fleet", FLEET, "--json",
                           "--timeout", "8")
            assert result.returncode == 0, result.stderr
            data = json.loads(result.stdout)
            table = fedge("status", "--broker", mosquitto.url, "--fleet", FLEET,
                          "--timeout", "1")
            assert a.running, a.log()
    finally:
        probe.close()

    assert data["fleet"] == FLEET
    assert data["global_model"] == {"version": 3, "round_id": 5}
    assert data["rejected"] == {}
    devices = {d["device"]: d for d in data["devices"]}
    assert set(devices) == {"pump-a", "pump-b"}
    online, offline = devices["pump-a"], devices["pump-b"]
    assert (online["state"], online["online"], online["model_version"]) == ("online", True, 3)
    assert online["behind_global"] is False
    assert isinstance(online["buffer_depth"], int) and online["last_seen"] is not None
    prediction = online["prediction"]
    assert prediction is not None and prediction["model_version"] == 3
    assert prediction["rul"] >= 0 and 0 <= prediction["failure_probability"] <= 1
    # The status shows a prediction pump-a really published, alert included (the alert
    # itself is the agent's k-of-n persistence rule, tested in the agent's own tests).
    with lock:
        sent = {(p.ts, p.rul, p.alert) for p in published if p.device == "pump-a"}
    assert (prediction["ts"], prediction["rul"], prediction["alert"]) in sent, (prediction, sent)
    assert isinstance(prediction["alert"], bool)
    assert (offline["state"], offline["online"]) == ("offline", False)
    assert offline["prediction"] is None  # its will carries no model or prediction
    assert table.returncode == 0, table.stderr
    assert "pump-a" in table.stdout and "pump-b" in table.stdout and "offline" in table.stdout


def test_fleet_status_with_no_broker_is_a_clear_error() -> None:
    from tests.support import free_port

    result = fedge("status", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--fleet", FLEET,
                   "--timeout", "1")
    assert result.returncode == 2
    assert "error" in result.stderr and "Traceback" not in result.stderr


def test_agent_status_reads_a_store_without_a_broker(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    operator = broker.transport("operator")
    operator.connect(on_message=lambda m: None)
    # A bad retained global model: refused, and the agent's last error says why.
    operator.publish(TOPICS.global_model, b"not a frame", retain=True)
    store_path = tmp_path / "pump-c.sqlite"
    cfg = AgentConfig(fleet=FLEET, device="pump-c", store_path=store_path,
                      sample_interval_s=1.0, telemetry_interval_s=3600.0,
                      status_interval_s=3600.0, background_training=False)
    clock = [1_700_000_000.0]
    agent = EdgeAgent(cfg, transport=broker.transport("pump-c"),
                      source=SimulatedSensorSource(profile=SiteProfile(), seed=4),
                      store=ReadingStore(store_path, n_features=len(SENSOR_NAMES)),
                      history_units=3, clock=lambda: clock[0])
    agent.start()
    for _ in range(40):  # 40 s of the machine's current life; one telemetry flush, at first
        agent.step()
        clock[0] += 1.0
    agent.stop()
    unsent = agent.store.unsent_count()
    failed = {u: agent.store.unit_data(u).n_cycles for u in agent.store.failed_units()}
    agent.store.close()
    assert len(failed) == 3 and unsent == 39  # the first reading went out, 39 wait

    result = fedge("agent", "status", "--store", str(store_path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["failed_units"] == 3
    assert {u["unit"]: u["failed_after"] for u in data["units"] if u["failed"]} == failed
    (current,) = [u for u in data["units"] if not u["failed"]]
    assert data["current_unit"] == current["unit"] and current["readings"] == 40
    assert data["unsent"] == unsent
    assert data["readings"] == sum(failed.values()) + 40
    assert data["n_features"] == len(SENSOR_NAMES)
    assert "bad magic" in data["last_error"]
    assert data["model_version"] is None

    table = fedge("agent", "status", "--store", str(store_path))
    assert table.returncode == 0, table.stderr
    assert "failed after" in table.stdout and "running (current)" in table.stdout
    assert "bad magic" in table.stdout

    missing = fedge("agent", "status", "--store", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2 and "no agent store" in missing.stderr
