"""A federated run with int8 + delta + error feedback updates converges like float32.

The in-process simulation (real agents and aggregator over the in-memory broker):
the same seeded fleet trains once with plain float32 updates and once with the
compressed codec; the compressed run sends under a third of the bytes and ends
within 2% of the float32 run's final evaluation error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_agent.sources import SimulatedSensorSource
from fedge.compression import UpdateCodec
from fedge.config import AggregatorConfig
from fedge.data.simulator import SENSOR_NAMES, make_site_profiles
from fedge.messages import RoundSummary, TrainingConfig
from fedge.spec import ModelSpec
from fedge_app.simulation import SimulatedDevice, simulate_fleet

pytestmark = pytest.mark.integration


def _run(codec: UpdateCodec, workdir: Path) -> list[RoundSummary]:
    profiles = make_site_profiles(3, seed=0, non_iid=True)
    devices = [
        SimulatedDevice(device=f"dev-{i}", source=SimulatedSensorSource(profile=p, seed=i),
                        history_units=5)
        for i, p in enumerate(profiles)
    ]
    config = AggregatorConfig(
        fleet="codec", rounds=6, min_clients=3, model=ModelSpec(n_features=len(SENSOR_NAMES)),
        training=TrainingConfig(epochs=2), seed=0, codec=codec,
    )
    return simulate_fleet(config, devices, workdir=workdir).rounds


def test_int8_delta_error_feedback_converges_like_float32(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = _run(UpdateCodec(), tmp_path / "plain")
        packed = _run(UpdateCodec(dtype="int8", delta=True, error_feedback=True), tmp_path / "int8")
    finally:
        torch.set_num_threads(threads)
    for rounds in (plain, packed):
        assert [r.outcome for r in rounds] == ["completed"] * 8
        assert all(r.rejected == 0 for r in rounds)
    train = [r for r in packed if r.task == "train"]
    errors = [r.val_error for r in train]
    assert all(e is not None for e in errors)
    assert errors[-1] < 0.5 * errors[0]  # type: ignore[operator]  # it learns
    final_plain, final_packed = plain[-1].val_error, packed[-1].val_error
    assert plain[-1].task == packed[-1].task == "evaluate"
    assert final_plain is not None and final_packed is not None
    assert abs(final_packed - final_plain) <= 0.02 * final_plain
    sent = sum(r.bytes_received for r in train)
    sent_plain = sum(r.bytes_received for r in plain if r.task == "train")
    assert sent < sent_plain / 3
