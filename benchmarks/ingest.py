"""Ingestion benchmark: MQTT (Mosquitto) → VictoriaMetrics (InfluxDB v2 write API), zero loss.

    python benchmarks/ingest.py [--messages 10000] [--baseline-messages 5000] [--devices 50]

Two paths, each against its own fresh Mosquitto and VictoriaMetrics (temp dirs, free
127.0.0.1 ports), fed by a publisher in a separate process (its own GIL) that sends
``TelemetryBatch`` JSON built with fedge's wire models, QoS 1, unique ``(device, seq)``:

* **fedge**: :class:`~aggregator.ingest.IngestService` on the real paho transport
  (:class:`~broker.mqtt_transport.PahoTransport`) + :class:`~aggregator.sinks.InfluxSink`
  (durable SQLite spool in the temp dir, fsync per append, removal from the spool
  only in the success callback), with the library's default settings unless given.
* **baseline**: the naive pipeline people write first (and what Telegraf's
  ``mqtt_consumer`` amounts to per message): the paho ``on_message`` callback parses
  the JSON (``json.loads``, no validation), formats line protocol and does one
  *synchronous* influxdb-client write of that message's points before it returns.

Time runs from the first publish until the server has acknowledged every point;
then VictoriaMetrics is flushed (``/internal/force_flush``) and every raw sample of
``telemetry_seq`` (one per point) is read back with ``/api/v1/export``: ``stored``
counts distinct ``(device, seq, timestamp)`` samples and ``duplicates`` the extra
copies. One point is one line: one reading of one device with all its sensor fields.

The machine's load average is recorded too: on a shared machine other work competes
for the same cores.

Prints a table and writes ``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from aggregator.ingest import IngestService
from aggregator.sinks import InfluxSink, InfluxTarget
from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.messages import Reading, TelemetryBatch, encode_message
from fedge.topics import Topics
from fedge_app.servers import Mosquitto, VictoriaMetrics, find_binary

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ingest.json"
MOSQUITTO = find_binary("mosquitto")
VICTORIA = find_binary("victoria-metrics")
FLEET = "bench"
SITE = "plant-a"
SINK_SETTINGS = ("batch_size", "flush_interval_ms", "max_inflight_points")
INGEST_SETTINGS = ("batch_messages", "queue_size")

log = logging.getLogger("benchmarks.ingest")


@dataclass(frozen=True)
class Plan:
    """What the publisher sends: ``messages`` batches dealt round-robin over devices."""

    messages: int
    devices: int
    sensors: int
    readings: int
    t0: float  # device clock of the first reading (Unix seconds)

    @property
    def points(self) -> int:
        return self.messages * self.readings


@dataclass
class PathResult:
    path: str
    messages: int
    published: int = 0
    stored: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    points_per_s: float = 0.0
    publish_seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


# Loopback services -----------------------------------------------------------------------
# No inflight window to the subscriber (TCP and the subscriber's own bounded queue push
# back instead): with ``max_inflight_messages 100`` (as in ``broker/mosquitto.conf``)
# Debian's Mosquitto 2.0.11 once left the last 13 of 10,000 QoS 1 messages undelivered to
# a connected, acknowledging subscriber, the symptom of the inflight-quota bugs fixed in
# Mosquitto 2.0.13 (eclipse-mosquitto/mosquitto#2362). The queue bound is large, not 0
# (unlimited), whose handling had its own bugs before 2.0.17/2.0.22.
MOSQUITTO_EXTRAS = (
    "max_inflight_messages 0",
    "max_queued_messages 10000000",
    "max_queued_bytes 0",
)


def mosquitto(root: Path) -> Mosquitto:
    """Mosquitto 2.x on a free loopback port, never dropping on its own."""
    return Mosquitto(root / "mosquitto", extra_config=MOSQUITTO_EXTRAS, start_timeout=20.0)


def victoria_metrics(root: Path) -> VictoriaMetrics:
    """A VictoriaMetrics single node on a free loopback port, data in ``root``."""
    return VictoriaMetrics(root / "victoria-metrics", start_timeout=30.0)


def read_back(vm: VictoriaMetrics) -> tuple[int, int, int]:
    """(distinct samples, duplicate samples, series) of ``telemetry_seq``: one per point."""
    vm.force_flush()
    seen: Counter[tuple[str, int, int]] = Counter()
    series = 0
    for row in vm.export('{__name__="telemetry_seq"}', timeout=120.0):
        series += 1
        device = row["metric"]["device"]
        for value, ts in zip(row["values"], row["timestamps"], strict=True):
            seen[(device, int(value), int(ts))] += 1
    return len(seen), sum(seen.values()) - len(seen), series


def tool_version(command: list[str]) -> str:
    """First line a server binary prints about its version (best effort)."""
    try:
        out = subprocess.run(command, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0][:120] if text else "unknown"


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc), 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by this process and a few others between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {"ingester": time.process_time()}
        now.update({name: cpu_seconds(pid) for name, pid in self.pids.items()})
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        end = self._now()
        self.used = {k: round(end[k] - self._start[k], 2) for k in end}


# Publisher (separate process) ------------------------------------------------------------
def build_payloads(plan: Plan) -> list[tuple[str, bytes]]:
    """``TelemetryBatch`` JSON from fedge's own models; unique ``(device, seq)``."""
    topics = Topics(FLEET)
    rng = random.Random(1234)
    names = [f"s{i:02d}" for i in range(plan.sensors)]
    base = [rng.uniform(1.0, 500.0) for _ in names]
    payloads: list[tuple[str, bytes]] = []
    for m in range(plan.messages):
        d, k = m % plan.devices, m // plan.devices
        device = f"dev-{d:04d}"
        readings = [
            Reading(
                seq=seq,
                # 10 ms apart per device: distinct in VictoriaMetrics' ms precision.
                ts=round(plan.t0 + seq * 0.01 + d * 1e-4, 6),
                cycle=seq // 50,
                values={
                    n: round(b + rng.gauss(0.0, 0.02 * b), 4)
                    for n, b in zip(names, base, strict=True)
                },
            )
            for seq in range(k * plan.readings, (k + 1) * plan.readings)
        ]
        batch = TelemetryBatch(fleet=FLEET, device=device, site=SITE, unit=d, readings=readings)
        payloads.append((topics.telemetry(device), encode_message(batch)))
    return payloads


