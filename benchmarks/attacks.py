"""Poisoning attacks vs robust aggregation, robust reducers' memory, and the cost of DP.

    python benchmarks/attacks.py            # default run (16 min measured on 2 busy cores)
    python benchmarks/attacks.py --quick    # smoke run (~3 min)

(1) Attacks. 10 devices, the first 20% / 30% of them attacking, each attack against
each strategy; the real agent and aggregator over the in-memory transport (the same
loop as :func:`fedge_app.simulation.simulate_fleet`). Attackers are honest agents
whose outgoing update frames are rewritten on the way to the broker, or (label
flip) whose training labels are replaced by ``cap - RUL``:

* ``sign_flip``: sends ``global - delta``; ``scale10``: ``global + 10 delta``;
* ``noise``: ``global + N(0, 1)`` per coordinate;
* ``inflated``: claims ``10**8`` examples and sends its weights x1000 (the bug report);
* ``label_flip``: trains honestly on flipped labels.

Data: C-MAPSS FD001 (engines dealt IID; test RMSE on the last window of each test
engine against the raw true RUL) and the simulator (IID sites; RMSE over every
window of 12 fresh simulated units). (2) Memory and time of each robust reducer at
N = 100 updates x 1M float32 parameters against Flower's ``aggregate_median`` /
``aggregate_trimmed_avg`` / ``aggregate_krum`` on the same updates, one subprocess
per case (``benchmarks/reducer_memory.py``: tracemalloc peak, and the RSS
high-water mark above the RSS at the start of the case). (3) DP at epsilon 1, 3, 8
(delta 1e-5, every device each round, q = 1): the noise multiplier is calibrated
with the accountant for the run's rounds, the clip norm is the median honest
update norm of the clean run.

Prints two tables and writes ``benchmarks/results/attacks.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edge_agent.agent import EdgeAgent
from edge_agent.sources import ReplaySensorSource
from fedge.codec import decode_frame, encode_frame
from fedge.config import AgentConfig, AggregatorConfig
from fedge.data.cmapss import informative_sensors, load_subset, unit_runs
from fedge.data.context import unit_last_window, unit_windows
from fedge.data.simulator import SENSOR_NAMES, MachineSimulator, make_site_profiles
from fedge.data.splits import split_iid
from fedge.errors import FedgeError
from fedge.messages import DpConfig, TrainingConfig
from fedge.models import build_model, load_tensors, state_tensors
from fedge.privacy import privatize_update
from fedge.privacy.accountant import PrivacyAccountant, noise_multiplier_for_epsilon
from fedge.spec import ModelSpec
from fedge.training import WindowDataset, evaluate, predict
from fedge.transport import (
    InboundMessage,
    InMemoryBroker,
    MessageCallback,
    PublishHandle,
    Transport,
    Will,
)
from fedge_app.wiring import build_agent, build_aggregator

REPO = Path(__file__).resolve().parents[1]
HISTORY: dict[str, Any] = {"context": "history", "dropout": 0.1, "offset_noise": 0.6}
ATTACKS = ("sign_flip", "scale10", "noise", "inflated", "label_flip")
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    # clip each delta at 1.5 x the round's median norm, cap each weight at the median count
    "clipped_fedavg": {"robust": {"norm_median_multiple": 1.5, "examples_median_multiple": 1.0}},
    "median": {"reducer": "median"},
    "trimmed_mean": {"reducer": "trimmed_mean", "reducer_options": {"trim": 0.3}},
    "multi_krum": {"reducer": "multi_krum", "reducer_options": {"f": 3}},
}
CLIENTS = 10


class Tampering:
    """Wraps a device's transport; rewrites its update frames (attack and/or DP)."""

    def __init__(self, inner: Transport, *, attack: str | None, dp: DpConfig | None,
                 seed: int, norms: list[float]) -> None:
        self.inner, self.attack, self.dp, self.norms = inner, attack, dp, norms
        self.rng = np.random.default_rng(seed)
        self.agent: EdgeAgent | None = None

    def connect(self, *, on_message: MessageCallback, will: Will | None = None) -> None:
        self.inner.connect(on_message=on_message, will=will)

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self.inner.subscribe(topic_filter, qos=qos)

    def close(self) -> None:
        self.inner.close()

    def ack(self, message: InboundMessage) -> None:
        self.inner.ack(message)

    @property
    def reconnects(self) -> int:
        return self.inner.reconnects

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> PublishHandle:
        if "/updates/" in topic and self.agent is not None and self.agent.model is not None:
            try:
                frame = decode_frame(payload)
            except FedgeError:  # e.g. NaN weights after a poisoned round: the server refuses
                return self.inner.publish(topic, payload, qos=qos, retain=retain)
            if frame.header.kind == "update":
                payload = self._rewrite(frame.header, frame.tensors)
        return self.inner.publish(topic, payload, qos=qos, retain=retain)

    def _rewrite(self, header: Any, tensors: dict[str, np.ndarray]) -> bytes:
        assert self.agent is not None and self.agent.model is not None
        base = state_tensors(self.agent.model, trainable_only=True)  # the round's global
        delta = {k: tensors[k].astype(np.float64) - base[k] for k in base}
        self.norms.append(math.sqrt(sum(float(np.vdot(d, d)) for d in delta.values())))
        out = dict(tensors)
        if self.attack == "sign_flip":
            out = {k: base[k] - delta[k] for k in base}
        elif self.attack == "scale10":
            out = {k: base[k] + 10 * delta[k] for k in base}
        elif self.attack == "noise":
            out = {k: base[k] + self.rng.normal(0, 1.0, base[k].shape) for k in base}
        elif self.attack == "inflated":
            out = {k: 1000.0 * tensors[k] for k in base}
            header = header.model_copy(update={"num_examples": 10**8})
        if self.dp is not None:
            out = privatize_update(out, base, self.dp, rng=self.rng)
        return encode_frame(header, {k: np.asarray(v, np.float32) for k, v in out.items()})


