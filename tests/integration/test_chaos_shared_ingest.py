"""Chaos: two ``fedge ingest --shared-group g`` processes started in the same instant.

The bug report's ingest built its client id from the fleet and the current second:
two instances started together got the same id, the broker kept kicking one off
("already connected, closing old connection") and most points were lost. Now each
instance has its own persistent instance id next to its spool. Asserted: distinct
client ids, no session takeover in the broker's log, both instances take a share
of the load (MQTT 5 shared subscription), and every generated reading is stored
exactly once across the two.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedge_app.servers import Mosquitto
from tests.integration.chaos_support import (
    IngestProcess,
    SeqPublisher,
    expected,
    sqlite_seqs,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

FLEET = "chaos"


def test_two_shared_ingests_started_together_split_the_load_without_kicking(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(
        tmp_path / "mosquitto",
        # "notice" logs a session takeover ("Client X already connected, ...").
        extra_config=["max_queued_messages 100000", "log_type notice"],
    )
    broker.start()
    dbs = [tmp_path / f"telemetry-{i}.sqlite" for i in range(2)]
    ingests = [
        IngestProcess(
            tmp_path / f"ingest-{i}",
            broker_url=broker.url,
            fleet=FLEET,
            sqlite=dbs[i],
            shared_group="g",
        )
        for i in range(2)
    ]
    publishers = [SeqPublisher(broker.url, FLEET, f"pump-{i:02d}") for i in range(4)]
    try:
        for ingest in ingests:  # both launched before either is up: the same second
            ingest.launch()
        ids = [ingest.wait_ready()[0] for ingest in ingests]
        for p in publishers:
            p.start()
        time.sleep(6.0)
        for p in publishers:
            p.stop_publishing()
        assert wait_for(lambda: all(p.all_acked() for p in publishers), timeout=20.0)
        want = expected(publishers)
        assert wait_for(lambda: sqlite_seqs(dbs).keys() >= want.keys(), timeout=30.0, interval=0.5)
        time.sleep(1.0)
        per_instance = [sum(sqlite_seqs([db]).values()) for db in dbs]
        got = sqlite_seqs(dbs)
        for ingest in ingests:
            ingest.stop()
        broker_log = broker.log_tail(200_000)
    finally:
        for p in publishers:
            p.close()
        for ingest in ingests:
            ingest.kill()
        broker.close()

    print(f"\nclient ids {ids}; readings stored per instance {per_instance}")
    assert ids[0] != ids[1]
    assert all(i.startswith(f"{FLEET}-ingest-g-") for i in ids)
    assert "already connected" not in broker_log
    assert all(n > 0 for n in per_instance)  # the group really split the load
    assert dict(got) == dict(want)  # every reading once, across both instances
