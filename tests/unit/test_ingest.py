"""IngestService over the in-memory broker: validation, de-duplication, counted rejects."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from aggregator.ingest import IngestService
from aggregator.sinks import MemorySink, SqliteSink
from fedge.messages import (
    DeviceStatus,
    Prediction,
    Reading,
    RoundSummary,
    TelemetryBatch,
    encode_message,
)
from fedge.points import Point, PointBatch, telemetry_points
from fedge.topics import Topics
from fedge.transport import InboundMessage, InMemoryBroker, InMemoryTransport
from tests.support import wait_until

FLEET = "demo"
NOW = 1_750_000_000.0
T = Topics(FLEET)


def clock() -> float:
    return NOW


def telemetry(device: str, seqs: range | list[int], *, ts0: float = NOW - 100) -> TelemetryBatch:
    return TelemetryBatch(
        fleet=FLEET,
        device=device,
        readings=[Reading(seq=s, ts=ts0 + s, values={"temp": 20.0 + s}) for s in seqs],
    )


class Rig:
    """A started IngestService with a publisher on the same in-memory broker."""

    def __init__(self, service: IngestService, sink: MemorySink, pub: InMemoryTransport) -> None:
        self.service = service
        self.sink = sink
        self.pub = pub

    def send(
        self,
        topic: str,
        payload: bytes | TelemetryBatch | Prediction | DeviceStatus | RoundSummary,
        *,
        retain: bool = False,
    ) -> None:
        raw = payload if isinstance(payload, bytes) else encode_message(payload)
        self.pub.publish(topic, raw, retain=retain)

    def settle(self, received: int) -> None:
        """Wait until ``received`` messages are fully processed (queue drained)."""
        assert wait_until(
            lambda: (
                self.service.stats.received >= received
                and self.service.stats.queue_depth == 0
                and self.service.stats.accepted
                + self.service.stats.ignored
                + self.service.stats.rejected_total
                >= received
            ),
            timeout=5.0,
        ), self.service.stats


@contextmanager
def make_rig(**kwargs: object) -> Iterator[Rig]:
    broker = InMemoryBroker()
    sink = MemorySink()
    service = IngestService(
        broker.transport("ingest"),
        sink,
        fleet=FLEET,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )
    service.start()
    pub = broker.transport("agent")
    pub.connect(on_message=lambda m: None)
    try:
        yield Rig(service, sink, pub)
    finally:
        pub.close()
        service.stop(timeout=5.0)


@pytest.fixture
def rig() -> Iterator[Rig]:
    with make_rig(known_devices={"pump-01", "pump-02"}) as r:
        yield r


def test_telemetry_is_written_as_points(rig: Rig) -> None:
    batch = telemetry("pump-01", range(5))
    rig.send(T.telemetry("pump-01"), batch)
    rig.settle(1)
    assert rig.sink.by_measurement("telemetry") == telemetry_points(batch)
    stats = rig.service.stats
    assert (stats.received, stats.accepted, stats.points_written, stats.rejected) == (1, 1, 5, {})


def test_redelivered_batch_is_deduplicated_by_device_and_seq(rig: Rig) -> None:
    rig.send(T.telemetry("pump-01"), telemetry("pump-01", range(5)))
    rig.send(T.telemetry("pump-01"), telemetry("pump-01", range(5)))  # QoS 1 redelivery
    rig.send(T.telemetry("pump-01"), telemetry("pump-01", range(3, 8)))  # overlap 3, 4
    rig.send(T.telemetry("pump-02"), telemetry("pump-02", range(5)))  # same seqs, other device
    rig.settle(4)
    seqs = [
        (p.tag_dict["device"], p.field_dict["seq"]) for p in rig.sink.by_measurement("telemetry")
    ]
    assert len(seqs) == len(set(seqs)) == 13
    assert rig.service.stats.duplicates == 7


def test_same_seq_with_new_timestamp_is_a_restarted_counter_not_a_duplicate(rig: Rig) -> None:
    rig.send(T.telemetry("pump-01"), telemetry("pump-01", range(3), ts0=NOW - 1000))
    rig.send(T.telemetry("pump-01"), telemetry("pump-01", range(3), ts0=NOW - 10))
    rig.settle(2)
    assert len(rig.sink.by_measurement("telemetry")) == 6
    assert rig.service.stats.duplicates == 0


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (T.telemetry("pump-01"), b'{"fleet": "demo", "device": ', "malformed_json"),
        (T.telemetry("pump-01"), b"\xff\xfe not json", "malformed_json"),
        (T.telemetry("pump-01"), b'{"fleet": "demo", "device": "pump-01"}', "invalid_schema"),
        (T.telemetry("pump-01"), b"[1, 2, 3]", "invalid_schema"),
        (
            T.telemetry("pump-01"),
            b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1.0,"values":{}}]}',
            "invalid_schema",  # 1970: outside the 2000..2100 bound of the wire model
        ),
        (
            T.telemetry("pump-01"),
            b'{"fleet":"demo","device":"pump-01","readings":[{"seq":-1,"ts":1750000000,'
            b'"values":{}}]}',
            "invalid_schema",
        ),
        (
            T.telemetry("pump-01"),
            b'{"fleet":"demo","device":"pump-01","readings":[{"seq":1,"ts":1750000000,'
            b'"values":{"temp":NaN}}]}',
            "invalid_schema",
        ),
        (T.telemetry("pump-01"), encode_message(telemetry("pump-02", [1])), "topic_mismatch"),
        (T.telemetry("pump-09"), encode_message(telemetry("pump-09", [1])), "unknown_device"),
        (
            T.telemetry("pump-01"),
            encode_message(telemetry("pump-01", [1]).model_copy(update={"fleet": "other"})),
            "wrong_fleet",
        ),
        (
            T.telemetry("pump-01"),
            encode_message(telemetry("pump-01", [1, 2], ts0=NOW + 3 * 86_400)),
            "future_timestamp",
        ),
        (
            T.telemetry("pump-01"),
            json.dumps(
                {
                    "fleet": FLEET,
                    "device": "pump-01",
                    "readings": [{"seq": 1, "ts": NOW, "values": {"seq": 1.0}}],
                }
            ).encode(),
            "invalid_schema",  # reserved sensor name
        ),
        (T.telemetry("pump-01"), b"{" + b" " * 300_000 + b"}", "too_large"),
        (T.prediction("pump-01"), b'{"fleet":"demo"}', "invalid_schema"),
        (
            T.status("pump-01"),
            b'{"fleet":"demo","device":"pump-02","state":"online"}',
            "topic_mismatch",
        ),
        (
            T.round_summary,
            b'{"fleet":"other","round_id":1,"task":"train","ts":1750000000,'
            b'"outcome":"completed","version":1,"participants":1}',
            "wrong_fleet",
        ),
    ],
)
def test_bad_input_is_counted_by_reason_and_never_stops_ingestion(
    topic: str, payload: bytes, reason: str
) -> None:
    with make_rig(known_devices={"pump-01", "pump-02"}, max_message_bytes=256_000) as rig:
        rig.send(topic, payload)
        good = telemetry("pump-01", [100])
        rig.send(T.telemetry("pump-01"), good)  # the service is still alive afterwards
        rig.settle(2)
        assert rig.service.stats.rejected == {reason: 1}
        assert rig.sink.by_measurement("telemetry")[-1:] == telemetry_points(good)


def test_bad_topics_delivered_directly_are_counted() -> None:
    sink = MemorySink()
    transport = InMemoryBroker().transport("x")
    transport.connect(on_message=lambda m: None)  # a shared, already connected transport
    service = IngestService(transport, sink, fleet=FLEET, clock=clock)
    service.start(connect=False)
    try:
        service.handle(InboundMessage("not/a/fedge/topic", b"{}"))
        service.handle(InboundMessage("fedge/v1/other/devices/d/telemetry", b"{}"))
        service.handle(InboundMessage(T.round_current, b"{}"))
        assert wait_until(lambda: service.stats.rejected_total == 3, timeout=5.0)
        assert service.stats.rejected == {
            "bad_topic": 1,
            "wrong_fleet": 1,
            "unexpected_topic": 1,
        }
    finally:
        service.stop(timeout=5.0)


def test_readings_from_the_future_are_dropped_one_by_one(rig: Rig) -> None:
    batch = TelemetryBatch(
        fleet=FLEET,
        device="pump-01",
        readings=[
            Reading(seq=1, ts=NOW - 1, values={"temp": 1.0}),
            Reading(seq=2, ts=NOW + 2 * 86_400, values={"temp": 2.0}),  # broken clock
            Reading(seq=3, ts=NOW + 60, values={"temp": 3.0}),  # small skew: fine
        ],
    )
    rig.send(T.telemetry("pump-01"), batch)
    rig.settle(1)
    assert [p.field_dict["seq"] for p in rig.sink.by_measurement("telemetry")] == [1, 3]
    assert rig.service.stats.rejected_readings == {"future_timestamp": 1}
    assert rig.service.stats.rejected == {}


def test_predictions_status_and_round_summaries(rig: Rig) -> None:
    rig.send(
        T.prediction("pump-01"),
        Prediction(
            fleet=FLEET,
            device="pump-01",
            ts=NOW - 5,
            model_version=3,
            rul=9.0,
            failure_probability=0.9,
            horizon=20,
            alert=True,
        ),
    )
    rig.send(
        T.status("pump-02"),
        DeviceStatus(fleet=FLEET, device="pump-02", state="online", ts=NOW - 1, buffer_depth=4),
        retain=True,
    )
    rig.send(T.status("pump-01"), DeviceStatus(fleet=FLEET, device="pump-01", state="offline"))
    rig.send(
        T.round_summary,
        RoundSummary(
            fleet=FLEET,
            round_id=2,
            task="train",
            ts=NOW - 2,
            outcome="completed",
            version=3,
            participants=2,
            rejected=1,
            rejected_by_reason={"replay": 1},
        ),
    )
    rig.send(T.status("pump-02"), b"", retain=True)  # retained status cleared: ignored
    rig.settle(5)
    assert sorted(p.measurement for p in rig.sink.points) == [
        "alert",
        "device_health",
        "device_health",
        "fl_round",
        "prediction",
    ]
    offline = [p for p in rig.sink.by_measurement("device_health") if p.field_dict["online"] == 0]
    assert offline[0].time_ns == int(NOW * 1e9)  # stamped with the ingest clock
    (round_point,) = rig.sink.by_measurement("fl_round")
    assert round_point.field_dict["rejected_replay"] == 1
    assert rig.service.stats.ignored == 1 and rig.service.stats.rejected == {}


def test_retained_status_is_ingested_on_subscribe() -> None:
    broker = InMemoryBroker()
    pub = broker.transport("agent")
    pub.connect(on_message=lambda m: None)
    status = DeviceStatus(fleet=FLEET, device="d1", state="online", ts=NOW - 30)
    pub.publish(T.status("d1"), encode_message(status), retain=True)
    sink = MemorySink()
    service = IngestService(broker.transport("ingest"), sink, fleet=FLEET, clock=clock)
    service.start()
    try:
        assert wait_until(lambda: len(sink.points) == 1, timeout=5.0)
        assert sink.points[0].measurement == "device_health"
    finally:
        service.stop(timeout=5.0)
        pub.close()


def test_dedup_memory_is_bounded_per_device_and_in_devices() -> None:
    with make_rig(dedup_window=4, max_tracked_devices=2) as rig:
        rig.send(T.telemetry("a"), telemetry("a", range(10)))
        rig.send(T.telemetry("a"), telemetry("a", [8, 9]))  # still in the window: duplicates
        rig.send(T.telemetry("a"), telemetry("a", [0]))  # evicted long ago: accepted again
        rig.send(T.telemetry("b"), telemetry("b", [0]))
        rig.send(T.telemetry("c"), telemetry("c", [0]))  # evicts device "a" (LRU)
        rig.send(T.telemetry("a"), telemetry("a", [9]))  # "a" forgotten: accepted
        rig.settle(6)
        assert rig.service.stats.duplicates == 2
        assert len(rig.sink.by_measurement("telemetry")) == 10 + 1 + 1 + 1 + 1
        dedup = rig.service.rules.dedup
        assert set(dedup.devices) == {"c", "a"}
        assert all(dedup.remembered(device) <= 4 for device in dedup.devices)


def test_full_queue_rejects_and_counts_instead_of_blocking() -> None:
    sink = MemorySink()
    service = IngestService(
        InMemoryBroker().transport("x"),
        sink,
        fleet=FLEET,
        queue_size=2,
        enqueue_timeout_s=0.01,
        clock=clock,
    )
    # Not started: nothing drains the queue.
    for seq in range(5):
        service.handle(InboundMessage(T.telemetry("d"), encode_message(telemetry("d", [seq]))))
    assert service.stats.rejected == {"queue_full": 3}
    assert service.stats.received == 5 and service.stats.queue_depth == 2


def test_sink_failures_are_retried_without_losing_points() -> None:
    with make_rig(sink_retry_s=0.01) as rig:
        rig.sink.fail_next = 3
        rig.send(T.telemetry("d"), telemetry("d", range(4)))
        assert wait_until(lambda: rig.service.stats.points_written == 4, timeout=5.0)
        assert rig.service.stats.write_errors == 3
        assert len(rig.sink.points) == 4 and rig.service.stats.points_lost == 0


def test_shared_subscription_filters() -> None:
    service = IngestService(
        InMemoryBroker().transport("x"), MemorySink(), fleet=FLEET, shared_group="ingest"
    )
    assert service.subscriptions == [
        "$share/ingest/fedge/v1/demo/devices/+/telemetry",
        "$share/ingest/fedge/v1/demo/devices/+/prediction",
        "$share/ingest/fedge/v1/demo/devices/+/status",
        "$share/ingest/fedge/v1/demo/devices/+/events",
        "$share/ingest/fedge/v1/demo/rounds/summary",
    ]


def test_end_to_end_into_sqlite_with_duplicates(tmp_path: Path) -> None:
    broker = InMemoryBroker()
    sink = SqliteSink(tmp_path / "fedge.db")
    service = IngestService(broker.transport("ingest"), sink, fleet=FLEET, clock=clock)
    service.start()
    pub = broker.transport("agent")
    pub.connect(on_message=lambda m: None)
    try:
        for _ in range(3):  # every batch delivered three times
            for start in range(0, 100, 10):
                pub.publish(
                    T.telemetry("pump-01"),
                    encode_message(telemetry("pump-01", range(start, start + 10))),
                )
        assert wait_until(
            lambda: service.stats.received == 30 and service.stats.accepted == 30, timeout=5.0
        )
        service.stop(timeout=5.0)
        assert sink.count("telemetry") == 100
        assert service.stats.duplicates == 200 and service.stats.points_written == 100
        seqs = [p.field_dict["seq"] for p in sink.query("telemetry")]
        assert seqs == list(range(100))
    finally:
        pub.close()
        service.stop(timeout=1.0)
        sink.close()


class LineProtocolSink(MemorySink):
    """A MemorySink that declares it writes line protocol, keeping what it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[Sequence[Point]] = []

    @property
    def accepts_line_protocol(self) -> bool:
        return True

    def write(self, points: Sequence[Point]) -> None:
        self.handed.append(points)
        super().write(points)


