"""``fedge demo``: a whole simulated fleet in one process, over a real MQTT broker.

Starts the embedded broker (or uses ``--broker``), an aggregator and N agents,
each agent with its own MQTT connection, its own SQLite store and its own
simulated machine (non-IID sites by default). Every device holds out some of
its run-to-failure units; the aggregator reports, per round, the validation
error of the global model on those held-out units.

The maintenance story: the machines degrade in accelerated time (a cycle every
``sample_interval_s``), so several of them fail while the fleet trains. Each
failure is recorded by the simulated technician as a ``failure`` event and the
``repair`` after it (edge_agent.maintenance), the failed life becomes training
data for the next rounds, and the agent scores the alerts it raised during that
life (health score and RUL model): how long before the failure it warned, and how
many alarms it raised while the machine was still healthy. After the last round the
demo waits (up to ``failure_wait_s``) until ``min_failures`` machines have failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aggregator.ingest import IngestStats
from broker.embedded import EmbeddedBroker
from edge_agent.agent import EdgeAgent
from edge_agent.life_watch import LifeOutcome
from edge_agent.sources import SimulatedSensorSource
from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint, IngestConfig
from fedge.data.simulator import SENSOR_NAMES, SENSOR_UNITS, MachineSimulator, make_site_profiles
from fedge.errors import FedgeError
from fedge.health import HealthConfig
from fedge.messages import RoundSummary, TrainingConfig
from fedge.spec import ModelSpec, feature_specs
from fedge_app.report import write_report
from fedge_app.wiring import (
    agent_client_id,
    aggregator_client_id,
    build_agent,
    build_aggregator,
    build_ingest,
    mqtt_transport,
)

__all__ = ["DEMO_HEALTH", "DemoOptions", "DemoResult", "failure_figures", "run_demo"]

log = logging.getLogger(__name__)

DEMO_HEALTH = HealthConfig(
    condition_features=("shaft_speed",),
    threshold=0.8,
    clear_threshold=0.64,
    persistence_k=8,
    persistence_n=10,
)
"""The health score of the simulated pumps: the load (``shaft_speed``) is an operating
condition, and the setting benchmarks/alerts.py measured best on the simulator."""


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What ``fedge demo`` runs; the CLI maps its options onto this."""

    devices: int = 8
    rounds: int = 10
    broker_url: str | None = None
    fleet: str = "demo"
    workdir: Path = Path("fedge-demo")
    seed: int = 0
    non_iid: bool = True
    history_units: int = 8
    epochs: int = 2
    learning_rate: float = 2e-3
    strategy: str = "fedavg"
    model: str = "cnn"
    round_timeout_s: float = 60.0
    # A cycle every 50 ms: a simulated pump lives 150-360 cycles, so it fails after
    # 8-18 s and several do while the fleet trains.
    sample_interval_s: float = 0.05
    telemetry_interval_s: float = 0.25
    alert_rul: float = 60.0
    rul_alert_k: int = 3
    rul_alert_n: int = 5
    min_failures: int | None = None  # default: one per device
    failure_wait_s: float = 30.0
    timeout_s: float = 900.0
    influx_url: str | None = None
    influx_bucket: str = "fedge"
    influx_org: str = "-"
    influx_token: str = ""
    report: bool = True


