"""IngestService acknowledges a message only after its points are durable; stored-up-to acks.

Messages carry an ack handle that records into the same event log as the sink's
writes, so the order "written, then acknowledged" is checked directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from aggregator.ingest import IngestService
from aggregator.sinks import MemorySink
from fedge.errors import ConfigError
from fedge.messages import Reading, StoredAck, TelemetryBatch, decode_message, encode_message
from fedge.points import Point
from fedge.topics import Topics
from fedge.transport import InboundMessage, InMemoryBroker
from tests.support import wait_until

FLEET = "demo"
NOW = 1_750_000_000.0
T = Topics(FLEET)


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []
        self._lock = threading.Lock()

    def add(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.events)


class LoggingSink(MemorySink):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def write(self, points: Sequence[Point]) -> None:
        super().write(points)  # raises while fail_next > 0: nothing logged then
        self.log.add(f"write {len(points)}")


def telemetry(device: str, seqs: Sequence[int]) -> bytes:
    batch = TelemetryBatch(
        fleet=FLEET,
        device=device,
        readings=[Reading(seq=s, ts=NOW - 100 + s, values={"temp": 1.0}) for s in seqs],
    )
    return encode_message(batch)


def message(log: Log, name: str, payload: bytes, topic: str = T.telemetry("d")) -> InboundMessage:
    return InboundMessage(topic, payload, ack_handle=lambda: log.add(f"ack {name}"))


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def service(log: Log) -> Iterator[IngestService]:
    svc = IngestService(
        InMemoryBroker().transport("ingest"),
        LoggingSink(log),
        fleet=FLEET,
        sink_retry_s=0.01,
        clock=lambda: NOW,
    )
    svc.start()
    yield svc
    svc.stop(timeout=2.0)


def test_messages_are_acknowledged_after_the_write_that_stores_them(
    service: IngestService, log: Log
) -> None:
    service.handle(message(log, "m1", telemetry("d", [0, 1])))
    assert wait_until(lambda: "ack m1" in log.snapshot(), timeout=5.0)
    assert log.snapshot() == ["write 2", "ack m1"]
    assert service.stats.acked == 1


def test_refused_ignored_and_duplicate_messages_are_acknowledged_too(
    service: IngestService, log: Log
) -> None:
    service.handle(message(log, "bad", b"{not json"))
    service.handle(message(log, "stranger", b"{}", topic="not/a/fedge/topic"))
    assert wait_until(lambda: service.stats.acked == 2, timeout=5.0)
    service.handle(message(log, "first", telemetry("d", [5])))
    assert wait_until(lambda: service.stats.acked == 3, timeout=5.0)
    service.handle(message(log, "again", telemetry("d", [5])))  # a redelivery
    assert wait_until(lambda: service.stats.acked == 4, timeout=5.0)
    events = log.snapshot()
    assert events.count("write 1") == 1  # the duplicate wrote nothing
    assert events.index("write 1") < events.index("ack first")
    assert {"ack bad", "ack stranger", "ack again"} <= set(events)


def test_no_ack_while_the_sink_refuses(service: IngestService, log: Log) -> None:
    assert isinstance(service.sink, LoggingSink)
    service.sink.fail_next = 5
    service.handle(message(log, "m1", telemetry("d", [0])))
    assert wait_until(lambda: service.stats.write_errors == 5, timeout=5.0)
    assert wait_until(lambda: "ack m1" in log.snapshot(), timeout=5.0)
    assert log.snapshot() == ["write 1", "ack m1"]


def test_stop_with_the_sink_down_leaves_messages_unacknowledged(log: Log) -> None:
    sink = LoggingSink(log)
    sink.fail_next = 10**6
    svc = IngestService(InMemoryBroker().transport("ingest"), sink, fleet=FLEET, sink_retry_s=0.01)
    svc.start()
    svc.handle(message(log, "m1", telemetry("d", [0])))
    assert wait_until(lambda: svc.stats.write_errors >= 1, timeout=5.0)
    svc.stop(timeout=2.0)
    stats = svc.stats
    assert log.snapshot() == []
    assert (stats.acked, stats.deferred, stats.points_lost) == (0, 1, 0)
    assert stats.rejected == {}


def test_a_message_needing_an_ack_is_never_dropped_for_a_full_queue(log: Log) -> None:
    svc = IngestService(
        InMemoryBroker().transport("x"),
        MemorySink(),
        fleet=FLEET,
        queue_size=1,
        enqueue_timeout_s=0.01,
    )
    # Not started: nothing drains. The second message is not refused as queue_full but
    # left to the broker (deferred), since the worker is not there to make room.
    svc.handle(message(log, "m1", telemetry("d", [0])))
    svc.handle(message(log, "m2", telemetry("d", [1])))
    assert svc.stats.rejected == {}
    assert (svc.stats.queue_depth, svc.stats.deferred) == (1, 1)


def test_full_queue_waits_for_the_worker_when_an_ack_is_needed(log: Log) -> None:
    sink = LoggingSink(log)
    svc = IngestService(
        InMemoryBroker().transport("x"), sink, fleet=FLEET, queue_size=1, enqueue_timeout_s=0.01
    )
    svc.start()
    try:
        for i in range(20):  # far more than the queue holds: the caller waits for room
            svc.handle(message(log, f"m{i}", telemetry("d", [i])))
        assert wait_until(lambda: svc.stats.acked == 20, timeout=5.0)
        assert svc.stats.rejected == {} and svc.stats.deferred == 0
        assert len(sink.points) == 20
    finally:
        svc.stop(timeout=2.0)


def test_messages_arriving_while_stopping_are_left_to_the_broker(
    service: IngestService, log: Log
) -> None:
    service.stop(timeout=2.0)
    service.handle(message(log, "late", telemetry("d", [0])))
    assert service.stats.deferred == 1 and log.snapshot() == []


# Stored-up-to acknowledgements -------------------------------------------------------------
class Watcher:
    def __init__(self) -> None:
        self.acks: list[StoredAck] = []
        self.retained: list[bool] = []

    def __call__(self, msg: InboundMessage) -> None:
        self.acks.append(decode_message(StoredAck, msg.payload))
        self.retained.append(msg.retain)


def test_stored_acks_publish_the_contiguous_watermark() -> None:
    broker = InMemoryBroker()
    clock = [NOW]
    svc = IngestService(
        broker.transport("ingest"),
        MemorySink(),
        fleet=FLEET,
        stored_acks=True,
        stored_ack_interval_s=0.0,
        clock=lambda: clock[0],
    )
    watcher = Watcher()
    agent = broker.transport("agent")
    agent.connect(on_message=watcher)
    agent.subscribe(T.stored("d"))
    svc.start()
    try:
        agent.publish(T.telemetry("d"), telemetry("d", [0, 1, 2, 3, 4]))
        assert wait_until(
            lambda: bool(watcher.acks) and watcher.acks[-1].through_seq == 4, timeout=5.0
        )
        agent.publish(T.telemetry("d"), telemetry("d", [8, 9]))  # 5-7 missing: no movement
        assert wait_until(lambda: svc.stats.points_written == 7, timeout=5.0)
        agent.publish(T.telemetry("d"), telemetry("d", [5, 6, 7]))  # the gap is filled
        assert wait_until(lambda: watcher.acks[-1].through_seq == 9, timeout=5.0)
        assert sorted({a.through_seq for a in watcher.acks}) == [4, 9]
        last = watcher.acks[-1]
        assert (last.fleet, last.device, last.through_ts) == (FLEET, "d", NOW - 100 + 9)
    finally:
        svc.stop(timeout=2.0)
    # Retained: a later subscriber (the agent after a restart) gets the last one.
    late = Watcher()
    again = broker.transport("agent-again")
    again.connect(on_message=late)
    again.subscribe(T.stored("d"))
    assert [a.through_seq for a in late.acks] == [9] and late.retained == [True]


def test_stored_acks_resume_from_the_retained_watermark() -> None:
    broker = InMemoryBroker()
    agent = broker.transport("agent")
    agent.connect(on_message=lambda _m: None)
    earlier = StoredAck(fleet=FLEET, device="d", through_seq=41, through_ts=NOW - 59, ts=NOW - 1)
    agent.publish(T.stored("d"), encode_message(earlier), retain=True)
    svc = IngestService(
        broker.transport("ingest"),
        MemorySink(),
        fleet=FLEET,
        stored_acks=True,
        stored_ack_interval_s=0.0,
        clock=lambda: NOW,
    )
    svc.start()
    try:
        assert svc.watermarks is not None
        assert wait_until(
            lambda: svc.watermarks is not None and svc.watermarks.get("d") is not None, timeout=5.0
        )
        # 43 is not next to 41: the watermark waits for 42.
        agent.publish(T.telemetry("d"), telemetry("d", [43]))
        assert wait_until(lambda: svc.stats.points_written == 1, timeout=5.0)
        mark = svc.watermarks.get("d")
        assert mark is not None and mark.through_seq == 41
        agent.publish(T.telemetry("d"), telemetry("d", [42]))
        assert wait_until(
            lambda: (m := svc.watermarks.get("d")) is not None and m.through_seq == 43,  # type: ignore[union-attr]
            timeout=5.0,
        )
    finally:
        svc.stop(timeout=2.0)


def test_a_fresh_ingest_starts_below_what_the_agent_owes() -> None:
    # No retained ack to seed from; the agent owes 100-152 and sends 151-152 first.
    broker = InMemoryBroker()
    svc = IngestService(
        broker.transport("ingest"),
        MemorySink(),
        fleet=FLEET,
        stored_acks=True,
        stored_ack_interval_s=0.0,
        clock=lambda: NOW,
    )
    watcher = Watcher()
    agent = broker.transport("agent")
    agent.connect(on_message=watcher)
    agent.subscribe(T.stored("d"))

    def owing(seqs: Sequence[int]) -> bytes:
        batch = decode_message(TelemetryBatch, telemetry("d", seqs))
        return encode_message(
            batch.model_copy(
                update={"unconfirmed_from_seq": 100, "unconfirmed_from_ts": NOW - 100 + 100}
            )
        )

    svc.start()
    try:
        agent.publish(T.telemetry("d"), owing([151, 152]))
        assert wait_until(lambda: bool(watcher.acks), timeout=5.0)
        assert (watcher.acks[0].through_seq, watcher.acks[0].through_ts) == (99, NOW)
        agent.publish(T.telemetry("d"), owing(range(100, 151)))  # the re-send
        assert wait_until(lambda: watcher.acks[-1].through_seq == 152, timeout=5.0)
        assert [a.through_seq for a in watcher.acks] == [99, 152]
    finally:
        svc.stop(timeout=2.0)


def test_stored_acks_refuse_a_shared_group() -> None:
    with pytest.raises(ConfigError, match="shared subscription"):
        IngestService(
            InMemoryBroker().transport("x"),
            MemorySink(),
            fleet=FLEET,
            shared_group="g",
            stored_acks=True,
        )
