"""Chaos: the network between devices and the broker is cut for 30 s (a TCP proxy).

Devices reach Mosquitto through a loopback TCP proxy that, when cut, aborts every
connection and refuses new ones; ingest (a real ``fedge ingest`` process) is
connected directly. The devices keep generating readings during the cut (paho
queues QoS 1 publishes and re-sends them after reconnecting). Asserted: every
reading is stored exactly once, and every reading of each device reached the broker
(an observer subscribed directly records the first arrival of each seq). Not in
order, always: on a loaded machine a reading in flight at the cut was seen re-sent
after ~800 newer ones (paho re-sends its in-flight window while new publishes go
out); ingest stores by seq, so order does not matter for what is stored.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.messages import TelemetryBatch, decode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage
from fedge_app.servers import Mosquitto
from tests.integration.chaos_support import (
    IngestProcess,
    SeqPublisher,
    TcpProxy,
    expected,
    sqlite_seqs,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

FLEET = "chaos"
CUT_S = 30.0  # the 30 s cut


class ArrivalOrder:
    """First arrival of every (device, seq) at a subscriber, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first: dict[str, list[int]] = defaultdict(list)
        self._seen: set[tuple[str, int]] = set()

    def __call__(self, message: InboundMessage) -> None:
        batch = decode_message(TelemetryBatch, message.payload)
        with self._lock:
            for reading in batch.readings:
                key = (batch.device, reading.seq)
                if key not in self._seen:
                    self._seen.add(key)
                    self.first[batch.device].append(reading.seq)


def test_network_cut_between_devices_and_broker(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_config=["max_queued_messages 100000"])
    broker.start()
    proxy = TcpProxy(broker.port).start()
    db = tmp_path / "telemetry.sqlite"
    ingest = IngestProcess(tmp_path / "ingest", broker_url=broker.url, fleet=FLEET, sqlite=db)
    order = ArrivalOrder()
    observer = PahoTransport(BrokerEndpoint.from_url(broker.url), client_id="observer")
    observer.subscribe(Topics(FLEET).all_telemetry)
    publishers = [
        SeqPublisher(broker.url, FLEET, f"pump-{i:02d}", port=proxy.port) for i in range(3)
    ]
    try:
        ingest.start()
        observer.connect(on_message=order)
        assert observer.wait_subscribed(10.0)
        for p in publishers:
            p.start()
        time.sleep(3.0)
        proxy.cut()
        cut_from = sum(len(p.generated) for p in publishers)
        time.sleep(CUT_S)
        during_cut = sum(len(p.generated) for p in publishers) - cut_from
        proxy.restore()
        assert wait_for(lambda: all(p.transport.connected for p in publishers), timeout=30.0)
        reconnects = [p.transport.reconnects for p in publishers]
        time.sleep(2.0)
        for p in publishers:
            p.stop_publishing()
        assert wait_for(lambda: all(p.all_acked() for p in publishers), timeout=30.0)
        want = expected(publishers)
        assert wait_for(lambda: sqlite_seqs([db]).keys() >= want.keys(), timeout=30.0)
        time.sleep(1.0)
        got = sqlite_seqs([db])
        ingest.stop()
    finally:
        for p in publishers:
            p.close()
        observer.close()
        ingest.kill()
        proxy.close()
        broker.close()

    print(f"\n{during_cut} readings generated during the {CUT_S}s cut; reconnects {reconnects}")
    assert during_cut > 300
    assert all(n >= 1 for n in reconnects)  # the cut really broke every connection
    assert dict(got) == dict(want)  # every reading, exactly once
    for p in publishers:
        assert sorted(order.first[p.device]) == p.generated  # none missing, none extra