def publisher_main(port: int, plan: Plan, ready: Any, go: Any, out: Any) -> None:
    """Build every payload, report ready, wait for go, publish all at QoS 1, report times."""
    try:
        payloads = build_payloads(plan)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-publisher"
        )
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(0)
        connected = threading.Event()
        client.on_connect = lambda *a: connected.set()
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        try:
            if not connected.wait(20):
                raise TimeoutError("publisher could not connect")
            ready.put(("ready", sum(len(p) for _, p in payloads)))
            if not go.wait(120):
                raise TimeoutError("never told to go")
            t_first = time.monotonic()
            infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
            deadline = time.monotonic() + 600
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            acked = sum(1 for info in infos if info.is_published())
            out.put(("done", t_first, time.monotonic(), acked))
        finally:
            client.disconnect()
            client.loop_stop()
    except BaseException as exc:  # report, never leave the parent waiting
        out.put(("error", repr(exc)))
        ready.put(("error", repr(exc)))


class Publisher:
    """The publisher process: started, waited for, always stopped."""

    def __init__(self, port: int, plan: Plan) -> None:
        ctx = mp.get_context("spawn")
        self.ready: Any = ctx.Queue()
        self.out: Any = ctx.Queue()
        self.go = ctx.Event()
        self.proc = ctx.Process(
            target=publisher_main, args=(port, plan, self.ready, self.go, self.out), daemon=True
        )
        self.payload_bytes = 0

    def __enter__(self) -> Publisher:
        self.proc.start()
        try:
            kind, *rest = self.ready.get(timeout=600)
            if kind != "ready":
                raise RuntimeError(f"publisher failed: {rest}")
        except BaseException:
            self.__exit__()
            raise
        self.payload_bytes = int(rest[0])
        return self

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    def start(self) -> None:
        self.go.set()

    def result(self, timeout: float) -> tuple[float, float, int]:
        """(monotonic time of the first publish, of the last PUBACK, messages acknowledged)."""
        kind, *rest = self.out.get(timeout=timeout)
        if kind != "done":
            raise RuntimeError(f"publisher failed: {rest}")
        return float(rest[0]), float(rest[1]), int(rest[2])

    def __exit__(self, *exc: object) -> None:
        self.proc.join(timeout=10 if self.go.is_set() else 0.1)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def finish(
    result: PathResult,
    plan: Plan,
    times: tuple[float, float, int],
    t_end: float,
    vm: VictoriaMetrics,
) -> None:
    t_first, t_acked, acked = times
    result.published = acked * plan.readings
    result.stored, result.duplicates, series = read_back(vm)
    result.seconds = t_end - t_first
    result.publish_seconds = t_acked - t_first
    result.points_per_s = result.stored / result.seconds if result.seconds > 0 else 0.0
    result.extra["series"] = series


