"""InfluxSink against a real VictoriaMetrics (InfluxDB v2 write API): every point exactly once.

VictoriaMetrics stores each field as its own series named ``<measurement>_<field>``
with the tags as labels, at millisecond precision; ``/api/v1/export`` returns every
raw sample (duplicates included), which is what "none twice" is checked against.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aggregator.sinks import InfluxSink, InfluxTarget
from fedge.messages import Prediction, Reading, TelemetryBatch
from fedge.points import Point, prediction_points, telemetry_points
from fedge_app.servers import VictoriaMetrics
from tests.support import wait_until

pytestmark = pytest.mark.integration

FLEET = "itest"
SENSORS = ("temp", "vibration", "pressure")


def make_batch(device: str, start_seq: int, count: int, t0: float) -> TelemetryBatch:
    return TelemetryBatch(
        fleet=FLEET,
        device=device,
        site="plant-a",
        readings=[
            Reading(
                seq=s,
                ts=t0 + s * 0.01,  # distinct milliseconds per device (VictoriaMetrics keeps ms)
                cycle=s // 10,
                values={"temp": 20.0 + s % 7, "vibration": 0.001 * s, "pressure": 3.0},
            )
            for s in range(start_seq, start_seq + count)
        ],
    )


def expected_samples(points: list[Point]) -> Counter[tuple[str, str, int]]:
    """(series name, device, ms timestamp) for every field of every point.

    VictoriaMetrics keeps string fields too (as the value 0), so they count as well.
    """
    out: Counter[tuple[str, str, int]] = Counter()
    for p in points:
        for key, _ in p.fields:
            out[(f"{p.measurement}_{key}", p.tag_dict["device"], p.time_ns // 1_000_000)] += 1
    return out


def exported_samples(vm: VictoriaMetrics) -> Counter[tuple[str, str, int]]:
    vm.force_flush()
    out: Counter[tuple[str, str, int]] = Counter()
    for series in vm.export('{__name__=~"telemetry_.*|prediction_.*|alert_.*"}'):
        name, device = series["metric"]["__name__"], series["metric"]["device"]
        for ts in series["timestamps"]:
            out[(name, device, int(ts))] += 1
    return out


def assert_exactly_once(vm: VictoriaMetrics, points: list[Point], *, timeout: float) -> None:
    expected = expected_samples(points)
    wait_until(
        lambda: sum(exported_samples(vm).values()) >= sum(expected.values()),
        timeout=timeout,
        interval=0.2,
    )
    got = exported_samples(vm)
    missing = expected - got
    doubled = {k: n for k, n in got.items() if n > 1}
    assert not missing, f"{sum(missing.values())} sample(s) lost, e.g. {list(missing)[:3]}"
    assert not doubled, f"{len(doubled)} sample(s) written twice, e.g. {list(doubled)[:3]}"
    assert got == expected


def make_sink(vm: VictoriaMetrics, spool: Path, **kwargs: object) -> InfluxSink:
    options: dict[str, object] = {
        "batch_size": 500,
        "flush_interval_ms": 100,
        "max_retries": 2,
        "retry_interval_ms": 200,
        "max_retry_delay_ms": 500,
        "max_retry_time_ms": 2_000,
        "request_timeout_ms": 5_000,
        "replay_backoff_s": (0.2, 1.0),
        "close_timeout_s": 10.0,
    }
    options.update(kwargs)
    return InfluxSink(
        InfluxTarget.v2(vm.url, org="fedge", bucket="fedge", token="test-token"),  # noqa: S106 - test server ignores it
        spool,
        **options,  # type: ignore[arg-type]
    )


def test_every_point_written_exactly_once(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    t0 = time.time() - 600
    sink = make_sink(victoria_metrics, tmp_path / "spool.db")
    points: list[Point] = []
    try:
        for device in (f"pump-{i:02d}" for i in range(10)):
            for start in range(0, 200, 50):
                batch = telemetry_points(make_batch(device, start, 50, t0))
                sink.write(batch)
                points += batch
            pred = Prediction(
                fleet=FLEET,
                device=device,
                ts=t0 + 5,
                model_version=1,
                rul=40.0,
                failure_probability=0.7,
                horizon=20,
                alert=True,
            )
            preds = prediction_points(pred)
            sink.write(preds)
            points += preds
        sink.flush(timeout=30)
        stats = sink.stats
        assert stats.points_written == len(points) == 10 * 200 + 10 * 2
        assert stats.points_pending == 0 and stats.write_errors == 0
        assert stats.batches_written >= 5  # the client really batched (500 points a batch)
    finally:
        sink.close()
    assert len(sink.spool) == 0
    assert_exactly_once(victoria_metrics, points, timeout=20)


def test_outage_of_20s_loses_nothing(victoria_metrics: VictoriaMetrics, tmp_path: Path) -> None:
    """Writes continue while the server is down for 20 s; the spool replays everything."""
    t0 = time.time() - 3600
    sink = make_sink(victoria_metrics, tmp_path / "spool.db")
    points: list[Point] = []
    stop = threading.Event()
    max_pending = 0
    errors: list[BaseException] = []

    def writer() -> None:
        nonlocal max_pending
        seq = 0
        try:
            while not stop.is_set():
                for device in ("pump-a", "pump-b", "pump-c"):
                    batch = telemetry_points(make_batch(device, seq, 5, t0))
                    sink.write(batch)
                    points.extend(batch)
                seq += 5
                max_pending = max(max_pending, sink.stats.points_pending)
                time.sleep(0.05)
        except BaseException as exc:  # surface writer failures in the test thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(2.0)
        victoria_metrics.stop()
        outage_start = len(points)
        time.sleep(20.0)
        assert sink.breaker_open, "the sink should have noticed the outage"
        written_during_outage = len(points) - outage_start
        victoria_metrics.start()
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join()
    try:
        assert not errors, errors
        assert written_during_outage > 500  # writes never blocked or failed meanwhile
        assert max_pending >= written_during_outage // 2  # ...they went to the spool
        sink.flush(timeout=30)
        stats = sink.stats
        assert stats.points_pending == 0
        assert stats.write_errors + stats.retries > 0
        assert stats.points_written == len(points)
    finally:
        sink.close()
    assert_exactly_once(victoria_metrics, points, timeout=20)


def test_spooled_points_survive_a_sink_restart(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    """Close while the server is down: the data stays on disk and the next sink sends it."""
    t0 = time.time() - 7200
    spool = tmp_path / "spool.db"
    victoria_metrics.stop()
    first = make_sink(victoria_metrics, spool, close_timeout_s=1.0)
    points = telemetry_points(make_batch("pump-x", 0, 300, t0))
    first.write(points[:150])
    first.write(points[150:])
    first.close()  # cannot flush: the server is down
    assert first.stats.points_pending == 300
    assert first.stats.points_written == 0

    victoria_metrics.start()
    second = make_sink(victoria_metrics, spool)
    try:
        assert second.stats.points_pending == 300
        second.flush(timeout=30)
        assert second.stats.points_written == 300 and second.stats.points_pending == 0
    finally:
        second.close()
    assert_exactly_once(victoria_metrics, points, timeout=20)


class _FakeInfluxServer(ThreadingHTTPServer):
    """Answers every write with ``status``: 400 is what InfluxDB says to unparsable lines."""

    def __init__(self, status: int) -> None:
        self.bodies: list[bytes] = []
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                outer.bodies.append(self.rfile.read(length))
                outer.requests.append((self.path, self.headers.get("Authorization")))
                payload = b'{"code":"invalid","message":"unable to parse line"}'
                self.send_response(status)
                if status == 204:
                    self.end_headers()
                    return
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        super().__init__(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> _FakeInfluxServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


def test_server_rejected_lines_go_to_dead_letter_not_replayed(tmp_path: Path) -> None:
    with _FakeInfluxServer(400) as server:
        sink = InfluxSink(
            InfluxTarget.v1(
                server.url,
                database="fedge",
                retention_policy="autogen",
                username="u",
                password="p",  # noqa: S106 - credential for a fake local server
            ),
            tmp_path / "spool.db",
            flush_interval_ms=50,
            replay_backoff_s=(0.05, 0.2),
        )
        try:
            line = Point.of("telemetry", {"device": "d"}, {"v": 1.0}, 1_700_000_000_000_000_000)
            sink.write([line])
            assert wait_until(lambda: sink.stats.points_rejected == 1, timeout=10)
            sink.flush(timeout=5)  # nothing pending: a rejected line is not retried forever
            time.sleep(0.5)
            assert server.bodies == [line.to_line().encode()]  # sent once, never replayed
            assert sink.spool.dead_lines() == [line.to_line().encode()]
            # InfluxDB 1.8 compatibility: v2 endpoint, bucket "db/rp", token "user:password".
            ((path, auth),) = server.requests
            assert path.startswith("/api/v2/write?") and "bucket=fedge%2Fautogen" in path
            assert auth == "Token u:p"
            stats = sink.stats
            assert (stats.points_written, stats.points_pending, stats.write_errors) == (0, 0, 1)
            assert stats.last_error is not None and "HTTP 400" in stats.last_error
        finally:
            sink.close()


def test_batch_the_client_never_answers_is_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the client's pipeline swallowed a batch, the spool still gets it written."""
    with _FakeInfluxServer(204) as server:
        sink = InfluxSink(
            InfluxTarget.v2(server.url, org="o", bucket="b", token=""),
            tmp_path / "spool.db",
            flush_interval_ms=50,
        )
        try:
            real_submit = sink._submit
            swallowed: list[list[bytes]] = []

            def swallow_first(lines: list[bytes]) -> None:
                if not swallowed:
                    swallowed.append(lines)  # lost inside the client: no callback, ever
                    return
                real_submit(lines)

            monkeypatch.setattr(sink, "_submit", swallow_first)
            monkeypatch.setattr(sink, "_stale_after_s", 0.3)
            points = telemetry_points(make_batch("pump-z", 0, 20, time.time()))
            sink.write(points)
            sink.flush(timeout=10)
            assert swallowed and sink.stats.points_written == 20
            sent = b"\n".join(server.bodies).split(b"\n")
            assert sorted(sent) == sorted(p.to_line().encode() for p in points)
        finally:
            sink.close()
