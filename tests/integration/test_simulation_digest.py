"""The in-process simulation is bit-for-bit reproducible, and refactors keep it so.

The digest below was first recorded on the code *before* the application layer moved
out of the core (commit 56e66b8), and re-recorded once, deliberately, when the mean
reducer moved to float32 partial sums (last-bit changes in every aggregate): the same
seed must give the same final global weights. If a change is meant to alter training,
re-record it and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.sources import SimulatedSensorSource
from fedge.config import AggregatorConfig
from fedge.data.simulator import SENSOR_NAMES, make_site_profiles
from fedge.messages import TrainingConfig
from fedge.spec import ModelSpec
from fedge_app.simulation import SimulatedDevice, simulate_fleet

pytestmark = pytest.mark.integration

RECORDED = "f5d95c0e1ad9f30672c956c2b3059356449bd6b1a3f748796040ce99fd0882f0"


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def test_simulation_final_weights_match_the_recorded_digest(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        profiles = make_site_profiles(3, seed=0, non_iid=True)
        devices = [
            SimulatedDevice(
                device=f"dev-{i}",
                source=SimulatedSensorSource(profile=p, seed=i),
                history_units=5,
            )
            for i, p in enumerate(profiles)
        ]
        config = AggregatorConfig(
            fleet="digest",
            rounds=3,
            min_clients=3,
            model=ModelSpec(n_features=len(SENSOR_NAMES)),
            training=TrainingConfig(epochs=1),
            seed=0,
        )
        result = simulate_fleet(config, devices, workdir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert [r.outcome for r in result.rounds] == ["completed"] * 5
    assert _digest(result.tensors) == RECORDED
