"""Chaos: real EdgeAgents lose no reading to a broker kill -9, thanks to ingest's stored acks.

Real Mosquitto (``persistence true``, ``autosave_interval 1``: a snapshot every ~2 s),
a real ``fedge ingest --stored-acks`` process writing SQLite, and four in-process
:class:`~edge_agent.agent.EdgeAgent` s over real paho transports (persistent
sessions, as ``fedge agent`` connects), sampling a simulated pump at 50 Hz into
their SQLite stores. Three confirm (``telemetry_confirm = "auto"``: on with the
first ack); the fourth is the agent from before confirmations
(``telemetry_confirm = "off"``: a reading is done at the broker's PUBACK), the
control.

The kill is made to cost readings for certain: ingest is SIGKILLed first, so the
broker queues the agents' readings for ingest's offline session, in memory; the
broker is SIGKILLed ~1.2 s after a snapshot, so it forgets the readings it
acknowledged in those 1.2 s (tests/integration/test_chaos_broker_kill.py pins that
down for Mosquitto itself). Then the broker restarts on the same port, ingest
restarts (its session resumed), the agents reconnect and sampling stops.

Asserted, by seq from each agent's own store: every reading of a confirming agent
is in the SQLite sink exactly once (none lost, none doubled, none unknown), and they
re-sent readings (> 0: today's PUBACK-only agent re-sends nothing), all of them
after the reconnect (the re-send timeout is longer than the test); the control lost
readings (> 0), so the scenario really loses what confirmations recover.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fedge_app.servers import Mosquitto
from tests.integration.agent_support import AgentThread
from tests.integration.chaos_support import (
    IngestProcess,
    sqlite_seqs,
    wait_for,
    wait_sqlite_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FLEET = "chaos"
CONFIRMING = ("pump-01", "pump-02", "pump-03")
CONTROL = "pump-off"


def _agent(root: Path, url: str, device: str, gate: threading.Event, mode: str) -> AgentThread:
    return AgentThread(
        root,
        url,
        FLEET,
        device,
        gate=gate,
        seed=sum(device.encode()),
        telemetry_confirm=mode,
        # Longer than the test: the re-send after the reconnect must do it all.
        telemetry_confirm_timeout_s=600.0,
    )


def test_confirming_agents_lose_nothing_to_a_broker_kill(tmp_path: Path) -> None:
    data = tmp_path / "mosquitto-data"
    broker = Mosquitto(
        tmp_path / "mosquitto",
        persistence_dir=data,
        extra_config=[
            "autosave_interval 1",
            "max_queued_messages 100000",
            "persistent_client_expiration 7d",
        ],
    )
    broker.start()
    snapshot = data / "mosquitto.db"

    def saved_at() -> int:
        return snapshot.stat().st_mtime_ns if snapshot.exists() else 0

    db = tmp_path / "telemetry.sqlite"
    ingest = IngestProcess(
        tmp_path / "ingest", broker_url=broker.url, fleet=FLEET, sqlite=db, stored_acks=True
    )
    gate = threading.Event()
    gate.set()
    agents = [_agent(tmp_path, broker.url, d, gate, "auto") for d in CONFIRMING]
    control = _agent(tmp_path, broker.url, CONTROL, gate, "off")
    everyone = [*agents, control]
    try:
        ingest.start()
        for a in everyone:
            a.start()
        # Confirm mode is on once each agent applied a first ack.
        assert wait_for(lambda: all(a.status()[2] is not None for a in agents), timeout=20.0)
        time.sleep(2.0)

        ingest.kill()  # the broker now queues for ingest's session, in memory
        before = saved_at()
        assert wait_for(lambda: saved_at() != before, timeout=5.0, interval=0.01)
        time.sleep(1.2)  # acknowledged from now on, gone with the kill
        broker.kill()
        time.sleep(3.0)
        broker.start()  # same port, from the last snapshot
        _, session = ingest.start()
        assert session == "resumed"
        time.sleep(4.0)

        gate.clear()  # sampling stops; telemetry goes on
        assert wait_for(
            lambda: all(a.status()[:2] == (0, 0) for a in agents), timeout=60.0, interval=0.5
        ), [a.status() for a in agents]
        assert wait_for(lambda: control.status()[0] == 0, timeout=30.0)
        # The control's last readings are written (or lost) once ingest is idle.
        assert wait_sqlite_settled(db)
        for a in everyone:
            a.close()
        got = sqlite_seqs([db])
        ingest.stop()
    finally:
        gate.clear()
        for a in everyone:
            a.close()
        ingest.kill()
        broker.close()

    assert [a.errors for a in everyone] == [[], [], [], []]
    resent = {a.device: a.agent.stats.telemetry_resent for a in agents}
    lines = []
    for a in agents:
        stored = Counter({seq: n for (device, seq), n in got.items() if device == a.device})
        mine = list(a.states())
        assert len(mine) > 400  # ~8 s at 50 Hz
        missing = [s for s in mine if stored[s] == 0]
        doubled = {s: n for s, n in stored.items() if n > 1}
        unknown = sorted(set(stored) - set(mine))
        lines.append(f"{a.device}: {len(mine)} readings, resent {resent[a.device]}, "
                     f"missing {len(missing)}, doubled {len(doubled)}")
        assert (missing, doubled, unknown) == ([], {}, [])
    mine = list(control.states())
    lost = [s for s in mine if got.get((CONTROL, s), 0) == 0]
    assert all(got.get((CONTROL, s), 0) <= 1 for s in mine)
    print("\n" + "\n".join(lines) + f"\n{CONTROL} (PUBACK only): {len(mine)} readings, "
          f"lost {len(lost)}")
    assert sum(resent.values()) > 0
    assert lost, "the control lost nothing: the kill did not hit acknowledged readings"
    assert control.agent.stats.telemetry_resent == 0
