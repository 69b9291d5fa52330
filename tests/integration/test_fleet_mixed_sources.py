"""Three agents with different sources (Modbus TCP, CSV, simulated), one named feature
schema, one fleet, real Mosquitto; a fourth agent that lacks a feature is refused.

Each plant-protocol device starts from imported history (run-to-failure units written
into its store, as a real deployment imports its maintenance records), then reads its
live values from a real pymodbus server or a CSV file through its source plugin.
"""

from __future__ import annotations

import csv
import dataclasses
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aggregator.service import AggregatorService
from broker.mqtt_transport import PahoTransport
from edge_agent.agent import EdgeAgent
from edge_agent.sources import source_from_table
from fedge.config import AgentConfig, AggregatorConfig, BrokerEndpoint
from fedge.data.simulator import SENSOR_NAMES, MachineSimulator, SiteProfile, UnitRun
from fedge.messages import RoundSummary, TrainingConfig
from fedge.spec import ModelSpec, feature_specs
from fedge.topics import Topics
from fedge_app.servers import Mosquitto
from fedge_app.wiring import build_agent
from tests.integration.test_source_modbus import INPUT, ModbusServerThread
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration

FLEET = "mixed"
FEATURES = ("motor_current", "bearing_temp", "vibration_rms", "outlet_pressure")
COLUMNS = [SENSOR_NAMES.index(f) for f in FEATURES]
SPEC = ModelSpec(features=feature_specs(FEATURES, {"motor_current": "A", "bearing_temp": "degC"}))


def _history(seed: int, n: int = 5) -> list[UnitRun]:
    return MachineSimulator(profile=SiteProfile(), seed=seed).units(n)


def _import_history(agent: EdgeAgent, runs: list[UnitRun], order: list[int]) -> None:
    """Maintenance records imported into the device: lives that ended in failure."""
    agent.maintenance.backfill(
        [dataclasses.replace(run, sensors=run.sensors[:, order]) for run in runs], time.time()
    )


def _agent(
    tmp_path: Path, endpoint: BrokerEndpoint, device: str, source_table: dict[str, object],
    *, features: dict[str, str] | None = None, history: list[UnitRun] | None = None,
    channel_order: list[int] | None = None, history_units: int = 0,
) -> EdgeAgent:
    cfg = AgentConfig(
        fleet=FLEET,
        device=device,
        broker=endpoint,
        store_path=tmp_path / f"{device}.sqlite",
        sample_interval_s=0.05,
        telemetry_interval_s=0.2,
        features=features or {},
        source=source_table,
    )
    source = source_from_table(cfg.source, seed=len(device))
    agent = build_agent(
        cfg,
        transport=PahoTransport(endpoint, client_id=f"{FLEET}-{device}"),
        source=source,
        history_units=history_units,
    )
    if history is not None and channel_order is not None:
        _import_history(agent, history, channel_order)
    return agent


@pytest.fixture
def modbus_pump() -> Iterator[ModbusServerThread]:
    server = ModbusServerThread(free_port())
    server.start()
    # Live values of the pump: float32 input registers 0, 2, 4, 6 (big-endian words).
    live = _history(99, 1)[0].sensors[5, COLUMNS]
    for i, value in enumerate(live):
        hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
        server.write("input", 2 * i, [hi, lo])
    try:
        yield server
    finally:
        server.close()


