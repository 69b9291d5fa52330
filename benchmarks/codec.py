"""Update codec benchmark: bytes per update, encode/decode time, reconstruction error.

    python benchmarks/codec.py [--repeats 5] [--aggregate 100] [--rounds 10]

Three "updates", each a base (the round's global weights) plus a perturbation of
1% of every tensor's RMS (a stand-in for one round of local training; the lead
adds a column with real FD001 updates):

* **demo**: the trainable tensors of ``build_model(ModelSpec(n_features=15))``;
* **fd001**: ``ModelSpec(n_features=14, context="history", dropout=0.1, offset_noise=0.6)``;
* **synthetic-1m**: four float32 arrays, 1,002,496 parameters.

Every scheme is measured as a whole update frame (prefix + JSON header + body), the
bytes a device publishes: ``encode_ms`` = compress_update + encode_frame,
``decode_ms`` = decode_frame(copy=False) + parse_update + decompress,
``accumulate_ms`` = decode_frame(copy=False) + accumulate into float64 sums.
``rel_error`` is ``|decoded - update| / |update|``; ``rel_error_delta`` divides by
``|update - base|`` instead (what the round actually changed); ``rel_error_rounds``
is the error of the sum of ``--rounds`` successive updates as the aggregator saw
them, against the sum of the true updates: error feedback shows up there.

Baselines: ``torch.save`` of the same tensors (io.BytesIO), and ``np.save`` per
array, which is what Flower's ``ndarrays_to_parameters`` does; Flower itself is
measured only if ``flwr`` is importable (it is not installed here).

``fd001_rmse`` (rows of the fd001 model): the test RMSE of a real federated run on
C-MAPSS FD001, non-IID (10 clients, engines cut by lifetime, as in
``benchmarks/cmapss.py``), 80 rounds x 2 local epochs, with every update encoded by
that scheme end to end (agents compress, the aggregator validates and accumulates
the encoded bodies), the mean over ``--fd001-seeds``; ``float32_fd001_rmse`` is the
plain run. Needs ``--data`` (default ``$FEDGE_CMAPSS_DIR``, else
``../shared/datasets/cmapss``; skipped with a note when absent). The same seeds give
every scheme the same split and initial model.

Then the aggregation of ``--aggregate`` updates of the 1M model, the old path
(``StreamingMean.add`` of decoded float32 weights) against ``accumulate_update``,
with the peak of traced allocations per update, and the decode of a plain frame
with and without copies.

Prints tables and writes ``benchmarks/results/codec.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedge.codec import FrameHeader, decode_frame, encode_frame  # noqa: E402
from fedge.compression import (  # noqa: E402
    UpdateCodec,
    accumulate_update,
    compress_update,
    parse_update,
    wire_codec,
)
from fedge.config import ModelSpec  # noqa: E402
from fedge.models import build_model, state_tensors  # noqa: E402
from fedge.strategies import StreamingMean  # noqa: E402

FD001_SCHEMES = (
    "float32", "float16", "delta+int8+ef", "delta+int4+ef", "delta+int4+top25%+ef+zstd",
    "delta+int8+top10%+ef", "delta+int4+top10%+ef+zstd", "delta+int4+top1%+ef+zstd",
)

RESULTS = REPO / "benchmarks" / "results" / "codec.json"
Tensors = dict[str, np.ndarray]


def _ef(**fields: Any) -> UpdateCodec:
    """A delta codec with error feedback."""
    return UpdateCodec(delta=True, error_feedback=True, **fields)


SCHEMES: dict[str, UpdateCodec] = {
    "float32": UpdateCodec(),
    "float32+zstd": UpdateCodec(zstd_level=3),
    "float16": UpdateCodec(dtype="float16"),
    "int8/tensor": UpdateCodec(dtype="int8"),
    "int8/channel": UpdateCodec(dtype="int8", granularity="channel"),
    "int4/tensor": UpdateCodec(dtype="int4"),
    "int4/channel": UpdateCodec(dtype="int4", granularity="channel"),
    "delta+int8+ef": _ef(dtype="int8"),
    "delta+int4+ef": _ef(dtype="int4", granularity="channel"),
    "delta+int4+top25%+ef+zstd": _ef(dtype="int4", top_k=0.25, zstd_level=3),
    "delta+int8+top10%+ef": _ef(dtype="int8", top_k=0.1),
    "delta+int4+top10%+ef+zstd": _ef(dtype="int4", top_k=0.1, zstd_level=3),
    "delta+int4+top1%+ef+zstd": _ef(dtype="int4", top_k=0.01, zstd_level=3),
}


@dataclass(frozen=True)
class Update:
    model: str
    base: Tensors
    update: Tensors


def _perturb(base: Tensors, rng: np.random.Generator) -> Tensors:
    out = {}
    for name, value in base.items():
        rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64)))) if value.size else 0.0
        noise = rng.normal(size=value.shape) * 0.01 * max(rms, 1e-3)
        out[name] = (value + noise).astype(np.float32)
    return out


def _models(rng: np.random.Generator) -> list[Update]:
    torch.manual_seed(0)
    out = []
    for name, spec in (
        ("demo", ModelSpec(n_features=15)),
        ("fd001", ModelSpec(n_features=14, context="history", dropout=0.1, offset_noise=0.6)),
    ):
        base = state_tensors(build_model(spec), trainable_only=True)
        out.append(Update(name, base, _perturb(base, rng)))
    shapes = {"conv.weight": (64, 32, 9), "dense1.weight": (1024, 512),
              "dense2.weight": (512, 896), "dense1.bias": (1024,)}
    big = {k: (rng.normal(size=s) * 0.05).astype(np.float32) for k, s in shapes.items()}
    out.append(Update("synthetic-1m", big, _perturb(big, rng)))
    return out


def _header(codec: UpdateCodec) -> FrameHeader:
    return FrameHeader(kind="update", fleet="plant-7", device="pump-03", round_id=12,
                       base_version=3, num_examples=1000, metrics={"train_loss": 0.5},
                       codec=wire_codec(codec), created_at=1_700_000_000.0)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _norm(tensors: Mapping[str, np.ndarray], minus: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((tensors[k].astype(np.float64) - minus[k]) ** 2)
                             for k in tensors)))


def _zeros(tensors: Mapping[str, np.ndarray]) -> Tensors:
    return {k: np.zeros(v.shape) for k, v in tensors.items()}


def _encode(u: Update, codec: UpdateCodec, residual: Tensors | None = None) -> tuple[bytes, Any]:
    out = compress_update(u.update, codec=codec, base=u.base, residual=residual)
    return encode_frame(_header(codec), out.tensors), out.residual


def _decode(frame: bytes, base: Tensors) -> Tensors:
    f = decode_frame(frame, copy=False)
    return parse_update(f.tensors, f.codec, template=base, base=base).decompress()


def _rounds_error(u: Update, codec: UpdateCodec, rounds: int, seed: int) -> float:
    """|sum of what the aggregator decoded - sum of the true updates| / |sum of true|."""
    rng = np.random.default_rng(seed)
    base, residual = u.base, None
    true = {k: np.zeros(v.shape) for k, v in base.items()}
    seen = {k: np.zeros(v.shape) for k, v in base.items()}
    for _ in range(rounds):
        trained = _perturb(base, rng)
        out = compress_update(trained, codec=codec, base=base, residual=residual)
        decoded = parse_update(out.tensors, codec, template=base, base=base).decompress()
        for k in base:
            true[k] += trained[k].astype(np.float64) - base[k]
            seen[k] += decoded[k].astype(np.float64) - base[k]
        residual, base = out.residual, decoded
    return _norm(seen, true) / _norm(true, _zeros(true))


def _baselines(u: Update) -> list[dict[str, Any]]:
    rows = []
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in u.update.items()}, buf)
    rows.append({"baseline": "torch.save", "model": u.model, "bytes": buf.tell()})
    size = 0
    for value in u.update.values():
        one = io.BytesIO()
        np.save(one, value, allow_pickle=False)
        size += one.tell()
    rows.append({"baseline": "np.save per array (Flower's ndarray_to_bytes)", "model": u.model,
                 "bytes": size})
    try:
        from flwr.common import ndarrays_to_parameters  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        params = ndarrays_to_parameters(list(u.update.values()))
        rows.append({"baseline": "flwr ndarrays_to_parameters", "model": u.model,
                     "bytes": sum(len(t) for t in params.tensors)})
    return rows


def _measure(u: Update, name: str, codec: UpdateCodec, args: argparse.Namespace,
             float32_bytes: int) -> dict[str, Any]:
    big = u.model == "synthetic-1m"
    repeats = max(1, args.repeats // 2) if big else args.repeats * 4
    frame, _ = _encode(u, codec)
    decoded = _decode(frame, u.base)
    sums = {k: np.zeros(v.shape) for k, v in u.base.items()}

    def accumulate() -> None:
        f = decode_frame(frame, copy=False)
        accumulate_update(sums, f.tensors, f.codec, weight=10.0, base=u.base)

    row = {
        "scheme": name,
        "model": u.model,
        "params": sum(v.size for v in u.update.values()),
        "bytes": len(frame),
        "ratio_vs_float32": round(float32_bytes / len(frame), 2),
        "encode_ms": round(_median_ms(lambda: _encode(u, codec), repeats), 3),
        "decode_ms": round(_median_ms(lambda: _decode(frame, u.base), repeats), 3),
        "accumulate_ms": round(_median_ms(accumulate, repeats), 3),
        "rel_error": _norm(decoded, u.update) / _norm(u.update, _zeros(u.update)),
        "rel_error_delta": _norm(decoded, u.update) / _norm(u.update, u.base),
        "rel_error_rounds": None if big else _rounds_error(u, codec, args.rounds, seed=1),
        "codec": codec.model_dump(exclude_none=True),
    }
    return row


def _aggregation(u: Update, args: argparse.Namespace) -> list[dict[str, Any]]:
    """N updates of the 1M model: StreamingMean.add(decoded) vs accumulate_update."""
    rows = []
    rng = np.random.default_rng(5)
    for name in ("float32", "delta+int8+ef", "delta+int4+top10%+ef+zstd"):
        codec = SCHEMES[name]
        frames = [_encode(Update(u.model, u.base, _perturb(u.base, rng)), codec)[0]
                  for _ in range(4)]
        def old(frame: bytes, mean: Any) -> None:
            f = decode_frame(frame)
            tensors = (f.tensors if f.codec.plain else
                       parse_update(f.tensors, f.codec, template=u.base, base=u.base).decompress())
            mean.add(tensors, 10.0)

        def new(frame: bytes, sums: Any) -> None:
            f = decode_frame(frame, copy=False)
            accumulate_update(sums, f.tensors, f.codec, weight=10.0, base=u.base)

        paths: dict[str, Callable[[bytes, Any], None]] = {
            "StreamingMean.add(decoded)": old, "accumulate_update": new,
        }
        for label, fn in paths.items():
            target: Any = (StreamingMean(u.base) if label.startswith("Streaming")
                           else {k: np.zeros(v.shape) for k, v in u.base.items()})
            tracemalloc.start()
            fn(frames[0], target)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            start = time.perf_counter()
            for i in range(args.aggregate):
                fn(frames[i % len(frames)], target)
            elapsed = time.perf_counter() - start
            rows.append({"scheme": name, "path": label, "updates": args.aggregate,
                         "params": sum(v.size for v in u.base.values()),
                         "total_s": round(elapsed, 3),
                         "per_update_ms": round(elapsed / args.aggregate * 1e3, 3),
                         "peak_alloc_per_update_bytes": peak})
    return rows


def _decode_copies(u: Update, repeats: int) -> list[dict[str, Any]]:
    frame = encode_frame(_header(UpdateCodec()), u.update)
    rows = []
    for label, copy in (("copy=True (default)", True), ("copy=False (views)", False)):
        tracemalloc.start()
        decode_frame(frame, copy=copy)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ms = _median_ms(lambda copy=copy: decode_frame(frame, copy=copy), repeats * 4)  # type: ignore[misc]
        rows.append({"decode": label, "frame_bytes": len(frame), "ms": round(ms, 3),
                     "peak_alloc_bytes": peak})
    return rows


def _fd001_rmse(args: argparse.Namespace, console: Console) -> dict[str, float]:
    """Test RMSE of a federated non-IID FD001 run per scheme (mean over the seeds)."""
    from benchmarks.cmapss import HISTORY, _score
    from fedge.config import AggregatorConfig
    from fedge.data.cmapss import feature_names, informative_sensors, load_subset, unit_runs
    from fedge.data.context import unit_last_window
    from fedge.data.splits import split_noniid
    from fedge.messages import TrainingConfig
    from fedge.models import load_tensors
    from fedge_app.simulation import replay_devices, simulate_fleet

    torch.set_num_threads(1)
    subset = load_subset(args.data, "FD001")
    sensors = informative_sensors(subset.train)
    names = tuple(n.replace(" ", "_") for n in feature_names(sensors, with_settings=False))
    train_runs = unit_runs(subset.train, sensor_indices=sensors, with_settings=False)
    test_runs = unit_runs(subset.test, sensor_indices=sensors, with_settings=False)
    spec = ModelSpec(n_features=len(names), **HISTORY)
    test_x = np.stack([unit_last_window(r.sensors, spec=spec) for r in test_runs])
    test_y = subset.test_rul.astype(np.float32)
    out: dict[str, float] = {}
    for name in args.fd001_schemes:
        errors = []
        for seed in args.fd001_seeds:
            parts = split_noniid(train_runs, 10, np.random.default_rng(seed))
            config = AggregatorConfig(
                fleet="cmapss", rounds=args.fd001_rounds, min_clients=10, round_timeout_s=3600,
                training=TrainingConfig(epochs=2, batch_size=128, learning_rate=1e-3),
                model=spec, final_evaluation=False, seed=seed, codec=SCHEMES[name],
            )
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="fedge-codec-") as tmp:
                result = simulate_fleet(config, replay_devices(parts, names), workdir=Path(tmp),
                                        holdout_fraction=0.0)
            rounds = [r for r in result.rounds if r.task == "train"]
            if not all(r.outcome == "completed" and r.rejected == 0 for r in rounds):
                raise RuntimeError(f"{name}: a round failed or rejected updates: {rounds}")
            model = build_model(spec)
            load_tensors(model, result.tensors)
            errors.append(_score(model, test_x, test_y).rmse)
            console.print(f"  FD001 non-IID {name:28s} seed {seed}: RMSE {errors[-1]:6.2f}  "
                          f"({time.monotonic() - started:.0f} s)")
        out[name] = statistics.fmean(errors)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--aggregate", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data", type=Path, default=Path(
        os.environ.get("FEDGE_CMAPSS_DIR", REPO.parent / "shared" / "datasets" / "cmapss")))
    parser.add_argument("--fd001-rounds", type=int, default=80)
    parser.add_argument("--fd001-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fd001-schemes", nargs="+", choices=list(SCHEMES),
                        default=list(FD001_SCHEMES))
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; FD001 over 20 rounds for four schemes")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.aggregate, args.fd001_rounds = 2, 20, 20
        args.fd001_schemes = ["float32", "delta+int8+ef", "delta+int4+top25%+ef+zstd",
                              "delta+int4+top10%+ef+zstd"]
    if "float32" not in args.fd001_schemes:
        args.fd001_schemes.insert(0, "float32")
    console = Console(width=160)
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    updates = _models(rng)

    schemes: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for u in updates:
        float32_bytes = len(_encode(u, SCHEMES["float32"])[0])
        for name, codec in SCHEMES.items():
            schemes.append(_measure(u, name, codec, args, float32_bytes))
        baselines += _baselines(u)
    notes: list[str] = []
    fd001: dict[str, float] = {}
    if (args.data / "train_FD001.txt").exists():
        fd001 = _fd001_rmse(args, console)
    else:
        notes.append(f"no C-MAPSS data in {args.data}: fd001_rmse not measured")
    for row in schemes:
        row["fd001_rmse"] = fd001.get(row["scheme"]) if row["model"] == "fd001" else None

    table = Table(title="Update frames (prefix + header + body) per scheme")
    base_rmse = fd001.get("float32")
    for col in ("model", "scheme", "bytes", "x vs f32", "enc ms", "dec ms", "acc ms",
                "rel err", "rel err Δ", f"rel err {args.rounds} rounds", "FD001 RMSE",
                "vs f32"):
        table.add_column(col, justify="left" if col in ("model", "scheme") else "right")
    for r in schemes:
        rounds = "-" if r["rel_error_rounds"] is None else f"{r['rel_error_rounds']:.2%}"
        rmse = r["fd001_rmse"]
        table.add_row(r["model"], r["scheme"], f"{r['bytes']:,}", f"{r['ratio_vs_float32']:.1f}",
                      f"{r['encode_ms']:.2f}", f"{r['decode_ms']:.2f}",
                      f"{r['accumulate_ms']:.2f}", f"{r['rel_error']:.3%}",
                      f"{r['rel_error_delta']:.1%}", rounds,
                      "-" if rmse is None else f"{rmse:.2f}",
                      "-" if rmse is None or not base_rmse else f"{rmse / base_rmse - 1:+.1%}")
    console.print(table)
    base_table = Table(title="Baselines (same float32 tensors)")
    for col in ("model", "serialisation", "bytes"):
        base_table.add_column(col)
    for r in baselines:
        base_table.add_row(r["model"], r["baseline"], f"{r['bytes']:,}")
    console.print(base_table)
    if not any(r["baseline"].startswith("flwr") for r in baselines):
        notes.append("flwr is not installed: the Flower column is the np.save-per-array size "
                     "that flwr.common.ndarray_to_bytes produces, measured without Flower.")
        console.print(notes[-1])

    big = updates[-1]
    aggregation = _aggregation(big, args)
    agg_table = Table(title=f"Aggregating {args.aggregate} updates of {big.model}")
    for col in ("scheme", "path", "total s", "ms/update", "peak alloc/update"):
        agg_table.add_column(col)
    for r in aggregation:
        agg_table.add_row(r["scheme"], r["path"], f"{r['total_s']:.2f}",
                          f"{r['per_update_ms']:.2f}",
                          f"{r['peak_alloc_per_update_bytes'] / 1e6:.1f} MB")
    console.print(agg_table)
    decode = _decode_copies(big, args.repeats)
    dec_table = Table(title="Decoding a plain float32 frame of the 1M model")
    for col in ("decode", "frame bytes", "ms", "peak alloc"):
        dec_table.add_column(col)
    for r in decode:
        dec_table.add_row(r["decode"], f"{r['frame_bytes']:,}", f"{r['ms']:.2f}",
                          f"{r['peak_alloc_bytes'] / 1e6:.2f} MB")
    console.print(dec_table)

    payload = {
        "schemes": schemes,
        "float32_fd001_rmse": base_rmse,
        "baselines": baselines,
        "aggregation": aggregation,
        "decode": decode,
        "notes": notes,
        "settings": vars(args) | {"json": str(args.json)},
        "machine": {
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    console.print(f"wrote {args.json}")
    return payload


if __name__ == "__main__":
    main()
