"""Real EdgeAgents for the chaos tests and benchmarks/soak.py: one per thread, counted by seq.

:class:`AgentThread` builds an agent the way ``fedge agent`` does
(:func:`fedge_app.wiring.build_agent`, a persistent-session
:func:`~fedge_app.wiring.agent_transport`) around a simulated pump that samples only
while a gate is open (:class:`GatedSource`), so a test can stop the readings and
let telemetry finish. What the agent's store says is read read-only from the test
thread (the store's connection belongs to the agent's thread).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from edge_agent.agent import EdgeAgent
from edge_agent.sources import SensorSample, SimulatedSensorSource
from edge_agent.store_status import read_store_status
from fedge.config import AgentConfig, BrokerEndpoint
from fedge.data.simulator import SiteProfile
from fedge_app.wiring import agent_transport, build_agent

__all__ = ["AgentThread", "GatedSource"]


class GatedSource(SimulatedSensorSource):
    """A simulated pump that gives readings only while ``gate`` is set."""

    def __init__(self, *, gate: threading.Event, seed: int) -> None:
        super().__init__(profile=SiteProfile(), seed=seed)
        self.gate = gate

    def read(self) -> SensorSample | None:  # type: ignore[override]
        return super().read() if self.gate.is_set() else None


class AgentThread:
    """An EdgeAgent of ``fleet`` on its own thread, its store ``<root>/<device>.sqlite``.

    ``config`` overrides AgentConfig fields (defaults: 50 Hz sampling, a telemetry
    flush every 0.2 s, no health monitor, reconnect backoff from 0.5 s).
    """

    def __init__(
        self,
        root: Path,
        url: str,
        fleet: str,
        device: str,
        *,
        gate: threading.Event,
        seed: int = 0,
        **config: Any,
    ) -> None:
        self.device = device
        self.store_path = root / f"{device}.sqlite"
        cfg = AgentConfig.model_validate(
            {
                "fleet": fleet,
                "device": device,
                "broker": BrokerEndpoint.from_url(url),
                "store_path": self.store_path,
                "sample_interval_s": 0.02,
                "telemetry_interval_s": 0.2,
                "status_interval_s": 5.0,
                "health_enabled": False,
                "reconnect_initial_s": 0.5,
                **config,
            }
        )
        self.agent: EdgeAgent = build_agent(
            cfg, transport=agent_transport(cfg), source=GatedSource(gate=gate, seed=seed)
        )
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name=device, daemon=True)

    def _run(self) -> None:
        try:
            self.agent.run(self.stop)
        except BaseException as exc:  # reported by the caller
            self.errors.append(exc)

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def status(self) -> tuple[int, int, int | None]:
        """(unsent, unconfirmed, confirmed through seq), read-only from its store."""
        s = read_store_status(self.store_path)
        return s.unsent, s.unconfirmed, s.confirmed_through_seq

    def close(self) -> None:
        """Stop the agent (offline status, PUBACKs awaited, transport closed)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(15.0)

    def states(self) -> dict[int, int]:
        """seq -> telemetry state of every reading in the store (read-only)."""
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT seq, sent FROM readings ORDER BY seq").fetchall()
        finally:
            db.close()
        return {int(seq): int(state) for seq, state in rows}
