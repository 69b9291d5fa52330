"""SIGTERM stops a `fedge agent` process within 2 s, even in the middle of local training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.codec import FrameHeader, encode_frame
from fedge.config import BrokerEndpoint, default_fleet_model
from fedge.messages import (
    DeviceStatus,
    RoundAnnouncement,
    TrainingConfig,
    decode_message,
    encode_message,
)
from fedge.models import build_model, state_tensors
from fedge.topics import Topics
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "demo"


def test_sigterm_during_training_exits_within_two_seconds(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    endpoint = BrokerEndpoint.from_url(mosquitto.url)
    topics = Topics(FLEET)
    statuses: list[InboundMessage] = []
    server = PahoTransport(endpoint, client_id="sigterm-server")
    server.connect(on_message=statuses.append)
    server.subscribe(topics.all_status)
    server.subscribe(topics.all_updates)
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge_app.cli", "agent", "--device", "pump-1", "--broker",
         mosquitto.url, "--store", str(tmp_path / "agent.sqlite"), "--history-units", "12"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        def online() -> bool:
            return any(
                decode_message(DeviceStatus, m.payload).state == "online"
                for m in statuses if m.payload
            )

        assert wait_until(online, timeout=60)
        spec = default_fleet_model()
        header = FrameHeader(kind="global", fleet=FLEET, round_id=1, base_version=1, version=1,
                             model=spec)
        frame = encode_frame(header, state_tensors(build_model(spec)))
        server.publish(topics.global_model, frame, retain=True).wait(5)
        now = time.time()
        # A long round (clamped by the agent to its own limit of 20 epochs, batch >= 8).
        ann = RoundAnnouncement(
            fleet=FLEET, round_id=2, task="train", base_version=1, issued_at=now,
            deadline=now + 600, min_clients=1,
            training=TrainingConfig(epochs=100, batch_size=8),
        )
        server.publish(topics.round_current, encode_message(ann), retain=True).wait(5)
        time.sleep(4.0)  # the agent is training now (a 20-epoch round takes far longer)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        server.close()
    output = (tmp_path / "agent.log").read_text()
    assert elapsed < 2.0, output[-2000:]
    assert proc.returncode == 0, output[-2000:]
    assert "Traceback" not in output
    # It was training, not idle: it ran the global model, did not decline the round, and
    # the interrupted round's update was never sent.
    last = decode_message(DeviceStatus, [m for m in statuses if "/status" in m.topic][-1].payload)
    assert last.state == "offline" and last.model_version == 1
    assert "declines round" not in output
    assert not [m for m in statuses if m.topic == topics.update(2, "pump-1")]
    # The store is consistent after the stop: it opens and holds the history.
    from edge_agent.store_status import read_store_status

    assert read_store_status(tmp_path / "agent.sqlite") is not None