# The fedge path --------------------------------------------------------------------------
def given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """Keyword arguments set on the command line (the rest keep the library defaults)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def effective(cls: Any, kwargs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The values a constructor really got: the given ones, else its signature defaults."""
    params = inspect.signature(cls).parameters
    return {n: kwargs.get(n, params[n].default) for n in names}


def run_fedge(plan: Plan, args: argparse.Namespace, console: Console) -> PathResult:
    result = PathResult("fedge", plan.messages)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-ingest-") as tmp:
        root = Path(tmp)
        with mosquitto(root) as broker, victoria_metrics(root) as vm:
            port = broker.port
            sink = InfluxSink(
                InfluxTarget.v2(vm.url, org="fedge", bucket="fedge", token=""),
                root / "spool.db",
                **given(args, SINK_SETTINGS),
            )
            try:
                transport = PahoTransport(
                    BrokerEndpoint.from_url(f"mqtt://127.0.0.1:{port}"), client_id="bench-ingest"
                )
                service = IngestService(
                    transport, sink, fleet=FLEET, **given(args, INGEST_SETTINGS)
                )
                try:
                    with Publisher(port, plan) as publisher:
                        result.extra["payload_bytes"] = publisher.payload_bytes
                        service.start()
                        cpu = CpuMeter(
                            {
                                "publisher": publisher.pid,
                                "mosquitto": broker.pid or 0,
                                "victoria-metrics": vm.pid or 0,
                            }
                        )
                        cpu.start()
                        publisher.start()
                        done = wait_for(
                            lambda: (
                                sink.stats.points_written >= plan.points
                                or service.stats.rejected_total > 0
                            ),
                            timeout=args.timeout,
                        )
                        t_end = time.monotonic()
                        cpu.stop()
                        times = publisher.result(timeout=60)
                    if not done:
                        console.print(
                            f"[red]fedge: not all points stored in {args.timeout}s "
                            f"(ingester received {service.stats.received} of "
                            f"{times[2]} messages the broker acknowledged)"
                        )
                    service.stop(timeout=30)
                finally:
                    service.stop(timeout=5)
            finally:
                sink.close()
            result.cpu_seconds = cpu.used
            result.extra.update(
                ingest=asdict(service.stats),
                sink={k: v for k, v in asdict(sink.stats).items() if k != "last_error"},
            )
            finish(result, plan, times, t_end, vm)
    return result


# The naive baseline ----------------------------------------------------------------------
def _escape_key(text: str) -> str:
    return text.replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def naive_lines(payload: bytes) -> list[str]:
    """What a hand-written subscriber does: json.loads, one f-string line per reading."""
    doc = json.loads(payload)
    tags = f"device={_escape_key(doc['device'])},fleet={_escape_key(doc['fleet'])}"
    if doc.get("site"):
        tags += f",site={_escape_key(doc['site'])}"
    if doc.get("unit") is not None:
        tags += f",unit={doc['unit']}"
    out = []
    for r in doc["readings"]:
        fields = ",".join(f"{_escape_key(k)}={float(v)!r}" for k, v in r["values"].items())
        fields += f",seq={int(r['seq'])}i"
        if r.get("cycle") is not None:
            fields += f",cycle={int(r['cycle'])}i"
        out.append(f"telemetry,{tags} {fields} {round(r['ts'] * 1_000_000) * 1000}")
    return out