def test_sinks_declare_whether_they_take_line_protocol(tmp_path: Path) -> None:
    sqlite = SqliteSink(tmp_path / "x.db")
    try:
        assert (MemorySink().accepts_line_protocol, sqlite.accepts_line_protocol) == (False, False)
    finally:
        sqlite.close()
    assert LineProtocolSink().accepts_line_protocol is True


@pytest.mark.parametrize("sink_type", [MemorySink, LineProtocolSink])
def test_telemetry_is_preformatted_only_for_a_line_protocol_sink(
    sink_type: type[MemorySink],
) -> None:
    broker = InMemoryBroker()
    sink = sink_type()
    service = IngestService(broker.transport("ingest"), sink, fleet=FLEET, clock=clock)
    batch = telemetry("pump-01", range(3))
    service.start()
    try:
        service.handle(InboundMessage(T.telemetry("pump-01"), encode_message(batch)))
        assert wait_until(lambda: service.stats.points_written == 3, timeout=5.0)
    finally:
        service.stop(timeout=5.0)
    assert sink.points == telemetry_points(batch)
    if isinstance(sink, LineProtocolSink):
        (handed,) = sink.handed
        assert isinstance(handed, PointBatch)
        assert handed.lines == [p.to_line().encode() for p in telemetry_points(batch)]
