"""Soak: a fleet over real Mosquitto for D minutes with disconnects and restarts, end to end.

    python benchmarks/soak.py [--minutes 10] [--agents 50] [--edge-agents 5] [--trainers 3]
                              [--broker-kill] [--out benchmarks/results/soak.json]

What runs (all on 127.0.0.1, temp dirs, free ports):

* Mosquitto with persistence (``autosave_interval 1``, as broker/mosquitto.conf);
* VictoriaMetrics with ``-dedup.minScrapeInterval=1ms`` (how fedge needs it run);
* ``fedge ingest`` as a child process: persistent session, manual acks, InfluxDB sink
  with its durable spool, ``--stored-acks``;
* ``fedge aggregator`` as a child process (rounds on the default model), and
  ``--trainers`` real ``fedge agent`` processes (simulated pumps, background training)
  that make the rounds happen;
* ``--agents`` telemetry agents in this process: real paho transports publishing
  real ``TelemetryBatch`` messages (``--rate`` messages/s of ``--readings``
  readings), QoS 1, counted by seq; they keep each message until ingest's retained
  stored-up-to watermark covers it and re-send the uncovered ones after a
  reconnect (the agent side of stored acks; tests/integration/chaos_support.py);
* ``--edge-agents`` real :class:`~edge_agent.agent.EdgeAgent` s in this process
  (tests/integration/agent_support.py: ``fedge agent``'s wiring, persistent
  sessions, SQLite stores, confirm mode ``auto``) sampling simulated pumps every
  ``--edge-sample-interval`` s. Their machine type is one the fleet model does not
  cover (one channel not wired), so they stream telemetry and decline every round:
  the training load stays with the trainer processes. Counted by seq from their own
  stores: generated, acknowledged by the broker, confirmed by ingest, stored.

Chaos during the run: every few seconds a random telemetry agent's (or edge
agent's) socket is shut down under it (paho reconnects); at 10% of the run ingest
is SIGKILLed and started again 10 s later; at 30% the broker is stopped (SIGTERM,
or SIGKILL with ``--broker-kill``) and started again 5 s later.

At the end the agents stop (the edge agents stop sampling and finish their
telemetry), everything they generated must be acknowledged by the broker, then
confirmed by ingest; the stored readings are counted by
``(device, seq)`` from VictoriaMetrics' raw export. RSS of the aggregator and of
ingest (the process running since its restart) is sampled every 10 s
(``rss_series_mb``); growth is measured from "start" to the end, start being after
warm-up: 45% of the run, 30 s after the broker restart (the backlog burst sets a
high-water mark) and once ingest's bounded per-device state (the de-duplication
window, 4096 seqs per device) is full: before that RSS grows by design
(``ingest_warm`` is false if the run was too short for it). Targets: stored =
acknowledged, 0 duplicates, RSS growth <= 5%.

Prints a table and writes ``benchmarks/results/soak.json`` (``--out``: a short run
goes elsewhere, e.g. ``soak_short.json``, so the 10-minute result stays).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: this checkout, not an installed copy
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from broker.mqtt_transport import PahoTransport  # noqa: E402
from edge_agent.store import TelemetryState  # noqa: E402
from fedge.data.simulator import SENSOR_NAMES  # noqa: E402
from fedge_app.servers import Mosquitto  # noqa: E402
from tests.integration.agent_support import AgentThread  # noqa: E402
from tests.integration.chaos_support import (  # noqa: E402
    DedupVictoriaMetrics,
    IngestProcess,
    SeqPublisher,
    expected,
    vm_seqs,
    wait_for,
)

RESULTS = REPO / "benchmarks" / "results" / "soak.json"
DEDUP_WINDOW = 4096  # IngestRules' default de-duplication window (seqs per device)
FLEET = "soak"
console = Console(width=120)


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of ``pid`` from /proc (None if it is gone)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Child:
    """A ``fedge`` command as a child process with its log."""

    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> Child:
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # our own interpreter and arguments
                [sys.executable, "-m", "fedge_app.cli", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
            )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Events:
    disconnects: int = 0
    ingest_restarts: int = 0
    broker_restarts: int = 0
    timeline: list[str] = field(default_factory=list)

    def note(self, t0: float, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - t0:7.1f}s {what}")
        console.print(f"[dim]{time.monotonic() - t0:7.1f}s[/] {what}")


def drop_connection(transport: PahoTransport) -> bool:
    """Shut the agent's socket down under paho (a dead link): paho reconnects by itself."""
    sock = transport._client.socket()
    if not isinstance(sock, socket.socket):
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60.0
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fedge-soak-"))
    events = Events()
    broker = Mosquitto(
        root / "mosquitto",
        persistence_dir=root / "mosquitto-data",
        extra_config=["autosave_interval 1", "max_queued_messages 1000000"],
    )
    vm = DedupVictoriaMetrics(root / "vm")
    broker.start()
    vm.start()
    ingest = IngestProcess(
        root / "ingest", broker_url=broker.url, fleet=FLEET, influx_url=vm.url, stored_acks=True
    )
    aggregator = Child(
        [
            "aggregator",
            "--broker",
            broker.url,
            "--fleet",
            FLEET,
            "--rounds",
            "100000",
            "--min-clients",
            str(args.trainers),
            "--round-timeout",
            "60",
            "--checkpoint-dir",
            str(root / "checkpoints"),
            "--log-level",
            "WARNING",
        ],
        root / "aggregator.log",
    )
    trainers = [
        Child(
            [
                "agent",
                "--device",
                f"trainer-{i:02d}",
                "--broker",
                broker.url,
                "--fleet",
                FLEET,
                "--store",
                str(root / f"trainer-{i:02d}.sqlite"),
                "--seed",
                str(i),
                "--log-level",
                "WARNING",
            ],
            root / f"trainer-{i:02d}.log",
        )
        for i in range(args.trainers)
    ]
    publishers = [
        SeqPublisher(
            broker.url,
            FLEET,
            f"pump-{i:03d}",
            rate_hz=args.rate,
            per_message=args.readings,
            confirm=True,
        )
        for i in range(args.agents)
    ]
    gate = threading.Event()
    gate.set()
    (root / "edge").mkdir()
    edge = [
        AgentThread(
            root / "edge",
            broker.url,
            FLEET,
            f"edge-{i:02d}",
            gate=gate,
            seed=1000 + i,
            sample_interval_s=args.edge_sample_interval,
            telemetry_interval_s=1.0,
            # Not a machine the fleet model covers: it declines rounds (missing_feature).
            features={SENSOR_NAMES[0]: "not_wired"},
        )
        for i in range(args.edge_agents)
    ]
    transports = [p.transport for p in publishers] + [
        a.agent.transport for a in edge if isinstance(a.agent.transport, PahoTransport)
    ]
    rss: dict[str, int | None] = {}
    series: list[tuple[float, float | None, float | None]] = []
    ingest_warm = True
    edge_done = False
    try:
        ingest.start()
        aggregator.start(root)
        for trainer in trainers:
            trainer.start(root)
        for p in publishers:
            p.start()
        for a in edge:
            a.start()
        t0 = time.monotonic()
        events.note(
            t0,
            f"{args.agents} telemetry agents, {args.edge_agents} edge agents, "
            f"{args.trainers} trainers started",
        )
        ingest_restart_at: float | None = 0.10 * duration
        broker_restart_at: float | None = 0.30 * duration
        rss_start_at: float | None = 0.45 * duration
        next_drop = t0 + rng.uniform(2.0, 2 * args.disconnect_every)
        next_rss = t0
        # Warm-up, before RSS "start" is sampled: 45% of the run, 30 s after the broker
        # restart (ingest takes the backlog queued meanwhile: a high-water mark that
        # CPython keeps, not a leak), and once ingest's bounded per-device state (the
        # de-duplication window of DEDUP_WINDOW seqs per device) is full and has been
        # compacted once (a dict that evicts as it inserts rebuilds itself after about
        # a third of its size in further inserts), whichever is latest; ingest_warm is
        # false if the run is too short for the last.
        fill_s = 1.5 * DEDUP_WINDOW / (args.rate * args.readings)
        while (now := time.monotonic()) - t0 < duration:
            elapsed = now - t0
            if now >= next_rss:
                next_rss = now + 10.0
                series.append(
                    (round(elapsed, 1), _mb(rss_bytes(aggregator.pid)), _mb(rss_bytes(ingest.pid)))
                )
            if ingest_restart_at is not None and elapsed >= ingest_restart_at:
                ingest_restart_at = None  # once
                ingest.kill()
                events.note(t0, "ingest SIGKILL")
                time.sleep(10.0)
                ingest.start()
                ingest_up = time.monotonic() - t0
                events.ingest_restarts += 1
                events.note(t0, "ingest back (same client id, resumed session)")
                if rss_start_at is not None and ingest_up + fill_s > 0.9 * duration:
                    ingest_warm = False  # too short to fill the window: measure anyway
                elif rss_start_at is not None:
                    rss_start_at = max(rss_start_at, ingest_up + fill_s)
            elif rss_start_at is not None and elapsed >= rss_start_at:
                rss_start_at = None
                rss["aggregator_start"] = rss_bytes(aggregator.pid)
                rss["ingest_start"] = rss_bytes(ingest.pid)
                events.note(t0, f"RSS sampled (start): {rss}")
            elif broker_restart_at is not None and elapsed >= broker_restart_at:
                broker_restart_at = None
                if args.broker_kill:
                    broker.kill()
                    events.note(t0, "broker SIGKILL")
                else:
                    broker.stop()
                    events.note(t0, "broker stopped (SIGTERM)")
                time.sleep(5.0)
                broker.start()
                events.broker_restarts += 1
                events.note(t0, "broker back")
                if rss_start_at is not None:
                    rss_start_at = max(rss_start_at, time.monotonic() - t0 + 30.0)
            elif now >= next_drop:
                if drop_connection(rng.choice(transports)):
                    events.disconnects += 1
                next_drop = now + rng.uniform(0.5, 1.5) * args.disconnect_every
            time.sleep(0.2)
        rss["aggregator_end"] = rss_bytes(aggregator.pid)
        rss["ingest_end"] = rss_bytes(ingest.pid)
        events.note(t0, f"RSS sampled (end): {rss}; stopping the agents")
        for p in publishers:
            p.stop_publishing()
        gate.clear()  # the edge agents stop sampling; their telemetry goes on
        all_acked = wait_for(lambda: all(p.all_acked() for p in publishers), timeout=120.0)
        all_confirmed = wait_for(lambda: all(p.confirmed() for p in publishers), timeout=180.0)
        edge_done = wait_for(
            lambda: all(a.status()[:2] == (0, 0) for a in edge), timeout=180.0, interval=1.0
        )
        events.note(
            t0,
            f"acknowledged: {all_acked}, confirmed by ingest: {all_confirmed}, "
            f"edge agents confirmed: {edge_done}",
        )
        for a in edge:
            a.close()
        edge_states = {a.device: a.states() for a in edge}
        want = expected(publishers)
        acked = {(p.device, seq) for p in publishers for seq in p.ack_times()}
        edge_acked = {
            (device, seq)
            for device, states in edge_states.items()
            for seq, state in states.items()
            if state != TelemetryState.UNSENT
        }
        wait_for(
            lambda: vm_seqs(vm, FLEET).keys() >= acked | edge_acked, timeout=120.0, interval=2.0
        )
        time.sleep(2.0)
        stored = vm_seqs(vm, FLEET)
        rounds = len(re.findall(r"round \d+ train completed", aggregator.log().replace("\n", " ")))
        failed_rounds = len(re.findall(r"round \d+ \w+ failed", aggregator.log()))
        resends = sum(p.resends for p in publishers)
        edge_resent = sum(a.agent.stats.telemetry_resent for a in edge)
        edge_errors = [repr(e) for a in edge for e in a.errors]
    finally:
        gate.clear()
        for a in edge:
            a.close()
        for p in publishers:
            p.close()
        for trainer in trainers:
            trainer.stop()
        aggregator.stop()
        ingest.stop()
        vm.close()
        broker.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    def growth(name: str) -> float | None:
        start, end = rss.get(f"{name}_start"), rss.get(f"{name}_end")
        return None if not start or end is None else (end - start) / start

    stored_keys = set(stored)
    edge_generated = {(d, seq) for d, states in edge_states.items() for seq in states}
    edge_confirmed = {
        (d, seq)
        for d, states in edge_states.items()
        for seq, state in states.items()
        if state == TelemetryState.STORED
    }
    edge_result = {
        "agents": args.edge_agents,
        "sample_interval_s": args.edge_sample_interval,
        "readings_generated": len(edge_generated),
        "readings_acknowledged": len(edge_acked),
        "readings_confirmed": len(edge_confirmed),
        "readings_stored": len(stored_keys & edge_generated),
        "readings_missing": len(edge_generated - stored_keys),
        "duplicates": sum(n - 1 for k, n in stored.items() if n > 1 and k in edge_generated),
        "resent_readings": edge_resent,
        "all_confirmed": edge_done,
        "errors": edge_errors,
    }
    result: dict[str, Any] = {
        "minutes": args.minutes,
        "agents": args.agents,
        "trainers": args.trainers,
        "rate_hz": args.rate,
        "readings_per_message": args.readings,
        "broker_restart": "SIGKILL" if args.broker_kill else "SIGTERM",
        "rounds": rounds,
        "rounds_failed": failed_rounds,
        "readings_generated": sum(want.values()),
        "readings_acknowledged": len(acked),
        "readings_stored": len(stored_keys & set(want)),
        "readings_acknowledged_not_stored": len(acked - stored_keys),
        "duplicates": sum(n - 1 for n in stored.values() if n > 1),
        "resent_messages": resends,
        "edge_agents": edge_result,
        "disconnects": events.disconnects,
        "ingest_restarts": events.ingest_restarts,
        "broker_restarts": events.broker_restarts,
        "aggregator_rss_start_mb": _mb(rss.get("aggregator_start")),
        "aggregator_rss_end_mb": _mb(rss.get("aggregator_end")),
        "ingest_rss_start_mb": _mb(rss.get("ingest_start")),
        "ingest_rss_end_mb": _mb(rss.get("ingest_end")),
        "aggregator_rss_growth": growth("aggregator"),
        "ingest_rss_growth": growth("ingest"),
        "ingest_warm": ingest_warm,
        "rss_series_mb": [{"t_s": t, "aggregator": a, "ingest": i} for t, a, i in series],
        "timeline": events.timeline,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
    }
    return result


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def print_table(result: dict[str, Any]) -> None:
    table = Table(
        title=f"soak: {result['minutes']} min, {result['agents']} telemetry agents, "
        f"{result['trainers']} trainers, broker restart by {result['broker_restart']}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:+.1f}%"

    rows = [
        ("rounds completed (failed)", f"{result['rounds']} ({result['rounds_failed']})", ""),
        ("readings generated", f"{result['readings_generated']:,}", ""),
        ("readings acknowledged", f"{result['readings_acknowledged']:,}", ""),
        ("readings stored", f"{result['readings_stored']:,}", "= acknowledged"),
        ("acknowledged, not stored", f"{result['readings_acknowledged_not_stored']:,}", "0"),
        ("duplicates", f"{result['duplicates']:,}", "0"),
        ("messages re-sent (uncovered)", f"{result['resent_messages']:,}", ""),
        ("edge agents (EdgeAgent, confirm mode)", str(result["edge_agents"]["agents"]), ""),
        ("  readings generated", f"{result['edge_agents']['readings_generated']:,}", ""),
        (
            "  acknowledged / confirmed by ingest",
            f"{result['edge_agents']['readings_acknowledged']:,} / "
            f"{result['edge_agents']['readings_confirmed']:,}",
            "= generated",
        ),
        ("  readings stored", f"{result['edge_agents']['readings_stored']:,}", "= generated"),
        ("  missing", f"{result['edge_agents']['readings_missing']:,}", "0"),
        ("  duplicates", f"{result['edge_agents']['duplicates']:,}", "0"),
        ("  readings re-sent (unconfirmed)", f"{result['edge_agents']['resent_readings']:,}", ""),
        (
            "disconnects / ingest / broker restarts",
            f"{result['disconnects']} / {result['ingest_restarts']} / {result['broker_restarts']}",
            "",
        ),
        (
            "aggregator RSS start -> end (MB)",
            f"{result['aggregator_rss_start_mb']} -> {result['aggregator_rss_end_mb']}",
            "",
        ),
        ("aggregator RSS growth", pct(result["aggregator_rss_growth"]), "<= +5%"),
        (
            "ingest RSS start -> end (MB)",
            f"{result['ingest_rss_start_mb']} -> {result['ingest_rss_end_mb']}",
            "",
        ),
        (
            "ingest RSS growth" + ("" if result["ingest_warm"] else " (not warm)"),
            pct(result["ingest_rss_growth"]),
            "<= +5%",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main() -> None:
    # The edge agents decline every round with a warning; the table says what matters.
    logging.getLogger("edge_agent").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=50, help="telemetry agents")
    parser.add_argument("--trainers", type=int, default=3, help="fedge agent processes")
    parser.add_argument(
        "--edge-agents", type=int, default=5, help="EdgeAgents in this process (confirm mode)"
    )
    parser.add_argument(
        "--edge-sample-interval", type=float, default=0.05, help="edge agents' sampling, s"
    )
    parser.add_argument("--rate", type=float, default=2.0, help="messages/s per agent")
    parser.add_argument("--readings", type=int, default=25, help="readings per message")
    parser.add_argument("--disconnect-every", type=float, default=5.0, help="mean seconds")
    parser.add_argument("--broker-kill", action="store_true", help="SIGKILL the broker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
