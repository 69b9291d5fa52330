"""Cost of Ed25519 signing and verification per frame and per telemetry message.

    python benchmarks/signing.py [--calls 300]

Cases: the demo's global model frame (the default CNN, about 21 KB), a 1 MiB frame
of random float32 weights, and telemetry batches of 1 and 10 readings of 14 sensors.
For each: sign, verify (signature only: the body is hashed, not decoded), and the
plain decode the receiver does anyway, for scale; plus the bytes the signature adds.
One thread, after a warm-up. Prints a table and writes ``benchmarks/results/signing.json``.
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
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cryptography  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from fedge.codec import FrameHeader, decode_frame, encode_frame  # noqa: E402
from fedge.messages import Reading, TelemetryBatch, decode_message, encode_message  # noqa: E402
from fedge.models import build_model  # noqa: E402
from fedge.models.base import state_tensors  # noqa: E402
from fedge.signing import (  # noqa: E402
    KeyRegistry,
    ReplayGuard,
    SigningKey,
    sign_frame,
    sign_message,
    verify_frame,
    verify_message,
)
from fedge.spec import ModelSpec  # noqa: E402
from fedge.topics import Topics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
TOPICS = Topics("plant-7")
DEVICE = SigningKey.from_seed(bytes(range(32)), signer="pump-03")
AGGREGATOR = SigningKey.from_seed(bytes(range(100, 132)), signer="aggregator")
REGISTRY = KeyRegistry(AGGREGATOR.verify_key, {"pump-03": DEVICE.verify_key})


def _time_us(fn: Callable[[], object], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - started) / 1e3)
    return {
        "median_us": statistics.median(times),
        "p95_us": statistics.quantiles(times, n=20)[-1],
    }


def _frames() -> list[tuple[str, bytes, str]]:
    spec = ModelSpec()
    demo = encode_frame(
        FrameHeader(
            kind="global", fleet="plant-7", round_id=7, base_version=7, version=8, model=spec
        ),
        state_tensors(build_model(spec)),
    )
    rng = np.random.default_rng(0)
    big = encode_frame(
        FrameHeader(kind="update", fleet="plant-7", device="pump-03", round_id=7, base_version=7),
        {"w": rng.normal(size=(1 << 20) // 4).astype(np.float32)},
    )
    return [
        ("demo global frame (cnn)", demo, TOPICS.global_model),
        ("1 MiB update frame", big, TOPICS.update(7, "pump-03")),
    ]


def _telemetry(readings: int) -> bytes:
    sensors = [f"s{i}" for i in range(14)]
    batch = TelemetryBatch(
        fleet="plant-7",
        device="pump-03",
        readings=[
            Reading(
                seq=i,
                ts=T0 + i,
                cycle=i,
                values={s: 500.0 + 0.123 * j + i for j, s in enumerate(sensors)},
            )
            for i in range(readings)
        ],
    )
    return encode_message(batch)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per case (>= 20)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.calls < 20:
        parser.error("--calls must be at least 20")

    rows: list[dict[str, Any]] = []
    for name, frame, topic in _frames():
        key = AGGREGATOR if topic == TOPICS.global_model else DEVICE
        signed = sign_frame(frame, key, topic)
        verify_frame(signed, topic, REGISTRY)
        rows.append(
            {
                "case": name,
                "bytes": len(frame),
                "added_bytes": len(signed) - len(frame),
                "sign": _time_us(partial(sign_frame, frame, key, topic), args.calls, args.warmup),
                "verify": _time_us(
                    partial(verify_frame, signed, topic, REGISTRY), args.calls, args.warmup
                ),
                "decode": _time_us(partial(decode_frame, signed), args.calls, args.warmup),
            }
        )
    for readings in (1, 10):
        payload = _telemetry(readings)
        topic = TOPICS.telemetry("pump-03")
        envelope = sign_message(payload, DEVICE, topic, now=T0)
        guard = ReplayGuard(max_age_s=3600.0, capacity=10_000_000)

        def verify(e: bytes = envelope, t: str = topic) -> None:
            verify_message(e, t, REGISTRY, now=T0)

        def sign(p: bytes = payload, t: str = topic) -> bytes:
            return sign_message(p, DEVICE, t, now=T0)

        def sign_verify_guard(p: bytes = payload, t: str = topic, g: ReplayGuard = guard) -> None:
            # Both ends of one message, with a fresh nonce through the replay guard.
            verify_message(sign_message(p, DEVICE, t, now=T0), t, REGISTRY, now=T0, guard=g)

        rows.append(
            {
                "case": f"telemetry, {readings} reading(s) x 14 sensors",
                "bytes": len(payload),
                "added_bytes": len(envelope) - len(payload),
                "sign": _time_us(sign, args.calls, args.warmup),
                "verify": _time_us(verify, args.calls, args.warmup),
                "sign_verify_guard": _time_us(sign_verify_guard, args.calls, args.warmup),
                "decode": _time_us(
                    partial(decode_message, TelemetryBatch, payload), args.calls, args.warmup
                ),
            }
        )

    console = Console(width=150)
    table = Table(title=f"Ed25519 signing, {args.calls} calls per cell (median / p95 µs)")
    cells = ("sign", "verify", "sign_verify_guard", "decode")
    for col in ("case", "bytes", "+bytes", "sign", "verify", "sign+verify+guard", "decode"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["case"],
            str(row["bytes"]),
            str(row["added_bytes"]),
            *(
                f"{row[k]['median_us']:.1f} / {row[k]['p95_us']:.1f}" if k in row else "-"
                for k in cells
            ),
        )
    console.print(table)

    result: dict[str, Any] = {
        "calls": args.calls,
        "cases": rows,
        "machine": {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "processor": platform.machine(),
            "threads": 1,
        },
    }
    out = args.out or REPO / "benchmarks" / "results" / "signing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