def flip_labels(agent: EdgeAgent) -> None:
    """Make ``agent`` train on ``cap - RUL`` (its held-out windows stay honest)."""
    original = agent.datasets

    def flipped(spec: ModelSpec) -> tuple[WindowDataset, WindowDataset]:
        train, hold = original(spec)
        return WindowDataset(train.x, (spec.rul_cap - train.rul).astype(np.float32)), hold

    agent.datasets = flipped  # type: ignore[method-assign]


def run_fleet(config: AggregatorConfig, sources: Sequence[tuple[Any, int]], *,
              attackers: dict[str, str], dp: DpConfig | None, workdir: Path,
              norms: list[float]) -> dict[str, np.ndarray]:
    """``simulate_fleet`` with tampering transports; returns the final global tensors."""
    broker = InMemoryBroker()
    agents = []
    for i, (source, history) in enumerate(sources):
        device = f"client-{i:02d}"
        attack = attackers.get(device)
        transport = Tampering(broker.transport(device), attack=attack, dp=dp, seed=1000 + i,
                              norms=norms if attack is None else [])
        cfg = AgentConfig(fleet=config.fleet, device=device, store_path=workdir / f"{device}.db",
                          holdout_fraction=0.0, sample_interval_s=0.0, seed=config.seed,
                          background_training=False)
        agent = build_agent(cfg, transport=transport, source=source, history_units=history)
        transport.agent = agent
        if attack == "label_flip":
            flip_labels(agent)
        agents.append(agent)
    service = build_aggregator(config, transport=broker.transport("aggregator"),
                               checkpoint_dir=workdir / "checkpoints")
    try:
        for agent in agents:
            agent.start()
        service.start()
        deadline = time.monotonic() + 1800
        coordinator, version = service.coordinator, service.coordinator.version
        while not coordinator.finished:
            if time.monotonic() > deadline:
                raise TimeoutError("fleet did not finish in 30 min")
            service.step(timeout=0)
            for agent in agents:
                agent.step(timeout=0)
            if coordinator.version != version:
                version = coordinator.version
                if diverged(coordinator.tensors):
                    break  # training on a blown-up model only burns time: score it now
    finally:
        service.transport.close()
        for agent in agents:
            agent.stop()
            agent.store.close()
    return dict(service.coordinator.tensors)


