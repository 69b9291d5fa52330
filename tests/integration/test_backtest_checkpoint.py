"""The backtest with a real fleet checkpoint: a short in-process federated run writes it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from aggregator.checkpoint import CheckpointStore
from edge_agent.sources import SimulatedSensorSource
from fedge.config import AggregatorConfig
from fedge.data.context import unit_last_window
from fedge.data.simulator import SENSOR_NAMES, MachineSimulator, SiteProfile, make_site_profiles
from fedge.errors import DataError
from fedge.messages import TrainingConfig
from fedge.models import build_model, load_tensors
from fedge.spec import ModelSpec
from fedge.training import predict
from fedge_app.backtest import run_backtest
from fedge_app.simulation import SimulatedDevice, simulate_fleet

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("fleet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The fleet of tests/integration/test_simulation_digest.py, one training round.
        devices = [
            SimulatedDevice(
                device=f"dev-{i}", source=SimulatedSensorSource(profile=p, seed=i), history_units=5
            )
            for i, p in enumerate(make_site_profiles(3, seed=0, non_iid=True))
        ]
        config = AggregatorConfig(
            fleet="backtest",
            rounds=1,
            min_clients=3,
            model=ModelSpec(n_features=len(SENSOR_NAMES)),
            training=TrainingConfig(epochs=1),
            seed=0,
        )
        result = simulate_fleet(config, devices, workdir=workdir)
    finally:
        torch.set_num_threads(threads)
    assert [r.outcome for r in result.rounds][-1] == "completed"
    return workdir / "checkpoints"


def test_backtest_predicts_rul_with_the_fleet_model(checkpoint_dir: Path, tmp_path: Path) -> None:
    unit = MachineSimulator(profile=SiteProfile(), seed=42).unit(1)
    src = tmp_path / "machine.csv"
    with src.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", *SENSOR_NAMES])
        for i, row in enumerate(unit.sensors):
            w.writerow([f"{T0 + 3600 * i:.0f}", *(repr(float(v)) for v in row)])
    summary = run_backtest(
        src,
        time_column="time",
        columns=list(SENSOR_NAMES),
        model_checkpoint=checkpoint_dir,
        out_path=tmp_path / "out.csv",
    )
    checkpoint = CheckpointStore(checkpoint_dir).load_latest()
    assert checkpoint is not None and summary.model_version == checkpoint.version
    with (tmp_path / "out.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == unit.n_cycles and "rul" in rows[0]
    rul = np.array([float(r["rul"]) for r in rows])
    assert np.isfinite(rul).all() and (rul >= 0).all()
    # The last row's RUL is what the model says on the unit's last window, computed apart.
    model = build_model(checkpoint.spec)
    load_tensors(model, checkpoint.tensors)
    spec: ModelSpec = checkpoint.spec
    expected, _ = predict(model, unit_last_window(unit.sensors, spec=spec)[None, ...])
    assert rul[-1] == pytest.approx(float(expected[0]), abs=0.01)
    assert summary.plot_path.stat().st_size > 0


def test_backtest_refuses_columns_the_model_does_not_read(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "m.csv"
    src.write_text(
        "time,a,b\n" + "".join(f"{T0 + 60 * i:.0f},{i % 3},{i % 5}\n" for i in range(40))
    )
    with pytest.raises(DataError, match="reads 15 features"):
        run_backtest(
            src, time_column="time", model_checkpoint=checkpoint_dir, out_path=tmp_path / "o.csv"
        )
    with pytest.raises(DataError, match="no checkpoint"):
        run_backtest(
            src, time_column="time", model_checkpoint=tmp_path / "none", out_path=tmp_path / "o.csv"
        )
