"""Vibration feature stage: time per accelerometer snapshot on one core.

    python benchmarks/vibration.py [--samples 4096] [--rate 10000] [--calls 1000]

Times :func:`fedge.features.vibration_features` on a synthetic bearing-like snapshot
(shaft tone, a resonance excited by periodic impacts, noise, 1 g of gravity), with four
bands and the velocity RMS, after a warm-up. numpy is pinned to one thread (the env
vars must be set before numpy is imported). The device-side target is 5 ms per 4096
samples at 10 kHz. Prints a table and writes ``benchmarks/results/vibration.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fedge.features import VibrationConfig, feature_names, vibration_features  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 5.0


def bearing_snapshot(n: int, fs: float, *, seed: int = 0) -> np.ndarray:
    """A plausible snapshot in g: 25 Hz shaft tone, 3 kHz ringing from 87 Hz impacts, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    shaft = 0.3 * np.sin(2 * np.pi * 25.0 * t)
    since_impact = np.mod(t, 1 / 87.0)
    ringing = 0.8 * np.exp(-since_impact * 800.0) * np.sin(2 * np.pi * 3000.0 * since_impact)
    return 1.0 + shaft + ringing + rng.normal(0.0, 0.05, size=n)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--rate", type=float, default=10_000.0, help="sample rate in Hz")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls (>= 200)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.calls < 200:
        parser.error("--calls must be at least 200")

    nyquist = args.rate / 2
    config = VibrationConfig(
        prefix="bearing",
        sample_rate_hz=args.rate,
        units="g",
        bands_hz=tuple((nyquist * i / 4, nyquist * (i + 1) / 4) for i in range(4)),
        velocity_band_hz=(10.0, min(1000.0, nyquist)),
        max_samples=max(args.samples, 1 << 20),
    )
    snapshot = bearing_snapshot(args.samples, args.rate)
    features = vibration_features(snapshot, config)
    for _ in range(args.warmup):
        vibration_features(snapshot, config)
    times_ms = []
    for _ in range(args.calls):
        started = time.perf_counter_ns()
        vibration_features(snapshot, config)
        times_ms.append((time.perf_counter_ns() - started) / 1e6)
    median = statistics.median(times_ms)
    p95 = statistics.quantiles(times_ms, n=20)[-1]

    console = Console()
    table = Table(title=f"vibration_features: {args.samples} samples at {args.rate:g} Hz")
    for col in ("calls", "median ms", "p95 ms", "min ms", "target ms", "meets target"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(
        str(args.calls),
        f"{median:.4f}",
        f"{p95:.4f}",
        f"{min(times_ms):.4f}",
        f"{TARGET_MS:.1f}",
        "yes" if median <= TARGET_MS else "NO",
    )
    console.print(table)
    values = Table(title="features of the benchmark snapshot")
    values.add_column("feature", no_wrap=True)
    values.add_column("value", justify="right")
    for name in feature_names(config):
        values.add_row(name, f"{features[name]:.6g}")
    console.print(values)

    payload: dict[str, Any] = {
        "snapshot_samples": args.samples,
        "sample_rate_hz": args.rate,
        "features_ms_median": median,
        "features_ms_p95": p95,
        "features_ms_min": min(times_ms),
        "calls": args.calls,
        "target_ms": TARGET_MS,
        "meets_target": median <= TARGET_MS,
        "features": features,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.machine(),
            "threads": 1,
        },
    }
    out = args.out or REPO / "benchmarks" / "results" / "vibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