def diverged(tensors: dict[str, np.ndarray]) -> bool:
    """True once the global weights are non-finite or absurdly large (|w| > 1e4)."""
    return any(not np.all(np.isfinite(v)) or float(np.max(np.abs(v), initial=0)) > 1e4
               for v in tensors.values())


class Dataset:
    """One benchmark dataset: device sources, a model spec and a scorer."""

    def __init__(self, name: str, spec: ModelSpec, make_sources: Callable[[], list[Any]],
                 score: Callable[[Any], float]) -> None:
        self.name, self.spec, self.make_sources, self.score = name, spec, make_sources, score


def fd001(data: Path) -> Dataset:
    subset = load_subset(data, "FD001")
    sensors = informative_sensors(subset.train)
    names = tuple(f"s{i}" for i in range(len(sensors)))
    train = unit_runs(subset.train, sensor_indices=sensors, with_settings=False)
    test = unit_runs(subset.test, sensor_indices=sensors, with_settings=False)
    spec = ModelSpec(n_features=len(names), **HISTORY)
    test_x = np.stack([unit_last_window(r.sensors, spec=spec) for r in test])
    test_y = subset.test_rul.astype(np.float64)
    parts = split_iid(train, CLIENTS, np.random.default_rng(0))

    def sources() -> list[Any]:
        return [(ReplaySensorSource(sensor_names=names, history=list(p)), len(p)) for p in parts]

    def score(model: Any) -> float:
        pred, _ = predict(model, test_x)
        return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - test_y) ** 2)))

    return Dataset("FD001", spec, sources, score)


def simulator(units: int = 5) -> Dataset:
    from edge_agent.sources import SimulatedSensorSource

    spec = ModelSpec(n_features=len(SENSOR_NAMES))
    profile = make_site_profiles(1, seed=0, non_iid=False)[0]
    parts = []
    for run in MachineSimulator(profile=profile, seed=999).units(12):
        x, y = unit_windows(run.sensors, np.minimum(run.rul(), spec.rul_cap), spec=spec)
        parts.append(WindowDataset(x, y))
    test = WindowDataset.concat(parts, n_features=spec.input_features, window=spec.window)

    def sources() -> list[Any]:
        return [(SimulatedSensorSource(profile=profile, seed=i), units) for i in range(CLIENTS)]

    return Dataset("simulator", spec, sources, lambda model: evaluate(model, test).rmse)


def federated_rmse(ds: Dataset, strategy: str, *, attack: str | None, share: float,
                   rounds: int, training: TrainingConfig, dp: DpConfig | None = None,
                   norms: list[float] | None = None) -> float:
    n_attackers = round(share * CLIENTS) if attack else 0
    attackers = {f"client-{i:02d}": attack for i in range(n_attackers) if attack}
    config = AggregatorConfig(
        fleet="attacks", rounds=rounds, min_clients=CLIENTS, round_timeout_s=3600,
        training=training.model_copy(update={"dp": dp}), model=ds.spec,
        final_evaluation=False, seed=0, **STRATEGIES[strategy],
    )
    with tempfile.TemporaryDirectory(prefix="fedge-attacks-") as tmp:
        tensors = run_fleet(config, ds.make_sources(), attackers=attackers, dp=dp,
                            workdir=Path(tmp), norms=norms if norms is not None else [])
    model = build_model(ds.spec)
    load_tensors(model, tensors)
    with np.errstate(all="ignore"):
        rmse = ds.score(model)
    return rmse if math.isfinite(rmse) else math.inf  # a diverged model


# Memory ---------------------------------------------------------------------------------

