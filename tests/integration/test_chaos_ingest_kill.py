"""Chaos: ``fedge ingest`` killed with SIGKILL while devices publish, back after 10 s.

Real Mosquitto, real ``fedge ingest`` processes (SQLite, or VictoriaMetrics through
the spooled InfluxDB sink), publishers that number their readings. Ingest runs a
persistent session with manual acknowledgements, so the broker keeps everything
ingest had not acknowledged (received but not yet durable, and everything
published during the outage) and hands it to the restarted process, which comes
back with the same client id. Asserted, counting by (device, seq) end to end:
every generated reading is stored, none twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge_app.servers import Mosquitto
from tests.integration.chaos_support import (
    DedupVictoriaMetrics,
    IngestProcess,
    SeqPublisher,
    expected,
    sqlite_seqs,
    vm_seqs,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FLEET = "chaos"
DEVICES = ("pump-01", "pump-02", "pump-03")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto", extra_config=["max_queued_messages 100000"]) as b:
        yield b


@pytest.mark.parametrize("store", ["sqlite", "victoria-metrics"])
def test_ingest_killed_and_restarted_after_10s_loses_and_doubles_nothing(
    tmp_path: Path, broker: Mosquitto, store: str
) -> None:
    vm = DedupVictoriaMetrics(tmp_path / "vm") if store == "victoria-metrics" else None
    db = tmp_path / "telemetry.sqlite"
    if vm is not None:
        vm.start()
    ingest = IngestProcess(
        tmp_path / "ingest",
        broker_url=broker.url,
        fleet=FLEET,
        sqlite=db if vm is None else None,
        influx_url=None if vm is None else vm.url,
    )
    publishers = [SeqPublisher(broker.url, FLEET, d) for d in DEVICES]

    def stored() -> dict[tuple[str, int], int]:
        return dict(sqlite_seqs([db]) if vm is None else vm_seqs(vm, FLEET))

    try:
        client_id, session = ingest.start()
        assert session == "new"
        for p in publishers:
            p.start()
        time.sleep(4.0)
        ingest.kill()
        killed_at = sum(len(p.generated) for p in publishers)
        time.sleep(10.0)  # published meanwhile: queued by the broker for ingest's session
        during_outage = sum(len(p.generated) for p in publishers) - killed_at
        client_id_again, session_again = ingest.start()
        assert (client_id_again, session_again) == (client_id, "resumed")
        time.sleep(3.0)
        for p in publishers:
            p.stop_publishing()
        assert wait_for(lambda: all(p.all_acked() for p in publishers), timeout=20.0)
        want = expected(publishers)
        assert wait_for(lambda: stored().keys() >= want.keys(), timeout=30.0, interval=0.5)
        time.sleep(1.0)  # anything late would show up as a duplicate
        got = stored()
        log = ingest.stop()
    finally:
        for p in publishers:
            p.close()
        ingest.kill()
        if vm is not None:
            vm.close()

    missing = sorted(set(want) - set(got))
    doubled = {k: n for k, n in got.items() if n > 1}
    print(
        f"\n[{store}] generated {sum(want.values())}, during the outage {during_outage}, "
        f"stored {len(got)}, missing {len(missing)}, stored twice {len(doubled)}"
    )
    assert during_outage > 300  # the outage really had traffic to keep
    assert missing == []
    assert doubled == {}
    assert set(got) == set(want)  # and nothing that was never generated
    assert "left to the broker" in log  # the clean stop at the end reported its counters
