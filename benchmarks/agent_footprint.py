"""The edge agent's footprint on a small device: memory, import time, round times, inference,
installed size.

    python benchmarks/agent_footprint.py [--quick] [--skip-install]

A fresh child process imports what ``fedge agent`` imports and builds an agent
(``fedge_app.wiring.build_agent``: simulated source with run-to-failure history in
its SQLite store, ``torch_threads = 1``, training on its worker thread as on a
device) over the in-memory broker, receives a global model of the default fleet
model, and answers training rounds of 5,000 windows (``max_examples``), one epoch at
batch 64. Measured there:

* ``import_s``: importing the agent stack (CLI module, wiring, agent, torch);
* ``rss_start_mb``: resident memory (VmRSS) once the agent runs with its model;
* ``rss_peak_mb``: peak resident memory (``ru_maxrss``) after the rounds;
* ``first_round_s`` / ``steady_round_s``: announcement to published update, for the
  first round and the median of the following ones (medians over ``--processes``
  fresh processes: a first round happens once per process, and at ~0.2 s a round
  is at the mercy of the machine's load);
* ``inference_ms``: ``predict`` on one window, median of 200 calls;
* ``torch_dynamo_loaded`` and ``server_packages``: what must not be imported.

``install_mib``: ``deploy/install-agent.sh --prefix DIR --no-systemd`` into a
temporary directory (the base install: no extras), then the size of DIR and the
number of distributions in it (``--skip-install`` leaves them null).

Prints a table and writes ``benchmarks/results/agent_footprint.json`` (rss_start_mb,
rss_peak_mb, first_round_s, steady_round_s, inference_ms, install_mib, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "agent_footprint.json"
SERVER_OR_DEMO = ("influxdb_client", "dp_accounting", "amqtt", "matplotlib", "flwr", "pymodbus",
                  "asyncua")
TARGETS = {"rss_peak_mb": 300.0, "first_over_steady": 2.0, "inference_ms": 2.0}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(workdir: Path, rounds: int, windows: int) -> dict[str, Any]:
    """Runs in the fresh process: everything but the install size."""
    import resource
    import threading

    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import fedge_app.cli  # noqa: F401 - what `fedge agent` imports first
    from edge_agent.sources import SimulatedSensorSource
    from fedge.codec import FrameHeader, encode_frame
    from fedge.config import AgentConfig, default_fleet_model
    from fedge.data.simulator import SiteProfile
    from fedge.messages import RoundAnnouncement, TrainingConfig, encode_message
    from fedge.models import build_model, state_tensors
    from fedge.topics import Topics
    from fedge.training import predict
    from fedge.transport import InboundMessage, InMemoryBroker
    from fedge_app.wiring import build_agent

    import_s = time.perf_counter() - started
    topics = Topics("foot")
    broker = InMemoryBroker()
    arrivals: list[tuple[float, InboundMessage]] = []
    server = broker.transport("aggregator")
    server.connect(on_message=lambda m: arrivals.append((time.perf_counter(), m)))
    server.subscribe(topics.all_updates)
    cfg = AgentConfig(fleet="foot", device="dev-1", store_path=workdir / "agent.sqlite",
                      sample_interval_s=0.0, torch_threads=1, holdout_fraction=0.2)
    spec = default_fleet_model()
    # Enough run-to-failure history for `windows` training windows (~170 per unit).
    agent = build_agent(cfg, transport=broker.transport("dev-1"),
                        source=SimulatedSensorSource(profile=SiteProfile(), seed=1),
                        history_units=max(4, windows // 120))
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    header = FrameHeader(kind="global", fleet="foot", round_id=0, base_version=0, version=1,
                         model=spec)
    server.publish(topics.global_model, encode_frame(header, state_tensors(build_model(spec))),
                   retain=True)
    deadline = time.monotonic() + 120
    while agent.model_version != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    rss_start = _rss_mb()
    times: list[float] = []
    examples = 0
    for round_id in range(1, rounds + 1):
        before = len(arrivals)
        now = time.time()
        ann = RoundAnnouncement(
            fleet="foot", round_id=round_id, base_version=1, issued_at=now, deadline=now + 600,
            min_clients=1, training=TrainingConfig(epochs=1, batch_size=64, max_examples=windows),
        )
        sent = time.perf_counter()
        server.publish(topics.round_current, encode_message(ann), retain=True)
        while len(arrivals) == before and time.monotonic() < deadline + 600:
            time.sleep(0.005)
        at, msg = arrivals[-1]
        times.append(at - sent)
        from fedge.codec import decode_frame

        examples = decode_frame(msg.payload).header.num_examples
    window = agent.datasets(spec)[0].x[:1]
    predict(agent.model, window)  # type: ignore[arg-type]
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        predict(agent.model, window)  # type: ignore[arg-type]
        lat.append(time.perf_counter() - t0)
    stop.set()
    thread.join(timeout=30)
    agent.store.close()
    loaded = {m.split(".")[0] for m in sys.modules}
    return {
        "import_s": round(import_s, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "first_round_s": round(times[0], 3),
        "steady_round_s": round(statistics.median(times[1:]), 3),
        "round_times_s": [round(t, 3) for t in times],
        "windows_per_round": examples,
        "inference_ms": round(statistics.median(lat) * 1e3, 3),
        "torch_dynamo_loaded": "torch._dynamo" in sys.modules,
        "server_packages": sorted(p for p in SERVER_OR_DEMO if p in loaded),
    }


def _base_python() -> str:
    """The interpreter this one's virtualenv was made from."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}."
               f"{sys.version_info[1]}")


