"""An idle, connected agent sleeps on its inbox: few wake-ups, yet prompt to a message
and to a stop request (edge_agent.agent: _IDLE_WAIT_S and the stop watcher)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import edge_agent.agent as agent_module
from broker.mqtt_transport import PahoTransport
from edge_agent.sources import SimulatedSensorSource
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.data.simulator import SiteProfile
from fedge.lives import MaintenanceEvent
from fedge.messages import encode_message
from fedge.topics import Topics
from fedge_app.servers import Mosquitto
from fedge_app.wiring import build_agent
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET, DEVICE = "idle", "pump-1"


def test_an_idle_agent_wakes_rarely_but_answers_a_message_and_a_stop_at_once(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = BrokerEndpoint(host="127.0.0.1", port=mosquitto.port)
    cfg = AgentConfig(
        fleet=FLEET, device=DEVICE, broker=endpoint, store_path=tmp_path / "agent.sqlite",
        sample_interval_s=0.0, telemetry_interval_s=60.0, status_interval_s=600.0,
    )  # fmt: skip
    agent = build_agent(
        cfg,
        transport=PahoTransport(endpoint, client_id=f"{FLEET}-{DEVICE}"),
        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
    )
    steps: list[float] = []
    step = agent.step

    def counted_step(*, timeout: float = 0.0) -> None:
        steps.append(time.monotonic())
        step(timeout=timeout)

    agent.step = counted_step  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    operator = PahoTransport(endpoint, client_id=f"{FLEET}-operator")
    thread.start()
    try:
        assert wait_until(lambda: len(steps) >= 2, timeout=10)  # connected, stepping
        # Nothing due for a minute: the thread sleeps on its inbox (a wake-up every 50 ms
        # would be 40 steps in these 2 s).
        time.sleep(0.5)
        before = len(steps)
        time.sleep(2.0)
        assert len(steps) - before <= 3, len(steps) - before  # one a second, +1 at the edges
        # A message and a stop request still wake it at once: with idle waits of 30 s (so
        # a wait that ran its course would show), each is handled within seconds.
        monkeypatch.setattr(agent_module, "_IDLE_WAIT_S", 30.0)
        time.sleep(1.5)  # the 1 s wait in progress ends; the next one is 30 s
        repair = MaintenanceEvent.new(fleet=FLEET, device=DEVICE, kind="repair", ts=time.time(),
                                      source="operator", note="idle check")
        operator.connect(on_message=lambda m: None)
        sent = time.monotonic()
        assert operator.publish(Topics(FLEET).events(DEVICE), encode_message(repair)).wait(5)
        assert wait_until(lambda: agent.maintenance.stats.events_received == 1, timeout=10)
        assert time.monotonic() - sent < 5.0
        time.sleep(0.5)  # back asleep, for 30 s
        asked = time.monotonic()
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive()
        assert time.monotonic() - asked < 5.0
    finally:
        operator.close()
        stop.set()
        thread.join(timeout=5)
        agent.store.close()
