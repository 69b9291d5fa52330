"""Round overhead over a real Mosquitto: round wall time minus the slowest device's local work.

    python benchmarks/round.py [--quick] [--agents 20 100 500] [--rounds 10]

A Mosquitto on loopback (``fedge_app.servers.Mosquitto``), the aggregator service in
this process, and N real edge agents spread over ``--processes`` child processes,
each agent with its own MQTT connection (paho client), store and worker thread, as
on N devices. Local training is made tiny (one mini-batch of 32 windows, no
held-out evaluation), so what a round costs beyond it is the protocol: the
announcement and global model reaching every device, the devices noticing, the
updates reaching the aggregator, validation, aggregation, the next announcement.

Per training round, ``overhead = duration_s (announcement to close, from the round
summary) - max over devices of local_seconds`` (each update's header metric: the
device's time from picking the round up to its encoded frame). The median over
``--rounds`` training rounds is reported; the statistics round is not counted.
``cpu_s_per_round`` splits the CPU the run took by role (agent processes, broker,
this process): at 100 agents the devices' own work saturates the 2 cores of the
test machine, which is what the overhead at that scale mostly measures.

Everything runs at one CPU priority by default, the devices' training threads
excepted (they lower their own by ``training_nice``, 10, as on a real device).
``--device-nice N`` runs the agent processes N lower still, which models a fleet's
devices having CPUs of their own (the broker and aggregator are then not queued
behind 100 simulated devices sharing these 2 cores with them); not used for the
figures reported.

Prints a table and writes ``benchmarks/results/round.json`` (``cases``: agents,
overhead_s, plus the per-round figures).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.results_file import machine, write_results  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "round.json"
FLEET = "roundbench"


def _spec() -> Any:
    from fedge.data.simulator import SENSOR_NAMES
    from fedge.spec import ModelSpec

    return ModelSpec(n_features=len(SENSOR_NAMES), window=16, hidden=8, filters=4,
                     context="window")


def child(port: int, first: int, count: int, workdir: Path, *, nice: int = 0) -> None:
    """Run agents ``first .. first+count-1`` until stdin closes (the parent's signal)."""
    import torch

    if nice:
        os.nice(nice)

    from broker.mqtt_transport import PahoTransport
    from edge_agent.agent import EdgeAgent
    from edge_agent.sources import SimulatedSensorSource
    from edge_agent.store import ReadingStore
    from fedge.config import AgentConfig, BrokerEndpoint
    from fedge.data.simulator import SENSOR_NAMES, SiteProfile

    torch.set_num_threads(1)
    endpoint = BrokerEndpoint(host="127.0.0.1", port=port, keepalive=60)
    stop = threading.Event()
    agents, threads = [], []
    for i in range(first, first + count):
        cfg = AgentConfig(fleet=FLEET, device=f"dev-{i:04d}", broker=endpoint,
                          store_path=workdir / f"dev-{i:04d}.sqlite", sample_interval_s=0.0,
                          holdout_fraction=0.0, status_interval_s=600.0,
                          telemetry_interval_s=5.0)
        agent = EdgeAgent(
            cfg, transport=PahoTransport(endpoint, client_id=f"{FLEET}-dev-{i:04d}"),
            source=SimulatedSensorSource(profile=SiteProfile(), seed=i),
            store=ReadingStore(cfg.store_path, n_features=len(SENSOR_NAMES)),
            history_units=1,
        )
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        agents.append(agent)
        threads.append(thread)
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    for agent in agents:
        agent.store.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0 if unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(
    n: int, *, rounds: int, processes: int, device_nice: int, console: Console
) -> dict[str, Any]:
    from aggregator.service import AggregatorService
    from broker.mqtt_transport import PahoTransport
    from fedge.codec import decode_header
    from fedge.config import AggregatorConfig, BrokerEndpoint
    from fedge.messages import TrainingConfig
    from fedge.topics import Topics
    from fedge.transport import InboundMessage
    from fedge_app.servers import Mosquitto

    with tempfile.TemporaryDirectory(prefix="fedge-round-") as tmp, \
            Mosquitto(Path(tmp) / "mosquitto") as broker:
        endpoint = BrokerEndpoint(host="127.0.0.1", port=broker.port, keepalive=60)
        local: dict[tuple[int, str], float] = {}
        # (round, device) -> (picked up at, sent at, arrived at), all Unix seconds.
        trace: dict[tuple[int, str], tuple[float, float, float]] = {}

        def on_update(msg: InboundMessage) -> None:
            arrived = time.time()
            # The header only: the probe shares this process (and its GIL) with the
            # aggregator it measures, so it reads as little as it can.
            header = decode_header(msg.payload)
            seconds = header.metrics.get("local_seconds")
            if seconds is not None and header.device is not None:
                key = (header.round_id, header.device)
                local[key] = seconds
                sent = header.created_at
                trace[key] = (sent - seconds, sent, arrived)

        probe = PahoTransport(endpoint, client_id=f"{FLEET}-probe")
        probe.connect(on_message=on_update)
        probe.subscribe(Topics(FLEET).all_updates)
        per = -(-n // processes)
        children = []
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        for first in range(0, n, per):
            count = min(per, n - first)
            children.append(subprocess.Popen(
                [sys.executable, __file__, "--child", str(broker.port), str(first), str(count),
                 tmp, "--device-nice", str(device_nice)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO))
        try:
            for proc in children:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"agent process failed to start: {line!r}")
            console.print(f"  {n} agents up in {time.monotonic() - started:.1f} s")
            config = AggregatorConfig(
                fleet=FLEET, broker=endpoint, rounds=rounds, min_clients=n,
                round_timeout_s=300.0, final_evaluation=False, model=_spec(),
                training=TrainingConfig(epochs=1, batch_size=32, max_examples=32),
                checkpoint_dir=Path(tmp) / "ckpt",
            )
            service = AggregatorService(
                config, transport=PahoTransport(endpoint, client_id=f"{FLEET}-aggregator"))
            pids = {"agents": [p.pid for p in children], "broker": [broker.pid or 0]}
            cpu_before = {role: sum(_cpu_s(p) for p in ps) for role, ps in pids.items()}
            own_before = sum(os.times()[:2])
            history = service.run(timeout=600.0)
            cpu = {role: sum(_cpu_s(p) for p in ps) - cpu_before[role]
                   for role, ps in pids.items()}
            # This process: the aggregator and the probe (which decodes every update).
            cpu["aggregator_and_probe"] = sum(os.times()[:2]) - own_before
        finally:
            for proc in children:
                if proc.stdin is not None:
                    proc.stdin.close()
            for proc in children:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            probe.close()
    per_round = []
    for summary in history:
        if summary.task != "train":
            continue
        if summary.outcome != "completed" or summary.participants != n:
            raise RuntimeError(f"round {summary.round_id}: {summary}")
        slowest = max(v for (r, _), v in local.items() if r == summary.round_id)
        issued = summary.ts - summary.duration_s
        steps = [t for (r, _), t in trace.items() if r == summary.round_id]
        per_round.append({
            "round_id": summary.round_id, "duration_s": summary.duration_s,
            "slowest_local_s": slowest, "overhead_s": summary.duration_s - slowest,
            # Where the overhead goes: announcement to the device starting its work, the
            # update's trip to the aggregator, and the close after the last arrival.
            "pickup_s_median": statistics.median(p - issued for p, _, _ in steps),
            "pickup_s_max": max(p - issued for p, _, _ in steps),
            "delivery_s_median": statistics.median(a - s for _, s, a in steps),
            "delivery_s_max": max(a - s for _, s, a in steps),
            "close_after_last_arrival_s": summary.ts - max(a for _, _, a in steps),
        })
    rounds_run = len(history)  # the statistics round included: CPU covers the whole run
    return {
        "agents": n,
        "overhead_s": round(statistics.median(r["overhead_s"] for r in per_round), 4),
        # CPU seconds per round by role (the 2 cores give 2 s of CPU per wall second).
        "cpu_s_per_round": {role: round(v / rounds_run, 4) for role, v in cpu.items()},
        "rounds": per_round,
        "processes": len(children),
        "device_nice": device_nice,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--device-nice", type=int, default=0,
                        help="lower the agent processes' CPU priority by this much (default 0)")
    parser.add_argument("--quick", action="store_true", help="20 and 100 agents, 2 rounds")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=4, metavar=("PORT", "FIRST", "COUNT", "DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        port, first, count, workdir = args.child
        child(int(port), int(first), int(count), Path(workdir), nice=args.device_nice)
        return {}
    if args.quick:
        args.agents, args.rounds = [20, 100], 2
    console = Console(width=120)
    load_before = os.getloadavg()[0]
    cases = [run_case(n, rounds=args.rounds, processes=args.processes,
                      device_nice=args.device_nice, console=console)
             for n in args.agents]
    table = Table(title="Round overhead over Mosquitto (round wall time - slowest local work)")
    for col in ("agents", "processes", "overhead ms (median)", "round s", "slowest local s",
                "pickup ms (med/max)", "delivery ms (med/max)"):
        table.add_column(col, justify="right")
    for c in cases:
        rounds = c["rounds"]
        table.add_row(
            str(c["agents"]), str(c["processes"]), f"{c['overhead_s'] * 1e3:.0f}",
            " / ".join(f"{r['duration_s']:.2f}" for r in rounds),
            " / ".join(f"{r['slowest_local_s']:.2f}" for r in rounds),
            f"{statistics.median(r['pickup_s_median'] for r in rounds) * 1e3:.0f} / "
            f"{statistics.median(r['pickup_s_max'] for r in rounds) * 1e3:.0f}",
            f"{statistics.median(r['delivery_s_median'] for r in rounds) * 1e3:.0f} / "
            f"{statistics.median(r['delivery_s_max'] for r in rounds) * 1e3:.0f}",
        )
    console.print(table)
    payload = {
        "cases": cases,
        "settings": {"rounds": args.rounds, "processes": args.processes, "quick": args.quick,
                     "device_nice": args.device_nice},
        "machine": machine(load_before),
    }
    write_results(args.json, payload, console)
    return payload


if __name__ == "__main__":
    main()