def run_baseline(plan: Plan, args: argparse.Namespace, console: Console) -> PathResult:
    result = PathResult("baseline", plan.messages)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-baseline-") as tmp:
        root = Path(tmp)
        with mosquitto(root) as broker, victoria_metrics(root) as vm:
            port = broker.port
            client = InfluxDBClient(url=vm.url, token="", org="fedge", timeout=30_000)
            write_api = client.write_api(write_options=SYNCHRONOUS)
            lock = threading.Lock()
            written = failures = 0
            all_done = threading.Event()
            t_last = 0.0

            def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
                nonlocal written, failures, t_last
                try:
                    lines = naive_lines(msg.payload)
                    write_api.write(bucket="fedge", org="fedge", record=lines)
                except Exception as exc:  # the naive path logs and moves on: a loss
                    failures += 1
                    log.warning("baseline write failed: %s", exc)
                    return
                with lock:
                    written += len(lines)
                    if written >= plan.points:
                        t_last = time.monotonic()
                        all_done.set()

            subscribed = threading.Event()
            sub = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-baseline"
            )
            sub.on_message = on_message
            sub.on_subscribe = lambda *a: subscribed.set()
            sub.on_connect = lambda c, *a: c.subscribe(Topics(FLEET).all_telemetry, 1)
            sub.connect("127.0.0.1", port, keepalive=60)
            sub.loop_start()
            try:
                if not subscribed.wait(20):
                    raise TimeoutError("baseline subscriber did not subscribe")
                with Publisher(port, plan) as publisher:
                    result.extra["payload_bytes"] = publisher.payload_bytes
                    cpu = CpuMeter(
                        {
                            "publisher": publisher.pid,
                            "mosquitto": broker.pid or 0,
                            "victoria-metrics": vm.pid or 0,
                        }
                    )
                    cpu.start()
                    publisher.start()
                    if not all_done.wait(args.timeout):
                        console.print(f"[red]baseline: not all points stored in {args.timeout}s")
                    t_end = t_last or time.monotonic()
                    cpu.stop()
                    times = publisher.result(timeout=60)
            finally:
                sub.disconnect()
                sub.loop_stop()
                write_api.close()
                client.close()
            result.cpu_seconds = cpu.used
            result.extra["write_failures"] = failures
            finish(result, plan, times, t_end, vm)
    return result