MEMORY_CASES = ("median", "trimmed_mean", "krum", "multi_krum")
"""Each runs in benchmarks/reducer_memory.py, in a fresh interpreter without torch."""
FLWR_FOR = {"median": "flwr_median", "trimmed_mean": "flwr_trimmed_mean",
            "krum": "flwr_krum", "multi_krum": "flwr_multi_krum"}


def measure_memory(n: int, p: int) -> list[dict[str, Any]]:
    def run(case: str) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("reducer_memory.py")), case,
             "--n", str(n), "--p", str(p)],
            check=True, capture_output=True, text=True, timeout=900,
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = []
    for reducer in MEMORY_CASES:
        ours, theirs = run(reducer), run(FLWR_FOR[reducer])
        rows.append({
            "reducer": reducer, "n": n, "p": p,
            "peak_mib": ours["tracemalloc_mib"], "rss_mib": ours["rss_mib"],
            "time_s": ours["time_s"],
            "flwr_peak_mib": theirs["tracemalloc_mib"], "flwr_rss_mib": theirs["rss_mib"],
            "flwr_time_s": theirs["time_s"], "flwr_function": FLWR_FOR[reducer],
        })
    return rows


# Main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "cmapss")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds and runs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--n", type=int, default=100, help="updates in the memory cases")
    parser.add_argument("--p", type=int, default=1_000_000, help="parameters per update")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "results" / "attacks.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    console = Console(width=max(Console().width, 120))
    rounds = args.rounds or (5 if args.quick else 10)
    sim_rounds = 3 if args.quick else 4
    training = TrainingConfig(epochs=2, batch_size=128, learning_rate=1e-3)
    shares = (0.2,) if args.quick else (0.2, 0.3)
    strategies = ("fedavg", "clipped_fedavg", "median") if args.quick else tuple(STRATEGIES)
    started = time.monotonic()

    runs: list[dict[str, Any]] = []
    clean: dict[str, dict[str, float]] = {}
    honest_norms: list[float] = []
    for ds, n_rounds, ds_shares in ((fd001(args.data), rounds, shares),
                                    (simulator(), sim_rounds, (0.2,))):
        clean[ds.name] = {}
        for strategy in strategies:
            norms = honest_norms if (ds.name == "FD001" and strategy == "fedavg") else None
            rmse = federated_rmse(ds, strategy, attack=None, share=0.0, rounds=n_rounds,
                                  training=training, norms=norms)
            clean[ds.name][strategy] = rmse
            runs.append({"dataset": ds.name, "strategy": strategy, "attack": "none",
                         "attacker_share": 0.0, "rmse": rmse})
            console.print(f"  {ds.name} {strategy:15s} clean       RMSE {rmse:8.2f}")
            for share in ds_shares:
                for attack in ATTACKS:
                    rmse = federated_rmse(ds, strategy, attack=attack, share=share,
                                          rounds=n_rounds, training=training)
                    runs.append({"dataset": ds.name, "strategy": strategy, "attack": attack,
                                 "attacker_share": share, "rmse": rmse})
                    console.print(f"  {ds.name} {strategy:15s} {attack:11s} {share:.0%} "
                                  f"RMSE {rmse:10.2f}  ({time.monotonic() - started:.0f} s)")

    # Default robust setting: the robust strategy with the smallest worst-case RMSE over
    # every FD001 attack at 20%.
    robust = [s for s in strategies if s != "fedavg"]
    worst = {s: max(r["rmse"] for r in runs if r["dataset"] == "FD001" and r["strategy"] == s
                    and r["attacker_share"] == 0.2 and r["attack"] != "none") for s in robust}
    default = min(worst, key=lambda s: worst[s])

    # DP on FD001 with FedAvg: clip = median honest update norm of the clean run.
    dp_rows: list[dict[str, Any]] = []
    clip = float(statistics.median(honest_norms))
    ds = fd001(args.data)
    for epsilon in (1.0, 3.0, 8.0):
        z = noise_multiplier_for_epsilon(epsilon, 1e-5, rounds=rounds)
        dp = DpConfig(clip_norm=clip, noise_multiplier=z, expected_clients=CLIENTS)
        acc = PrivacyAccountant(1e-5)
        acc.record(z, count=rounds)
        rmse = federated_rmse(ds, "fedavg", attack=None, share=0.0, rounds=rounds,
                              training=training, dp=dp)
        dp_rows.append({"epsilon": epsilon, "epsilon_accounted": acc.epsilon, "delta": 1e-5,
                        "noise_multiplier": z, "clip_norm": clip, "rmse": rmse})
        console.print(f"  DP eps {epsilon}: z {z:.3f}, C {clip:.3f}, RMSE {rmse:.2f}")

    n, p = (20, 200_000) if args.quick else (args.n, args.p)
    memory = measure_memory(n, p)
    print_tables(console, runs, clean, memory, dp_rows, strategies)
    payload = {
        "clean_rmse": clean["FD001"]["fedavg"],
        "clean_rmse_by_strategy": clean,
        "default_strategy": {"name": default, **STRATEGIES[default],
                             "worst_rmse_at_20pct": worst[default],
                             "within_10pct_of_clean": worst[default]
                             <= 1.1 * clean["FD001"]["fedavg"]},
        "runs": runs, "memory": memory, "dp": dp_rows,
        "settings": {"quick": args.quick, "clients": CLIENTS, "rounds_fd001": rounds,
                     "rounds_simulator": sim_rounds, "training": training.model_dump(),
                     "strategies": {s: STRATEGIES[s] for s in strategies},
                     "split": "iid", "seed": 0},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "wall_s": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"default robust setting: {default}; wrote {args.out}")
    return payload


