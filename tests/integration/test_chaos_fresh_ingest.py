"""Chaos: a broker without persistence and ingest, both kill -9'd: a *fresh* ingest.

Real Mosquitto with ``persistence false`` (its default): a kill -9 takes everything
with it, the queue it kept for ingest's session and the retained stored-up-to acks.
A real ``fedge ingest --stored-acks`` process writing SQLite is killed too and
restarted: it comes back with nothing to seed its watermarks from (a new session,
no retained ack), like an ingest deployed for the first time. Three in-process
:class:`~edge_agent.agent.EdgeAgent` s in confirm mode sample a simulated pump at
50 Hz over real paho transports.

The kill is made to cost readings: ingest is killed first, so for ~1.5 s the broker
acknowledges the agents' readings (SENT in their stores) and queues them for
ingest, in memory; then the broker is killed and restarted at once on the same
port. The agents reconnect at paho's first retry (1 s), before the new ingest
process is up: what they send until it subscribes (their newest readings, and
the re-send of the lost ones at settle_s = 2 s) is acknowledged by the broker and
dropped, as nobody has a session yet. The first reading the new ingest sees is
therefore far above the lost ones. Before issue 12 it started each device's
watermark just below that reading and published it, and the agents took it for
every reading below (~220 per agent lost, 150-376 in a typical run). Now every batch
says which readings the agent still owes ingest
(``TelemetryBatch.unconfirmed_from_seq``), ingest starts there and waits, and the
agents' timeout re-send (5 s here) fills the gap.

Asserted, by seq from each agent's own store: every reading is in the SQLite sink
exactly once (none lost, none doubled, none unknown), and the agents re-sent
readings (> 0). Printed: how long after the broker restart the readings each agent
held at the kill were confirmed again.
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

FLEET = "fresh"
DEVICES = ("pump-01", "pump-02", "pump-03")


def _ranges(seqs: list[int]) -> str:
    """``[150, 151, 152, 160]`` -> ``"150-152,160"`` (for the failure message)."""
    out: list[str] = []
    for s in sorted(seqs):
        if out and int(out[-1].rsplit("-", 1)[-1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out)


def test_a_fresh_ingest_vouches_for_no_reading_it_never_stored(tmp_path: Path) -> None:
    broker = Mosquitto(
        tmp_path / "mosquitto", extra_config=["max_queued_messages 100000"]
    )  # persistence false: a kill -9 loses sessions, queues and retained messages
    broker.start()
    db = tmp_path / "telemetry.sqlite"
    ingest = IngestProcess(
        tmp_path / "ingest", broker_url=broker.url, fleet=FLEET, sqlite=db, stored_acks=True
    )
    gate = threading.Event()
    gate.set()
    agents = [
        AgentThread(
            tmp_path,
            broker.url,
            FLEET,
            device,
            gate=gate,
            seed=sum(device.encode()),
            telemetry_confirm="auto",
            # Readings the broker acknowledged after the restart but before ingest
            # subscribed again were dropped (nobody to queue them for): only the
            # timeout re-send brings those.
            telemetry_confirm_timeout_s=5.0,
        )
        for device in DEVICES
    ]
    try:
        ingest.start()
        for a in agents:
            a.start()
        assert wait_for(lambda: all(a.status()[2] is not None for a in agents), timeout=20.0)
        time.sleep(2.0)

        ingest.kill()  # the broker now queues for ingest's session, in memory only
        time.sleep(1.5)  # acknowledged by the broker, stored by nobody
        held = [a.status()[1] for a in agents]
        newest = [max(a.states()) for a in agents]
        broker.kill()  # the queue and the retained acks are gone
        broker.start()  # same port, empty
        restarted = time.monotonic()
        _, session = ingest.start()
        assert session == "new"  # nothing to resume, nothing retained to seed from

        def recovered() -> bool:  # what each agent held at the kill is confirmed again
            return all(
                (through := a.status()[2]) is not None and through >= top
                for a, top in zip(agents, newest, strict=True)
            )

        assert wait_for(recovered, timeout=60.0)
        recovery_s = time.monotonic() - restarted
        time.sleep(1.0)

        gate.clear()  # sampling stops; telemetry goes on
        assert wait_for(
            lambda: all(a.status()[:2] == (0, 0) for a in agents), timeout=60.0, interval=0.5
        ), [a.status() for a in agents]
        assert wait_sqlite_settled(db)
        for a in agents:
            a.close()
        got = sqlite_seqs([db])
        ingest.stop()
    finally:
        gate.clear()
        for a in agents:
            a.close()
        ingest.kill()
        broker.close()

    assert [a.errors for a in agents] == [[], [], []]
    lines = []
    failures = []
    for a, before in zip(agents, held, strict=True):
        stored = Counter({seq: n for (device, seq), n in got.items() if device == a.device})
        mine = list(a.states())
        assert len(mine) > 400  # ~9 s at 50 Hz
        missing = [s for s in mine if stored[s] == 0]
        doubled = {s: n for s, n in stored.items() if n > 1}
        unknown = sorted(set(stored) - set(mine))
        resent = a.agent.stats.telemetry_resent
        lines.append(
            f"{a.device}: {len(mine)} readings, unconfirmed at the kill {before}, "
            f"resent {resent}, missing {len(missing)} [{_ranges(missing)}], doubled {len(doubled)}"
        )
        failures.append((missing, doubled, unknown))
    print("\n" + "\n".join(lines) + f"\nheld readings confirmed {recovery_s:.1f} s after the "
          "broker restart")
    assert failures == [([], {}, [])] * len(agents), "\n".join(lines)
    assert all(a.agent.stats.telemetry_resent > 0 for a in agents)
