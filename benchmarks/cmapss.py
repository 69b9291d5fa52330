"""C-MAPSS benchmark: centralised vs federated (IID and non-IID) RUL prediction.

    python benchmarks/cmapss.py --data ../shared/datasets/cmapss --subset FD001

(a) centralised: one model trained on all training engines with the same
``train_local`` the agents use; (b) federated, 10 clients, engines dealt out
evenly at random (IID); (c) federated, 10 clients, engines sorted by lifetime
and cut into unequal contiguous groups (each client sees a different lifetime
range and a different amount of data: label and quantity skew). (b) and (c) run
the real agent and aggregator code over the in-memory transport
(:func:`fedge.simulation.simulate_fleet`), including the federated statistics
round that sets the model's normalisation. Evaluation follows the usual
protocol: last 30-cycle window of each test engine against the raw true RUL.

Prints a table and writes ``benchmarks/results/cmapss-<subset>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from fedge.config import AggregatorConfig, ModelSpec
from fedge.data.cmapss import (
    feature_names,
    informative_sensors,
    load_subset,
    operating_regimes,
    unit_runs,
)
from fedge.data.simulator import UnitRun
from fedge.data.splits import split_iid, split_noniid
from fedge.data.windows import FeatureStats, last_window, make_windows
from fedge.messages import TrainingConfig
from fedge.metrics import nasa_score, rmse
from fedge.models import FaultModel, build_model, count_parameters, load_tensors
from fedge.simulation import replay_devices, simulate_fleet
from fedge.training import WindowDataset, predict, train_local

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = {"Li et al. 2018 (deep CNN)": 12.61, "Zheng et al. 2017 (deep LSTM)": 16.14}


@dataclass(frozen=True)
class RunResult:
    setting: str
    seed: int
    rmse: float
    score: float
    rounds: int
    wall_s: float
    bytes: int = 0


def _windows(runs: list[UnitRun], spec: ModelSpec) -> WindowDataset:
    parts = []
    for run in runs:
        x, y = make_windows(run.sensors, np.minimum(run.rul(), spec.rul_cap), window=spec.window)
        parts.append(WindowDataset(x, y))
    return WindowDataset.concat(parts, n_features=spec.n_features, window=spec.window)


def _score(model: FaultModel, test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, float]:
    pred, _ = predict(model, test_x)
    return rmse(test_y, pred), nasa_score(test_y, pred)


def run_central(
    runs: list[UnitRun],
    test: tuple[np.ndarray, np.ndarray],
    spec: ModelSpec,
    training: TrainingConfig,
    *,
    epochs: int,
    seed: int,
) -> RunResult:
    started = time.monotonic()
    model = build_model(spec, seed=seed)
    stats = FeatureStats.combine(FeatureStats.from_array(r.sensors) for r in runs)
    model.input_mean.copy_(torch.from_numpy(stats.mean.astype(np.float32)))
    model.input_std.copy_(torch.from_numpy(stats.std.astype(np.float32)))
    data = _windows(runs, spec)
    # Same loop shape as the federated runs: one train_local call per epoch.
    for epoch in range(epochs):
        train_local(
            model, data, training.model_copy(update={"epochs": 1}), seed=seed * 100_003 + epoch
        )
    err, score = _score(model, *test)
    return RunResult("centralized", seed, err, score, epochs, time.monotonic() - started)


def run_federated(
    setting: str,
    parts: list[list[UnitRun]],
    names: tuple[str, ...],
    test: tuple[np.ndarray, np.ndarray],
    spec: ModelSpec,
    training: TrainingConfig,
    *,
    rounds: int,
    strategy: str,
    seed: int,
) -> RunResult:
    devices = replay_devices(parts, names)
    config = AggregatorConfig(
        fleet="cmapss",
        rounds=rounds,
        min_clients=len(devices),
        round_timeout_s=3600,
        strategy=strategy,
        training=training,
        model=spec,
        final_evaluation=False,
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        result = simulate_fleet(config, devices, workdir=Path(tmp), holdout_fraction=0.0)
    completed = [r for r in result.rounds if r.task == "train" and r.outcome == "completed"]
    model = build_model(spec)
    load_tensors(model, result.tensors)
    err, score = _score(model, *test)
    return RunResult(
        setting, seed, err, score, len(completed), result.wall_s, result.bytes_published
    )


SPLITS = {"federated_iid": split_iid, "federated_noniid": split_noniid}


def summarise(results: list[RunResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for setting in ("centralized", "federated_iid", "federated_noniid"):
        rows = [r for r in results if r.setting == setting]
        if not rows:
            continue
        errs = [r.rmse for r in rows]
        out[setting] = {
            "rmse_mean": statistics.fmean(errs),
            "rmse_std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
            "score_mean": statistics.fmean(r.score for r in rows),
            "rounds": rows[0].rounds,
            "wall_s": statistics.fmean(r.wall_s for r in rows),
            "runs": [asdict(r) for r in rows],
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "cmapss")
    parser.add_argument("--subset", default="FD001")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--central-epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--model", default="cnn")
    parser.add_argument(
        "--settings", nargs="+", choices=["centralized", *SPLITS], default=["centralized", *SPLITS]
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    subset = load_subset(args.data, args.subset)
    sensors = informative_sensors(subset.train)
    multi = len(operating_regimes(subset.train)) > 1
    names = tuple(n.replace(" ", "_") for n in feature_names(sensors, with_settings=multi))
    train_runs = unit_runs(subset.train, sensor_indices=sensors, with_settings=multi)
    test_runs = unit_runs(subset.test, sensor_indices=sensors, with_settings=multi)
    spec = ModelSpec(name=args.model, n_features=len(names))
    test_x = np.stack([last_window(r.sensors, window=spec.window) for r in test_runs])
    test = (test_x, subset.test_rul.astype(np.float32))
    training = TrainingConfig(
        epochs=args.local_epochs, batch_size=args.batch_size, learning_rate=args.lr
    )
    console = Console()
    console.print(
        f"C-MAPSS {subset.name}: {len(train_runs)} train / {len(test_runs)} test engines, "
        f"{len(names)} features, model {spec.name} with "
        f"{count_parameters(build_model(spec))} parameters"
    )

    results: list[RunResult] = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        for setting in args.settings:
            if setting == "centralized":
                result = run_central(
                    train_runs, test, spec, training, epochs=args.central_epochs, seed=seed
                )
            else:
                parts = SPLITS[setting](train_runs, args.clients, rng)
                result = run_federated(
                    setting,
                    parts,
                    names,
                    test,
                    spec,
                    training,
                    rounds=args.rounds,
                    strategy=args.strategy,
                    seed=seed,
                )
            results.append(result)
            console.print(
                f"  {setting:17s} seed {seed}: RMSE {result.rmse:6.2f}  "
                f"score {result.score:8.1f}  {result.wall_s:6.1f} s"
            )

    summary = summarise(results)
    table = Table(title=f"C-MAPSS {subset.name} — test RMSE (last window, raw true RUL)")
    for col in ("setting", "RMSE mean ± std", "NASA score", "rounds / epochs", "wall s / run"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for setting, s in summary.items():
        table.add_row(
            setting,
            f"{s['rmse_mean']:.2f} ± {s['rmse_std']:.2f}",
            f"{s['score_mean']:.1f}",
            str(s["rounds"]),
            f"{s['wall_s']:.1f}",
        )
    for name, value in PUBLISHED.items():
        table.add_row(f"[dim]{name}[/]", f"[dim]{value:.2f}[/]", "", "", "")
    console.print(table)

    payload = {
        "subset": subset.name,
        "seeds": args.seeds,
        "clients": args.clients,
        "strategy": args.strategy,
        "model": spec.model_dump(),
        "parameters": count_parameters(build_model(spec)),
        "training": training.model_dump(),
        "central_epochs": args.central_epochs,
        "published_rmse": PUBLISHED,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        **summary,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"cmapss-{subset.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