def _install_size(console: Any) -> dict[str, Any]:
    """Install the agent with deploy/install-agent.sh into a temporary prefix; its size."""
    with tempfile.TemporaryDirectory(prefix="fedge-install-") as tmp:
        prefix = Path(tmp) / "fedge"
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(REPO / "deploy" / "install-agent.sh"), "--prefix", str(prefix),
             "--no-systemd", "--python", _base_python()], capture_output=True, text=True,
            timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"install-agent.sh failed:\n{done.stderr[-3000:]}")
        size = sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file() and
                   not f.is_symlink())
        site = next((prefix / ".venv" / "lib").glob("python*/site-packages"))
        dists = sorted(p.name.split("-")[0] for p in site.glob("*.dist-info"))
        loaded = {d.lower().replace("_", "-") for d in dists}
        extras = sorted(loaded & {"influxdb-client", "dp-accounting", "amqtt", "matplotlib"})
        console.print(f"  installed in {time.monotonic() - started:.0f} s")
        return {"install_mib": round(size / 2**20, 1), "install_distributions": len(dists),
                "install_packages": dists, "install_server_or_demo": extras}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(REPO))
    from benchmarks.results_file import machine, write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--windows", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 2 processes")
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        workdir, rounds, windows = args.child
        print(json.dumps(child(Path(workdir), int(rounds), int(windows))))
        return {}
    if args.quick:
        args.rounds, args.processes = 3, 2
    console = Console(width=120)
    load_before = os.getloadavg()[0]
    runs = []
    for _ in range(args.processes):
        with tempfile.TemporaryDirectory(prefix="fedge-foot-") as tmp:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, __file__, "--child", tmp, str(args.rounds), str(args.windows)],
                capture_output=True, text=True, timeout=1800, env=env, cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"footprint child failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = dict(runs[0])
    for key in ("import_s", "rss_start_mb", "rss_peak_mb", "first_round_s", "inference_ms"):
        result[key] = round(statistics.median(r[key] for r in runs), 3)
    result["steady_round_s"] = round(
        statistics.median(t for r in runs for t in r["round_times_s"][1:]), 3)
    result["rss_peak_mb_max"] = max(r["rss_peak_mb"] for r in runs)
    result["round_times_s"] = [r["round_times_s"] for r in runs]
    result["torch_dynamo_loaded"] = any(r["torch_dynamo_loaded"] for r in runs)
    result["server_packages"] = sorted({p for r in runs for p in r["server_packages"]})
    install: dict[str, Any] = {"install_mib": None, "install_distributions": None}
    if not args.skip_install and shutil.which("bash"):
        install = _install_size(console)
    result |= install
    ratio = result["first_round_s"] / result["steady_round_s"]
    table = Table(title=f"Edge agent footprint (one process, torch_threads=1, "
                        f"{result['windows_per_round']} windows per round)")
    for col in ("measure", "value", "target"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    rows = [
        ("import time", f"{result['import_s']:.2f} s", ""),
        ("RSS after start", f"{result['rss_start_mb']:.0f} MB", ""),
        ("peak RSS (training)", f"{result['rss_peak_mb']:.0f} MB", "<= 300 MB"),
        ("first round", f"{result['first_round_s']:.2f} s", ""),
        ("steady round (median)", f"{result['steady_round_s']:.2f} s", ""),
        ("first / steady", f"{ratio:.2f}", "<= 2"),
        ("inference per window", f"{result['inference_ms']:.2f} ms", "<= 2 ms"),
        ("torch._dynamo loaded", str(result["torch_dynamo_loaded"]), "False"),
        ("server/demo packages imported", ", ".join(result["server_packages"]) or "none",
         "none"),
        ("server/demo packages installed", "-" if result["install_mib"] is None else
         ", ".join(result["install_server_or_demo"]) or "none", "none"),
        ("installed size", "-" if result["install_mib"] is None else
         f"{result['install_mib']:.0f} MiB ({result['install_distributions']} distributions)", ""),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    payload = result | {
        "first_over_steady": round(ratio, 2),
        "targets": TARGETS,
        "machine": machine(load_before),
    }
    write_results(args.json, payload, console)
    return payload


if __name__ == "__main__":
    main()
