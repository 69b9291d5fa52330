"""Sensor sources: readings per second each one sustains, and the vibration feature cost.

    python benchmarks/sources.py [--seconds 3] [--channels 8]

Everything runs pinned to one CPU core (the benchmark process and every thread and
child it starts: the Modbus and OPC UA servers, Mosquitto, the command's program),
so the numbers are what one core does with the device *and* fedge on it, a
conservative bound. For each source the producer runs flat out and ``read()`` is
called in a loop (sleeping 1 ms when it returns None):

* ``csv``: a 50 000-row file replayed with ``speed = 0``;
* ``command``: a Python child printing flat JSON objects as fast as it can;
* ``modbus``: a pymodbus TCP server, polled at the smallest ``poll_interval_s``
  allowed, 0.001 s (one request per poll: the channels are adjacent registers), so
  ~1000/s means the poller keeps that pace, not that it could not go faster;
* ``mqtt``: a paho publisher sending one JSON payload (all channels) per message, QoS 0,
  to a local Mosquitto;
* ``opcua``: an asyncua server rewriting its variables in a loop, 10 ms publishing.

mqtt and opcua coalesce updates (one reading per ``read()`` from the newest values),
so for them readings/s is bounded by the 1 ms read loop (mqtt) or the publishing
interval (opcua); "channel updates/s" is how many channel values they took in. The agent
samples every ``sample_interval_s`` (0.1 s by default): any source above 10/s keeps up.
Then :func:`fedge.features.vibration_features` on a 4096-sample snapshot at 10 kHz
(target 5 ms). Prints a table and writes ``benchmarks/results/sources.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edge_agent.sources.base import BaseSource  # noqa: E402
from edge_agent.sources.command import CommandSource  # noqa: E402
from edge_agent.sources.csv import CsvSource  # noqa: E402
from edge_agent.sources.modbus import ModbusSource  # noqa: E402
from edge_agent.sources.mqtt import MqttSource  # noqa: E402
from edge_agent.sources.opcua import OpcuaSource  # noqa: E402
from fedge.features import VibrationConfig, vibration_features  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VIBRATION_TARGET_MS = 5.0
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


Measured = tuple[float, float | None]  # readings/s, channel updates/s (mqtt, opcua)


def measure(src: BaseSource, seconds: float, *, warmup_s: float = 0.3) -> Measured:
    """Readings per second ``read()`` returns over ``seconds`` (after a warm-up)."""
    src.start()
    try:
        deadline = time.monotonic() + warmup_s + 20.0
        while src.read() is None:  # connected and producing
            if time.monotonic() > deadline:
                raise RuntimeError(f"{src.kind}: no reading; {src.health()}")
            time.sleep(0.001)
        if warmup_s:
            time.sleep(warmup_s)
            while src.read() is not None:  # what queued up during the warm-up
                pass
        updates_before = getattr(src, "updates", None)
        count = 0
        started = time.perf_counter()
        end = started + seconds
        while (now := time.perf_counter()) < end:
            if src.read() is None:
                if src.health().state == "exhausted":
                    break
                time.sleep(0.001)
            else:
                count += 1
        elapsed = now - started
        updates = getattr(src, "updates", None)
        per_s = None if updates is None else (updates - updates_before) / elapsed
        return count / elapsed, per_s
    finally:
        src.close()


# --- the producers ---------------------------------------------------------------


def bench_csv(directory: Path, channels: int, seconds: float) -> Measured:
    path = directory / "bench.csv"
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(50_000, channels))
    header = "time," + ",".join(f"c{i}" for i in range(channels))
    body = "\n".join(
        f"{1714564800 + i}," + ",".join(f"{v:.5f}" for v in row) for i, row in enumerate(rows)
    )
    path.write_text(header + "\n" + body + "\n")
    src = CsvSource.from_options({"path": str(path), "time_column": "time", "speed": 0})
    return measure(src, seconds, warmup_s=0.0)


CHILD = """
import json, random, sys
names = [f"c{i}" for i in range(int(sys.argv[1]))]
out = sys.stdout
while True:
    out.write(json.dumps({n: random.random() for n in names}) + "\\n")
"""


def bench_command(directory: Path, channels: int, seconds: float) -> Measured:
    script = directory / "child.py"
    script.write_text(CHILD)
    src = CommandSource.from_options(
        {
            "argv": [sys.executable, str(script), str(channels)],
            "channels": [f"c{i}" for i in range(channels)],
            "buffer": 1_000_000,
        }
    )
    return measure(src, seconds)


class _Loop:
    """An asyncio loop in a daemon thread, for the in-process servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def bench_modbus(channels: int, seconds: float) -> Measured:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    port = _free_port()
    loop = _Loop()
    regs = [SimData(0, count=2 * channels + 2, values=1234, datatype=DataType.REGISTERS)]
    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    device = SimDevice(id=1, simdata=(bits, bits, regs, regs))

    async def serve() -> ModbusTcpServer:
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        return server

    server = loop.run(serve())
    _wait_for_port(port)
    try:
        src = ModbusSource.from_options(
            {
                "host": "127.0.0.1",
                "port": port,
                "poll_interval_s": 0.001,
                "channels": [
                    {"name": f"c{i}", "address": 2 * i, "type": "float32"} for i in range(channels)
                ],
            }
        )
        return measure(src, seconds)
    finally:
        loop.run(server.shutdown())
        loop.close()


