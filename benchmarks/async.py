"""Synchronous rounds vs buffered asynchronous aggregation (FedBuff) on a flapping fleet.

    python benchmarks/async.py [--quick] [--devices 12] [--rounds 12]

A discrete-event simulation on a virtual clock, around the real
:class:`~aggregator.coordinator.RoundCoordinator` (``sync`` or ``fedbuff``) and real
local training (:func:`fedge.training.train_local`) of the default model on each
device's own data (the fleet simulator's pumps, non-IID sites, 3 run-to-failure
units each). What is simulated is time and the links:

* half of the devices flap: each is online a fraction ``p`` of the time, ``p`` drawn
  from U(0.3, 0.7), in online/offline spells of exponential length (mean cycle
  ``--cycle-s``); the other half stay online;
* devices differ in speed: a local round takes ``--train-s`` x U(1, 3) virtual seconds;
* a device trains when it is online and idle, on the newest announcement it holds,
  from the newest global model it holds; its update is delivered when training
  ends, or when it is next online; while offline it misses announcements (it gets
  the retained ones when it is back), and the aggregator drops it from the round's
  expected devices.

Sync runs ``--rounds`` rounds (quorum ``--min-clients``, deadline ``--timeout-s``);
its final validation RMSE is ``sync_val_error`` and its virtual duration
``sync_wall_s``. FedBuff (K = ``--buffer``, ``max_staleness`` 4, weights
1/sqrt(1+s)) then runs until its validation RMSE is within 10% of the sync one
(``async_val_error``, ``async_wall_s``), or twice the sync time has passed. The
validation set is one more unit of every site, pooled; the input normalisation is
the pooled statistics of the training data (the same for both modes).

Prints a table and writes ``benchmarks/results/async.json`` (``sync_val_error``,
``async_val_error``, ``sync_wall_s``, ``async_wall_s``, plus both curves).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from aggregator.coordinator import Publish, RoundClosed, RoundCoordinator  # noqa: E402
from aggregator.state import Checkpoint  # noqa: E402
from benchmarks.cmapss import run_windows  # noqa: E402
from fedge.codec import FrameHeader, decode_frame, encode_frame  # noqa: E402
from fedge.config import AggregatorConfig  # noqa: E402
from fedge.data.context import stats_rows  # noqa: E402
from fedge.data.simulator import MachineSimulator, make_site_profiles  # noqa: E402
from fedge.data.windows import FeatureStats  # noqa: E402
from fedge.messages import (  # noqa: E402
    DeviceStatus,
    RoundAnnouncement,
    TrainingConfig,
    decode_message,
    encode_message,
)
from fedge.models import build_model, load_tensors, state_tensors, trainable_names  # noqa: E402
from fedge.spec import ModelSpec  # noqa: E402
from fedge.strategies import Strategy  # noqa: E402
from fedge.topics import Topics  # noqa: E402
from fedge.training import WindowDataset, evaluate, train_local  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "async.json"
FLEET = "asyncbench"
TOPICS = Topics(FLEET)
T0 = 1_700_000_000.0  # virtual time 0, as a Unix timestamp the wire accepts
TRAINING = TrainingConfig(epochs=2, batch_size=64, learning_rate=2e-3)


@dataclass
class Device:
    name: str
    data: WindowDataset
    speed: float
    flapping: bool
    online_fraction: float
    rng: np.random.Generator
    online: bool = True
    next_flip: float = math.inf
    busy_until: float | None = None
    outbox: list[tuple[float, str, bytes]] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)


def _fleet(n: int, spec: ModelSpec, args: argparse.Namespace) -> tuple[list[Device],
                                                                        WindowDataset,
                                                                        dict[str, np.ndarray]]:
    rng = np.random.default_rng(args.seed)
    devices, holdout, train_runs = [], [], []
    for i, profile in enumerate(make_site_profiles(n, seed=args.seed, non_iid=True)):
        runs = MachineSimulator(profile=profile, seed=100 + i).units(4)
        train_runs += runs[:3]
        holdout.append(run_windows(runs[3:], spec))
        flapping = i % 2 == 1
        devices.append(Device(
            name=f"dev-{i:02d}", data=run_windows(runs[:3], spec),
            speed=float(rng.uniform(1.0, 3.0)), flapping=flapping,
            online_fraction=float(rng.uniform(0.3, 0.7)) if flapping else 1.0,
            rng=np.random.default_rng(1000 + i)))
    stats = FeatureStats.combine(
        FeatureStats.from_array(stats_rows(r.sensors, cycles=np.arange(r.n_cycles), spec=spec))
        for r in train_runs)
    norm = {"input_mean": stats.mean.astype(np.float32), "input_std": stats.std.astype(np.float32)}
    return devices, WindowDataset.concat(holdout, n_features=spec.input_features,
                                         window=spec.window), norm


def _spell(device: Device, online: bool, cycle_s: float) -> float:
    mean = cycle_s * (device.online_fraction if online else 1 - device.online_fraction)
    return float(device.rng.exponential(mean))


class Simulation:
    """One run of the fleet under one participation policy, on a virtual clock."""

    def __init__(self, participation: str, options: dict[str, float], args: argparse.Namespace,
                 spec: ModelSpec) -> None:
        self.args = args
        self.spec = spec
        self.devices, self.validation, norm = _fleet(args.devices, spec, args)
        model = build_model(spec, seed=args.seed)
        tensors = state_tensors(model) | norm
        config = AggregatorConfig(
            fleet=FLEET, rounds=None, min_clients=args.min_clients,
            round_timeout_s=args.timeout_s, training=TRAINING, model=spec,
            federated_stats=False, final_evaluation=False, seed=args.seed,
            participation=participation, participation_options=options,
        )
        self.coordinator = RoundCoordinator(
            config, strategy=Strategy.from_settings(config),
            initial=Checkpoint(fleet=FLEET, version=0, round_id=0, spec=spec, tensors=tensors,
                               stats_done=True),
            trainable=trainable_names(model))
        self.global_version = 0
        self.global_tensors = tensors
        self.announcement: RoundAnnouncement | None = None
        self.curve: list[tuple[float, int, float]] = [(0.0, 0, self._val_error(tensors))]
        self.updates_sent = 0
        self.rejected = 0

    def _val_error(self, tensors: dict[str, np.ndarray]) -> float:
        model = build_model(self.spec)
        load_tensors(model, tensors)
        return evaluate(model, self.validation).rmse

    def _effects(self, effects: list[Any], now: float) -> None:
        for effect in effects:
            if isinstance(effect, Publish) and effect.topic == TOPICS.global_model:
                frame = decode_frame(effect.payload)
                assert frame.header.version is not None
                if frame.header.version != self.global_version:
                    self.global_version = frame.header.version
                    self.global_tensors = frame.tensors
                    self.curve.append((now, self.global_version, self._val_error(frame.tensors)))
            elif isinstance(effect, Publish) and effect.topic == TOPICS.round_current:
                self.announcement = decode_message(RoundAnnouncement, effect.payload)
            elif isinstance(effect, RoundClosed):
                self.rejected += effect.summary.rejected

    def _status(self, device: Device, now: float) -> None:
        payload = encode_message(DeviceStatus(fleet=FLEET, device=device.name, ts=T0 + now,
                                              state="online" if device.online else "offline"))
        self._effects(self.coordinator.handle(TOPICS.status(device.name), payload, T0 + now), now)

    def _train(self, device: Device, ann: RoundAnnouncement, now: float) -> None:
        model = build_model(self.spec)
        load_tensors(model, self.global_tensors)
        torch.manual_seed(zlib.crc32(f"{device.name}:{ann.round_id}".encode()))
        result = train_local(model, device.data, ann.training, seed=ann.round_id)
        header = FrameHeader(kind="update", fleet=FLEET, device=device.name,
                             round_id=ann.round_id, base_version=ann.base_version,
                             num_examples=result.num_examples, created_at=T0 + now)
        frame = encode_frame(header, state_tensors(model, trainable_only=True))
        done = now + self.args.train_s * device.speed
        device.busy_until = done
        device.outbox.append((done, TOPICS.update(ann.round_id, device.name), frame))
        device.answered.add(ann.round_id)

    def step(self, now: float) -> None:
        for device in self.devices:
            if device.flapping and now >= device.next_flip:
                device.online = not device.online
                device.next_flip = now + _spell(device, device.online, self.args.cycle_s)
                self._status(device, now)
            if device.busy_until is not None and now >= device.busy_until:
                device.busy_until = None
            if device.online:
                for due, topic, payload in [o for o in device.outbox if o[0] <= now]:
                    device.outbox.remove((due, topic, payload))
                    self.updates_sent += 1
                    self._effects(self.coordinator.handle(topic, payload, T0 + now), now)
        ann = self.announcement
        for device in self.devices:
            if (ann is not None and ann.task == "train" and device.online
                    and device.busy_until is None and ann.round_id not in device.answered
                    and self.global_version == ann.base_version and T0 + now < ann.deadline):
                self._train(device, ann, now)
        self._effects(self.coordinator.tick(T0 + now), now)

    def run(self, *, until: float, stop: Any) -> float:
        for device in self.devices:
            if device.flapping:
                device.online = bool(device.rng.random() < device.online_fraction)
                device.next_flip = _spell(device, device.online, self.args.cycle_s)
            self._status(device, 0.0)
        now = 0.0
        while now < until and not stop(self):
            now += self.args.dt
            self.step(now)
        return now


def _report(sim: Simulation, wall: float) -> dict[str, Any]:
    return {"wall_s": round(wall, 1), "val_error": round(sim.curve[-1][2], 3),
            "versions": sim.global_version, "updates_sent": sim.updates_sent,
            "rejected": sim.rejected,
            "curve": [{"t": round(t, 1), "version": v, "val_error": round(e, 3)}
                      for t, v, e in sim.curve]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--min-clients", type=int, default=3)
    parser.add_argument("--buffer", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--train-s", type=float, default=10.0)
    parser.add_argument("--cycle-s", type=float, default=120.0)
    parser.add_argument("--dt", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="8 devices, 8 rounds")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.rounds = 8, 8
    torch.set_num_threads(1)
    logging.getLogger("aggregator").setLevel(logging.ERROR)  # rejections are counted instead
    console = Console(width=120)
    spec = ModelSpec(n_features=len(MachineSimulator(profile=make_site_profiles(
        1, seed=0, non_iid=False)[0], seed=0).sensor_names))
    started = time.monotonic()
    sync = Simulation("sync", {}, args, spec)
    sync_wall = sync.run(until=1e9, stop=lambda s: s.global_version >= args.rounds)
    target = sync.curve[-1][2] * 1.10
    fedbuff = Simulation("fedbuff", {"buffer_size": float(args.buffer), "max_staleness": 4.0},
                         args, spec)
    async_wall = fedbuff.run(until=2 * sync_wall,
                             stop=lambda s: s.global_version > 0 and s.curve[-1][2] <= target)
    at_sync_wall = [e for t, _, e in fedbuff.curve if t <= sync_wall]
    result = {
        "sync_val_error": round(sync.curve[-1][2], 3),
        "async_val_error": round(fedbuff.curve[-1][2], 3),
        "sync_wall_s": round(sync_wall, 1),
        "async_wall_s": round(async_wall, 1),
        "async_reached_target": fedbuff.curve[-1][2] <= target,
        "async_val_error_within_sync_wall": round(min(at_sync_wall), 3),
        "sync": _report(sync, sync_wall),
        "async": _report(fedbuff, async_wall),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "real_s": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count()},
    }
    table = Table(title=f"{args.devices} devices, half flapping 30-70% online; virtual time")
    for col in ("mode", "val RMSE", "virtual s", "versions", "updates sent", "rejected"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for name, sim, wall in (("sync", sync, sync_wall), (f"fedbuff K={args.buffer}", fedbuff,
                                                          async_wall)):
        table.add_row(name, f"{sim.curve[-1][2]:.2f}", f"{wall:.0f}", str(sim.global_version),
                      str(sim.updates_sent), str(sim.rejected))
    console.print(table)
    console.print(f"target: within 10% of sync ({target:.2f}); async "
                  f"{'reached it' if result['async_reached_target'] else 'did not reach it'} "
                  f"in {async_wall:.0f} s vs {sync_wall:.0f} s for sync")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
