"""kill -9 the aggregator mid-round, restart it: the round completes from its journal.

Real processes: Mosquitto (fedge_app.servers), three ``fedge agent`` and the
``fedge aggregator`` as subprocesses. The aggregator is killed once its journal of
the first training round holds two accepted updates; the third device was frozen
(SIGSTOP) before it could answer and is thawed while the aggregator is down, so its
update waits in the broker for the aggregator's persistent session. The restarted
aggregator must resume the same round (re-announced byte for byte), count the two
journaled updates and the queued one, publish exactly the weighted mean of the three,
never publish a lower version than before, and finish the run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.journal import parse_journal
from broker.mqtt_transport import PahoTransport
from fedge.codec import decode_frame
from fedge.config import BrokerEndpoint
from fedge.messages import RoundSummary, decode_message
from fedge.strategies import weighted_mean
from fedge.topics import TopicKind, Topics, parse_topic
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto
from tests.integration.fedge_process import FedgeProcess
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "chaos"
TOPICS = Topics(FLEET)
DEVICES = ("dev-1", "dev-2", "dev-3")
AGENT_ENV = {
    "FEDGE_AGENT_STATUS_INTERVAL_S": "1.0",
    "FEDGE_AGENT_TELEMETRY_INTERVAL_S": "1.0",
    "FEDGE_AGENT_SAMPLE_INTERVAL_S": "0.1",
}


class Probe:
    """Everything the fleet's topics carry, in arrival order."""

    def __init__(self, url: str) -> None:
        self.messages: list[InboundMessage] = []
        self._lock = threading.Lock()
        self.transport = PahoTransport(BrokerEndpoint.from_url(url), client_id="chaos-probe")
        self.transport.connect(on_message=self._add)
        for topic in (TOPICS.round_current, TOPICS.global_model, TOPICS.all_updates,
                      TOPICS.round_summary):
            self.transport.subscribe(topic)

    def _add(self, msg: InboundMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def of(self, kind: TopicKind) -> list[InboundMessage]:
        with self._lock:
            return [m for m in self.messages if parse_topic(m.topic).kind is kind]

    def update(self, round_id: int, device: str) -> bytes | None:
        topic = TOPICS.update(round_id, device)
        found = [m.payload for m in self.of(TopicKind.UPDATE) if m.topic == topic]
        return found[-1] if found else None

    def summaries(self) -> list[RoundSummary]:
        return [decode_message(RoundSummary, m.payload) for m in self.of(TopicKind.ROUND_SUMMARY)]


@pytest.mark.timeout(150)
def test_kill_9_mid_round_resumes_the_round_from_its_journal(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    started = time.monotonic()
    ckpt = tmp_path / "ckpt"
    (tmp_path / "aggregator.toml").write_text(
        f'fleet = "{FLEET}"\nrounds = 2\nmin_clients = 3\nround_timeout_s = 60\n'
        f'final_evaluation = false\ncheckpoint_dir = "{ckpt}"\n'
        "[training]\nepochs = 1\n"
    )
    aggregator_args = ["aggregator", "--config", str(tmp_path / "aggregator.toml"),
                       "--broker", mosquitto.url, "--log-level", "INFO"]
    probe = Probe(mosquitto.url)
    agents = [
        FedgeProcess(d, ["agent", "--device", d, "--broker", mosquitto.url, "--fleet", FLEET,
                         "--store", str(tmp_path / f"{d}.sqlite"), "--history-units", "3",
                         "--seed", str(i), "--log-level", "WARNING"],
                     log_dir=tmp_path, env=AGENT_ENV)
        for i, d in enumerate(DEVICES)
    ]
    first = FedgeProcess("aggregator-1", aggregator_args, log_dir=tmp_path)
    second = FedgeProcess("aggregator-2", aggregator_args, log_dir=tmp_path)
    journal = ckpt / "round-000001.journal"
    try:
        for agent in agents:
            agent.start()
        first.start()
        # Round 0 (statistics) runs; the moment round 1's journal exists (before its
        # announcement is published) dev-3 is frozen: it cannot answer yet.
        assert wait_until(journal.exists, timeout=60, interval=0.01), first.log()
        agents[2].pause()

        def journaled() -> int:
            return len(parse_journal(1, journal.read_bytes()).entries)

        assert wait_until(lambda: journaled() == 2, timeout=40), first.log()
        first.kill()  # kill -9, two of three updates on disk
        on_disk = parse_journal(1, journal.read_bytes())
        assert on_disk.closed is None and len(on_disk.entries) == 2
        assert {parse_topic(e.topic).device for e in on_disk.entries} == {"dev-1", "dev-2"}

        agents[2].resume()  # its update waits in the broker for the aggregator's session
        assert wait_until(lambda: probe.update(1, "dev-3") is not None, timeout=40), (
            agents[2].log()
        )
        second.start()
        assert second.wait(timeout=60) == 0, second.log()
    finally:
        for proc in (first, second, *agents):
            if proc.running:
                proc.kill()
        probe.transport.close()

    log = second.log()
    assert "round 1 resumed from its journal" in " ".join(log.split()), log
    # The same round, announced again byte for byte, then round 2.
    announcements = [m.payload for m in probe.of(TopicKind.ROUND_CURRENT)]
    round_1 = [a for a in announcements if b'"round_id":1,' in a]
    assert len(round_1) >= 2 and len(set(round_1)) == 1
    by_round = {s.round_id: s for s in probe.summaries()}
    assert by_round[1].outcome == "completed" and by_round[1].participants == 3
    assert by_round[1].rejected == 0
    assert by_round[2].outcome == "completed" and by_round[2].version == 2

    # Global versions only ever go up (a restart re-publishes the current one).
    globals_ = [decode_frame(m.payload) for m in probe.of(TopicKind.GLOBAL_MODEL)]
    versions = [g.header.version for g in globals_]
    assert versions == sorted(versions) and versions[-1] == 2, versions  # type: ignore[type-var]

    # Version 1 is exactly the weighted mean of the three accepted round-1 updates.
    updates = [decode_frame(probe.update(1, d) or b"") for d in DEVICES]
    expected = weighted_mean((u.tensors, float(u.header.num_examples)) for u in updates)
    (v1,) = [g for g in globals_ if g.header.version == 1]
    assert v1.header.num_examples == sum(u.header.num_examples for u in updates)
    for name, value in expected.items():
        np.testing.assert_allclose(v1.tensors[name], value, rtol=1e-6, atol=1e-7)
    assert time.monotonic() - started < 90
