"""In-process fleet simulation: the real agent and aggregator code, no network.

Every device is an :class:`~edge_agent.agent.EdgeAgent` and the server is the
real :class:`~aggregator.service.AggregatorService`; they talk through an
:class:`~fedge.transport.InMemoryBroker` and are stepped round-robin on the
calling thread. That makes a run deterministic for a given seed and lets one
process simulate hundreds of devices before anything is deployed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import EdgeAgent
from edge_agent.sources import ReplaySensorSource, SensorSource
from fedge.config import AgentConfig, AggregatorConfig
from fedge.data.simulator import UnitRun
from fedge.messages import RoundSummary
from fedge.transport import InMemoryBroker
from fedge_app.wiring import build_agent, build_aggregator

__all__ = ["SimulatedDevice", "SimulationResult", "replay_devices", "simulate_fleet"]


@dataclass(frozen=True, kw_only=True)
class SimulatedDevice:
    """One device of a simulated fleet: its id, its sensor source, its history."""

    device: str
    source: SensorSource
    history_units: int


def replay_devices(
    parts: Sequence[Sequence[UnitRun]], sensor_names: tuple[str, ...], *, prefix: str = "client"
) -> list[SimulatedDevice]:
    """One device per group of recorded units, each replaying its units as history."""
    return [
        SimulatedDevice(
            device=f"{prefix}-{i:02d}",
            source=ReplaySensorSource(sensor_names=sensor_names, history=list(part)),
            history_units=len(part),
        )
        for i, part in enumerate(parts)
    ]


@dataclass(frozen=True)
class SimulationResult:
    rounds: list[RoundSummary]
    tensors: dict[str, np.ndarray]
    wall_s: float
    bytes_published: int
    agents: list[EdgeAgent]


def simulate_fleet(
    config: AggregatorConfig,
    devices: Sequence[SimulatedDevice],
    *,
    workdir: Path,
    holdout_fraction: float = 0.2,
    sample_interval_s: float = 0.0,
    on_round: Callable[[RoundSummary], None] | None = None,
    timeout_s: float = 3600.0,
    agent_options: Mapping[str, Any] | None = None,
) -> SimulationResult:
    """Run ``config.rounds`` rounds over ``devices``; return the rounds and final weights.

    ``sample_interval_s=0`` (the default) streams no live readings: devices learn
    from their history only, which is what benchmarks want. ``agent_options`` are
    further :class:`~fedge.config.AgentConfig` fields for every device (validated as
    the config file's would be), e.g. ``{"model_acceptance_margin": None}``.
    """
    started = time.monotonic()
    broker = InMemoryBroker()
    workdir.mkdir(parents=True, exist_ok=True)
    agents = []
    for dev in devices:
        cfg = AgentConfig(
            fleet=config.fleet,
            device=dev.device,
            store_path=workdir / f"{dev.device}.sqlite",
            holdout_fraction=holdout_fraction,
            sample_interval_s=sample_interval_s,
            seed=config.seed,
            background_training=False,
            **dict(agent_options or {}),
        )
        agents.append(
            build_agent(
                cfg,
                transport=broker.transport(dev.device),
                source=dev.source,
                history_units=dev.history_units,
            )
        )
    service = build_aggregator(
        config,
        transport=broker.transport("aggregator"),
        checkpoint_dir=workdir / "checkpoints",
        on_round=on_round,
    )
    try:
        for agent in agents:
            agent.start()
        service.start()
        deadline = time.monotonic() + timeout_s
        while not service.coordinator.finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulation did not finish within {timeout_s}s")
            service.step(timeout=0)
            for agent in agents:
                agent.step(timeout=0)
    finally:
        service.transport.close()
        for agent in agents:
            agent.stop()
            agent.store.close()
    return SimulationResult(
        rounds=list(service.history),
        tensors=dict(service.coordinator.tensors),
        wall_s=time.monotonic() - started,
        bytes_published=broker.published_bytes,
        agents=agents,
    )