@contextmanager
def _mosquitto(directory: Path) -> Iterator[int]:
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def bench_mqtt(directory: Path, channels: int, seconds: float) -> Measured:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    with _mosquitto(directory) as port:
        stop = threading.Event()
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        pub.max_queued_messages_set(1000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()

        def publish() -> None:
            rng = np.random.default_rng(1)
            while not stop.is_set():
                payload = json.dumps(
                    {"data": {f"c{i}": float(v) for i, v in enumerate(rng.random(channels))}}
                )
                pub.publish("bench/pump", payload, qos=0)
                time.sleep(0)

        publisher = threading.Thread(target=publish, daemon=True)
        src = MqttSource.from_options(
            {
                "host": "127.0.0.1",
                "port": port,
                "qos": 0,
                "channels": [
                    {"name": f"c{i}", "topic": "bench/pump", "path": f"data.c{i}"}
                    for i in range(channels)
                ],
            }
        )
        publisher.start()
        try:
            return measure(src, seconds)
        finally:
            stop.set()
            publisher.join(timeout=5)
            pub.disconnect()
            pub.loop_stop()


def bench_opcua(channels: int, seconds: float) -> Measured:
    from asyncua.server.server import Server

    port = _free_port()
    url = f"opc.tcp://127.0.0.1:{port}/bench/"
    loop = _Loop()
    state: dict[str, Any] = {}

    async def start() -> list[str]:
        server = Server()
        await server.init()
        server.set_endpoint(url)
        idx = await server.register_namespace("urn:fedge:bench")
        obj = await server.nodes.objects.add_object(idx, "Pump")
        nodes = [await obj.add_variable(idx, f"c{i}", 0.0) for i in range(channels)]
        await server.start()
        state["server"], state["nodes"] = server, nodes
        return [n.nodeid.to_string() for n in nodes]

    async def churn() -> None:
        value = 0.0
        while True:
            value += 1.0
            for node in state["nodes"]:
                await node.write_value(value)
            await asyncio.sleep(0)

    ids = loop.run(start())
    _wait_for_port(port)
    ticker = asyncio.run_coroutine_threadsafe(churn(), loop.loop)
    try:
        src = OpcuaSource.from_options(
            {
                "url": url,
                "publishing_interval_ms": 10,
                "nodes": [{"name": f"c{i}", "node_id": nid} for i, nid in enumerate(ids)],
            }
        )
        return measure(src, seconds)
    finally:
        ticker.cancel()
        loop.run(state["server"].stop())
        loop.close()


def bench_vibration(calls: int = 300) -> float:
    fs, n = 10_000.0, 4096
    config = VibrationConfig(
        prefix="bearing",
        sample_rate_hz=fs,
        bands_hz=((10.0, 1000.0), (1000.0, 2500.0), (2500.0, 5000.0)),
    )
    rng = np.random.default_rng(0)
    t = np.arange(n) / fs
    snapshot = 1.0 + 0.3 * np.sin(2 * np.pi * 25.0 * t) + rng.normal(0.0, 0.05, size=n)
    for _ in range(30):
        vibration_features(snapshot, config)
    times = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        vibration_features(snapshot, config)
        times.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per source")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # Device servers and sources log every reconnect and refusal; not useful here.
    logging.basicConfig(level=logging.CRITICAL)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # threads and children started from now inherit it

    console = Console()
    runs: list[tuple[str, Callable[[], Measured]]]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-sources-") as tmp:
        directory = Path(tmp)
        runs = [
            ("csv", lambda: bench_csv(directory, args.channels, args.seconds)),
            ("command", lambda: bench_command(directory, args.channels, args.seconds)),
            ("modbus", lambda: bench_modbus(args.channels, args.seconds)),
            ("mqtt", lambda: bench_mqtt(directory, args.channels, args.seconds)),
            ("opcua", lambda: bench_opcua(args.channels, args.seconds)),
        ]
        for kind, run in runs:
            console.print(f"measuring {kind} ...")
            rate, updates = run()
            row: dict[str, Any] = {"kind": kind, "readings_per_s": rate, "channels": args.channels}
            if updates is not None:
                row["channel_updates_per_s"] = updates
            results.append(row)
    vibration_ms = bench_vibration()

    table = Table(title=f"sources, 1 core, {args.channels} channels")
    table.add_column("source", no_wrap=True)
    table.add_column("readings/s", justify="right")
    table.add_column("channel updates/s", justify="right")
    for row in results:
        updates = row.get("channel_updates_per_s")
        table.add_row(
            row["kind"],
            f"{row['readings_per_s']:,.0f}",
            "-" if updates is None else f"{updates:,.0f}",
        )
    console.print(table)
    console.print(
        f"vibration features, 4096 samples at 10 kHz: {vibration_ms:.3f} ms "
        f"(target {VIBRATION_TARGET_MS} ms)"
    )
    payload: dict[str, Any] = {
        "sources": results,
        "vibration_ms": vibration_ms,
        "vibration_target_ms": VIBRATION_TARGET_MS,
        "seconds_per_source": args.seconds,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.machine(),
            "cores": 1,
        },
    }
    out = args.out or REPO / "benchmarks" / "results" / "sources.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