@dataclass
class DemoResult:
    """The outcome; ``to_json`` is what ``--summary-json`` writes."""

    rounds: list[RoundSummary]
    wall_s: float
    devices: int
    agent_errors: list[str] = field(default_factory=list)
    ingest: IngestStats | None = None
    telemetry_path: Path | None = None
    report_path: Path | None = None
    lives: list[LifeOutcome] = field(default_factory=list)

    @property
    def training_rounds(self) -> list[RoundSummary]:
        return [r for r in self.rounds if r.task == "train" and r.outcome == "completed"]

    @property
    def val_error_round0(self) -> float | None:
        """Validation RMSE of global version 0 (measured by devices at the start of round 1)."""
        train = self.training_rounds
        return train[0].val_error if train else None

    @property
    def val_error_final(self) -> float | None:
        """Validation RMSE of the final global model (the closing evaluation round)."""
        evals = [r for r in self.rounds if r.task == "evaluate" and r.outcome == "completed"]
        return evals[-1].val_error if evals else None

    def to_json(self) -> dict[str, Any]:
        return {
            **failure_figures(self.lives),
            "lives": [o.as_dict() for o in self.lives],
            "rounds": len(self.training_rounds),
            "devices": self.devices,
            "val_error_round0": self.val_error_round0,
            "val_error_final": self.val_error_final,
            "wall_s": round(self.wall_s, 3),
            "telemetry": None
            if self.ingest is None
            else {
                "received": self.ingest.received,
                "points_written": self.ingest.points_written,
                "duplicates": self.ingest.duplicates,
                "rejected": self.ingest.rejected_total,
            },
            "telemetry_path": None if self.telemetry_path is None else str(self.telemetry_path),
            "report_path": None if self.report_path is None else str(self.report_path),
            "per_round": [r.model_dump(mode="json", exclude_none=True) for r in self.rounds],
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def failure_figures(lives: list[LifeOutcome]) -> dict[str, Any]:
    """``failures``, ``failures_alerted`` (warned >= 20 cycles ahead), ``median_lead``
    (cycles, over the failures warned at all) and ``false_alarms`` of closed lives."""
    failed = [o for o in lives if o.end_kind == "failure"]
    leads = [o.lead for o in failed if o.lead is not None]
    return {
        "failures": len(failed),
        "failures_alerted": sum(1 for o in failed if o.alerted),
        "median_lead": float(statistics.median(leads)) if leads else None,
        "false_alarms": sum(o.false_alarms for o in lives),
    }


def run_demo(
    options: DemoOptions,
    *,
    on_round: Callable[[RoundSummary], None] | None = None,
    on_life: Callable[[LifeOutcome], None] | None = None,
) -> DemoResult:
    """Run the demo fleet to completion and return its rounds. Raises FedgeError on failure.

    ``on_life`` is called (on an agent's thread) whenever a machine's life closes.
    """
    started = time.monotonic()
    # Agents train concurrently on threads; one intra-op thread each avoids
    # oversubscribing the cores (the models are small; parallelism is across devices).
    torch.set_num_threads(1)
    workdir = options.workdir
    for sub in ("agents", "checkpoints"):
        shutil.rmtree(workdir / sub, ignore_errors=True)  # a demo always starts fresh
    (workdir / "agents").mkdir(parents=True, exist_ok=True)
    telemetry_path = workdir / "fedge-telemetry.sqlite"
    for stale in workdir.glob("fedge-telemetry.sqlite*"):
        stale.unlink()

    embedded: EmbeddedBroker | None = None
    if options.broker_url is None:
        embedded = EmbeddedBroker().start()
        endpoint = BrokerEndpoint.from_url(embedded.url)
    else:
        endpoint = BrokerEndpoint.from_url(options.broker_url)

    spec = ModelSpec(
        name="cnn" if options.model == "cnn" else "gru",
        features=feature_specs(SENSOR_NAMES, SENSOR_UNITS),
    )
    agg_config = AggregatorConfig(
        fleet=options.fleet,
        broker=endpoint,
        rounds=options.rounds,
        min_clients=options.devices,
        round_timeout_s=options.round_timeout_s,
        strategy=options.strategy,
        training=TrainingConfig(epochs=options.epochs, learning_rate=options.learning_rate),
        model=spec,
        checkpoint_dir=workdir / "checkpoints",
        seed=options.seed,
    )
    ingest_config = IngestConfig(
        fleet=options.fleet,
        broker=endpoint,
        influx_url=options.influx_url,
        influx_bucket=options.influx_bucket,
        influx_org=options.influx_org,
        influx_token=options.influx_token,
        sqlite_path=telemetry_path,
        spool_path=workdir / "fedge-spool.sqlite",
    )
    stop = threading.Event()
    threads: list[threading.Thread] = []
    agents: list[EdgeAgent] = []
    errors: list[str] = []
    lives: list[LifeOutcome] = []
    simulators: dict[str, MachineSimulator] = {}

    def _closed(outcome: LifeOutcome) -> None:
        lives.append(outcome)  # list.append is atomic: agents call this on their threads
        if on_life is not None:
            on_life(outcome)

    ingest, sink = build_ingest(
        ingest_config, transport=mqtt_transport(endpoint, client_id=f"{options.fleet}-ingest")
    )

    def _run_agent(agent: EdgeAgent) -> None:
        try:
            agent.run(stop)
        except Exception as exc:  # reported in the result; the aggregator's quorum notices
            log.exception("agent %s failed", agent.config.device)
            errors.append(f"{agent.config.device}: {exc}")

    try:
        ingest.start()
        profiles = make_site_profiles(options.devices, seed=options.seed, non_iid=options.non_iid)
        for i, profile in enumerate(profiles):
            device = f"dev-{i:03d}"
            cfg = AgentConfig(
                fleet=options.fleet,
                device=device,
                site=f"site-{i % 4}",
                broker=endpoint,
                store_path=workdir / "agents" / f"{device}.sqlite",
                sample_interval_s=options.sample_interval_s,
                telemetry_interval_s=options.telemetry_interval_s,
                seed=options.seed,
                health=DEMO_HEALTH,
                alert_rul=options.alert_rul,
                rul_alert_k=options.rul_alert_k,
                rul_alert_n=options.rul_alert_n,
            )
            sim_seed = options.seed * 1000 + i
            simulators[device] = MachineSimulator(profile=profile, seed=sim_seed)
            agent = build_agent(
                cfg,
                transport=mqtt_transport(endpoint, client_id=agent_client_id(cfg)),
                source=SimulatedSensorSource(profile=profile, seed=sim_seed),
                history_units=options.history_units,
            )
            agent.maintenance.on_outcome = _closed
            agents.append(agent)
            thread = threading.Thread(target=_run_agent, args=(agent,), name=device, daemon=True)
            threads.append(thread)
            thread.start()
        service = build_aggregator(
            agg_config,
            transport=mqtt_transport(
                endpoint, client_id=aggregator_client_id(agg_config), clean_session=False
            ),
            on_round=on_round,
        )
        try:
            rounds = service.run(timeout=options.timeout_s)
        except TimeoutError as exc:
            raise FedgeError(f"demo did not finish: {exc}; agent errors: {errors}") from exc
        # Let the machines run on until enough of them have failed (bounded).
        wanted = options.devices if options.min_failures is None else options.min_failures
        deadline = time.monotonic() + options.failure_wait_s
        while sum(o.end_kind == "failure" for o in lives) < wanted and not errors:
            if time.monotonic() >= deadline:
                log.warning("only %d failure(s) within %.0f s", len(lives), options.failure_wait_s)
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for agent in agents:
            agent.store.close()
        time.sleep(0.5)  # let the agents' last QoS 1 messages reach the ingest queue
        ingest.stop()
        sink.close()
        if embedded is not None:
            embedded.stop()
    report_path = None
    if options.report and options.influx_url is None:
        lengths: dict[tuple[str, int], int] = {}

        def truth(device: str, unit: int, cycle: int) -> float | None:
            # The simulator regenerates any unit bit-identically: ground truth for the plot.
            # Every life of a demo machine is one simulator unit (a failure ends both,
            # nobody records other events): life 0 is unit 1, the first history unit.
            key = (device, unit + 1)
            if key not in lengths:
                lengths[key] = simulators[device].unit(unit + 1).n_cycles
            # Capped like the training targets: the model is not asked to tell 300 from 200.
            return float(min(lengths[key] - 1 - cycle, spec.rul_cap))

        report_path = write_report(
            telemetry_path,
            workdir / "fedge-report.html",
            title=f"fedge demo — fleet {options.fleet}",
            truth=truth,
            lives=lives,
        )
    return DemoResult(
        rounds=list(rounds),
        wall_s=time.monotonic() - started,
        devices=options.devices,
        agent_errors=errors,
        ingest=ingest.stats,
        telemetry_path=telemetry_path,
        report_path=report_path,
        lives=sorted(lives, key=lambda o: (o.device, o.unit)),
    )