# Main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="fedge path: batches")
    parser.add_argument("--baseline-messages", type=int, default=5_000, help="baseline batches")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--sensors", type=int, default=15)
    parser.add_argument("--readings", type=int, default=100, help="readings per batch")
    parser.add_argument("--timeout", type=float, default=120.0, help="per path, seconds")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    tuning = parser.add_argument_group("fedge settings (default: the library's own defaults)")
    tuning.add_argument("--batch-size", type=int, help="InfluxSink: points per request")
    tuning.add_argument("--flush-interval-ms", type=int, help="InfluxSink: partial batch wait")
    tuning.add_argument("--max-inflight-points", type=int, help="InfluxSink: memory bound")
    tuning.add_argument("--batch-messages", type=int, help="IngestService: messages per write")
    tuning.add_argument("--queue-size", type=int, help="IngestService: bounded queue")
    args = parser.parse_args(argv)
    for name in ("messages", "baseline_messages", "devices", "sensors", "readings"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= args.sensors <= 256:
        parser.error("--sensors must be 1..256 (the wire model's limit)")
    if MOSQUITTO is None or VICTORIA is None:
        parser.error("mosquitto and victoria-metrics are needed (apt-get install both)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(width=150)

    # Device clocks a day back: inside any retention, never "from the future".
    t0 = float(int(time.time()) - 86_400)
    fedge_plan = Plan(args.messages, args.devices, args.sensors, args.readings, t0)
    base_plan = Plan(args.baseline_messages, args.devices, args.sensors, args.readings, t0)
    load_before = os.getloadavg()

    console.print(
        f"fedge: {fedge_plan.messages} batches × {args.readings} readings × {args.sensors} "
        f"sensors from {args.devices} devices ({fedge_plan.points:,} points)"
    )
    fedge = run_fedge(fedge_plan, args, console)
    baseline = None
    if not args.skip_baseline:
        console.print(f"baseline: {base_plan.messages} batches ({base_plan.points:,} points)")
        baseline = run_baseline(base_plan, args, console)
    load_after = os.getloadavg()

    ratio = (
        fedge.points_per_s / baseline.points_per_s if baseline and baseline.points_per_s else None
    )
    table = Table(title="MQTT → VictoriaMetrics ingestion (InfluxDB v2 write API), QoS 1")
    columns = ("path", "points", "seconds", "points/s", "stored/published", "duplicates", "ratio")
    for col in columns:
        table.add_column(col, justify="left" if col == "path" else "right")
    rows = [(fedge, "fedge (IngestService + InfluxSink)", f"{ratio:.2f}×" if ratio else "-")]
    if baseline is not None:
        rows.append((baseline, "naive (1 sync write per message)", "1.00×"))
    for res, label, vs in rows:
        table.add_row(
            label,
            f"{res.stored:,}",
            f"{res.seconds:.2f}",
            f"{res.points_per_s:,.0f}",
            f"{res.stored:,}/{res.published:,}",
            str(res.duplicates),
            vs,
        )
    console.print(table)
    for res, _label, _ratio in rows:
        cpu = ", ".join(f"{k} {v:.1f}s" for k, v in res.cpu_seconds.items())
        console.print(
            f"{res.path}: CPU during the run: {cpu}; all published and acknowledged by the "
            f"broker after {res.publish_seconds:.2f}s"
        )
    console.print(
        f"load average (1 min) before/after: {load_before[0]:.2f}/{load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )

    sink_settings = effective(InfluxSink, given(args, SINK_SETTINGS), SINK_SETTINGS)
    if sink_settings["max_inflight_points"] is None:  # InfluxSink's default: 10 batches
        sink_settings["max_inflight_points"] = 10 * sink_settings["batch_size"]
    payload = {
        "benchmark": "ingest",
        "points_per_s": round(fedge.points_per_s, 1),
        "baseline_points_per_s": round(baseline.points_per_s, 1) if baseline else None,
        "ratio_vs_baseline": round(ratio, 2) if ratio else None,
        "published": fedge.published,
        "stored": fedge.stored,
        "duplicates": fedge.duplicates,
        "lost": fedge.published - fedge.stored,
        "seconds": round(fedge.seconds, 3),
        "fedge": asdict(fedge),
        "baseline": asdict(baseline) if baseline else None,
        "config": {
            "messages": args.messages,
            "baseline_messages": args.baseline_messages if baseline else None,
            "devices": args.devices,
            "sensors": args.sensors,
            "readings_per_batch": args.readings,
            "fields_per_point": args.sensors + 2,
            "qos": 1,
            "influx_sink": sink_settings,
            "ingest_service": effective(
                IngestService, given(args, INGEST_SETTINGS), INGEST_SETTINGS
            ),
            "spool": "SQLite WAL, synchronous=FULL (fsync per append)",
            "mosquitto": f"{tool_version([str(MOSQUITTO), '-h'])}: max_inflight_messages 0, "
            "max_queued_messages 10000000",
            "victoria_metrics": tool_version(
                ["dpkg-query", "-W", "-f", "victoria-metrics ${Version}", "victoria-metrics"]
            ),
            "timing": "first publish -> last point acknowledged by the server (HTTP 204)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(load_after[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0 if fedge.stored == fedge.published and fedge.duplicates == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