def test_modbus_csv_and_simulated_agents_train_one_model_and_a_device_lacking_a_feature_is_refused(
    tmp_path: Path, mosquitto: Mosquitto, modbus_pump: ModbusServerThread
) -> None:
    assert INPUT == 4
    endpoint = BrokerEndpoint.from_url(mosquitto.url)
    # Modbus device: its own channel names, mapped onto the fleet's features.
    modbus_channels = ["i_motor", "t_bearing", "v_rms", "p_out"]
    modbus = _agent(
        tmp_path, endpoint, "pump-modbus",
        {
            "kind": "modbus", "host": "127.0.0.1", "port": modbus_pump.port,
            "poll_interval_s": 0.05,
            "channels": [
                {"name": n, "register": "input", "address": 2 * i, "type": "float32"}
                for i, n in enumerate(modbus_channels)
            ],
        },
        features=dict(zip(FEATURES, modbus_channels, strict=True)),
        history=_history(1), channel_order=COLUMNS,
    )
    # CSV device: columns in another order, named like the fleet's features.
    csv_order = [3, 1, 0, 2]
    csv_path = tmp_path / "logger.csv"
    live = _history(98, 1)[0].sensors[:, COLUMNS]
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time", *[FEATURES[i] for i in csv_order]])
        for k, row in enumerate(live[:200]):
            writer.writerow([1_800_000_000 + k, *[f"{row[i]:.5f}" for i in csv_order]])
    csv_agent = _agent(
        tmp_path, endpoint, "pump-csv",
        {"kind": "csv", "path": str(csv_path), "time_column": "time", "speed": 0.0},
        history=_history(2), channel_order=[COLUMNS[i] for i in csv_order],
    )
    # Simulated device: 15 channels; the schema picks four of them by name.
    simulated = _agent(tmp_path, endpoint, "pump-sim", {"kind": "simulated"}, history_units=5)
    # A device whose logger has no bearing temperature.
    lacking_path = tmp_path / "old-logger.csv"
    lacking_path.write_text("time,motor_current,vibration_rms,outlet_pressure\n1800000000,1,2,3\n")
    lacking = _agent(
        tmp_path, endpoint, "pump-old",
        {"kind": "csv", "path": str(lacking_path), "time_column": "time", "speed": 0.0},
    )
    agents = [modbus, csv_agent, simulated, lacking]
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]
    for t in threads:
        t.start()
    summaries: list[RoundSummary] = []
    try:
        # Start the aggregator once every device's retained online status is on the broker.
        seen: set[str] = set()
        probe = PahoTransport(endpoint, client_id=f"{FLEET}-probe")
        probe.connect(on_message=lambda m: seen.add(m.topic))
        probe.subscribe(Topics(FLEET).all_status)
        try:
            assert wait_until(lambda: len(seen) == len(agents), timeout=30)
        finally:
            probe.close()
        config = AggregatorConfig(
            fleet=FLEET,
            broker=endpoint,
            rounds=2,
            min_clients=3,
            round_timeout_s=30,
            training=TrainingConfig(epochs=1),
            model=SPEC,
            checkpoint_dir=tmp_path / "ckpt",
        )
        service = AggregatorService(
            config,
            transport=PahoTransport(endpoint, client_id=f"{FLEET}-aggregator"),
            on_round=summaries.append,
        )
        history = service.run(timeout=100)
        # Live readings from the plant protocols reached the stores meanwhile.
        assert modbus.stats.readings > 0 and csv_agent.stats.readings > 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    train = [r for r in history if r.task == "train"]
    assert [r.outcome for r in train] == ["completed", "completed"]
    # The three able devices took part in every completed round; the fourth was refused
    # by name in every round. (A round announced before the aggregator had seen the last
    # device come online fails its quorum and is announced again: a race of the test's
    # start, not of the protocol.)
    for summary in history:
        reasons = dict(summary.rejected_by_reason)
        assert reasons.pop("missing_feature") == 1, summary
        # After such a failed first round, its late replies are counted as late.
        assert set(reasons) <= {"late"}, summary
        assert summary.duration_s < 25  # nobody waited for the refused device's deadline
        if summary.outcome == "completed":
            assert summary.participants == 3, summary
    assert lacking.stats.last_error == "device pump-old lacks feature bearing_temp"
    final = [r for r in history if r.task == "evaluate"]
    assert final and final[0].val_error is not None and np.isfinite(final[0].val_error)