def print_tables(console: Console, runs: list[dict[str, Any]], clean: dict[str, Any],
                 memory: list[dict[str, Any]], dp_rows: list[dict[str, Any]],
                 strategies: Sequence[str]) -> None:
    table = Table(title="Final RMSE under attack (clean FedAvg: "
                  + ", ".join(f"{k} {v['fedavg']:.2f}" for k, v in clean.items()) + ")")
    table.add_column("dataset / attack / share", no_wrap=True)
    for s in strategies:
        table.add_column(s, justify="right")
    keys = sorted({(r["dataset"], r["attack"], r["attacker_share"]) for r in runs},
                  key=lambda k: (k[0], k[2], k[1]))
    for key in keys:
        cells = {r["strategy"]: r["rmse"] for r in runs
                 if (r["dataset"], r["attack"], r["attacker_share"]) == key}
        table.add_row(f"{key[0]} {key[1]} {key[2]:.0%}",
                      *(f"{cells[s]:.2f}" if s in cells else "" for s in strategies))
    for row in dp_rows:
        table.add_row(f"FD001 DP eps={row['epsilon']:g} (z={row['noise_multiplier']:.2f})",
                      f"{row['rmse']:.2f}", *([""] * (len(strategies) - 1)))
    console.print(table)
    mem = Table(title=f"Peak memory, N={memory[0]['n']} updates x P={memory[0]['p']:,} float32")
    for col in ("reducer", "peak MiB", "RSS MiB", "time s", "Flower fn", "Flower peak MiB",
                "Flower RSS MiB", "Flower time s", "ratio"):
        mem.add_column(col, justify="left" if col in ("reducer", "Flower fn") else "right")
    for m in memory:
        mem.add_row(m["reducer"], f"{m['peak_mib']:.1f}", f"{m['rss_mib']:.1f}",
                    f"{m['time_s']:.2f}", m["flwr_function"], f"{m['flwr_peak_mib']:.1f}",
                    f"{m['flwr_rss_mib']:.1f}", f"{m['flwr_time_s']:.2f}",
                    f"{m['peak_mib'] / m['flwr_peak_mib']:.3f}")
    console.print(mem)


if __name__ == "__main__":
    main()
