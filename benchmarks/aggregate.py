"""Aggregation cost on the server: fedge's streaming mean vs Flower's FedAvg, decoding included.

    python benchmarks/aggregate.py [--quick] [--repeats 5]

For N clients in {10, 100, 1000} and models of P in {100k, 1M} float32 parameters
(four tensors), the time and the peak of traced allocations to turn N update
messages, as they arrive on the wire, into the weighted mean. Each column includes:

* **fedge**: per update ``decode_frame(copy=False)`` (prefix, pydantic header,
  safetensors header, the NaN/inf check of every tensor) + ``UpdateValidator.validate``
  (header checks and ``parse_update`` against the template) +
  ``StreamingMean.add_encoded`` (a fused BLAS saxpy per block into float32 partial
  sums, folded into float64 every 16 updates), then ``result()`` —
  what :class:`~aggregator.coordinator.RoundCoordinator` does per reply, minus its
  duplicate digest and journal (I/O, measured by benchmarks/round.py);
* **flwr aggregate**: ``parameters_to_ndarrays`` of every ``FitRes`` (its
  deserialisation: ``np.load`` of each tensor) then
  ``flwr.server.strategy.aggregate.aggregate`` (FedAvg with ``inplace=False``);
* **flwr aggregate_inplace**: ``aggregate_inplace(results)`` (FedAvg's default),
  which deserialises one result at a time and accumulates in float32.

Inputs are built before timing: four distinct updates, reused round-robin (as
frame bytes for fedge, as Flower ``Parameters`` of ``np.save`` bytes for Flower), so
the inputs' memory is not the aggregator's. The three methods run interleaved,
repeat by repeat, and the medians are reported (every time is in ``times_s``).
Flower's ``aggregate`` allocates 2 x N x P x 4 bytes per call; its time depends on
whether glibc serves them from heap kept since the previous call or faults fresh
pages in (0.12-0.17 s vs 0.5-0.7 s at N=100, P=1M on the 2-core test machine), which
the times show. Peak memory is measured in a separate, untimed pass (tracemalloc
slows allocation). ``flwr aggregate`` is skipped where it would hold more than
``--flwr-limit-gib`` of decoded copies (N x P x 8 bytes: the decoded arrays plus the
weighted ones), i.e. N=1000 x P=1M. Results are checked against Flower's to float
tolerance.

Prints a table and writes ``benchmarks/results/aggregate.json`` (``cases``: n, p,
fedge_s, fedge_peak_mib, flwr_aggregate_s, flwr_aggregate_peak_mib, flwr_inplace_s,
flwr_inplace_peak_mib, max_abs_diff_vs_flwr, times_s).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_file import machine, write_results  # noqa: E402
from fedge.codec import FrameHeader, decode_frame, encode_frame  # noqa: E402
from fedge.strategies import StreamingMean  # noqa: E402
from fedge.topics import Topics, parse_topic  # noqa: E402
from fedge.validation import RoundExpectation, UpdateValidator  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "aggregate.json"
FLEET = "bench"
TOPICS = Topics(FLEET)
Tensors = dict[str, np.ndarray]


SHAPES: dict[int, dict[str, tuple[int, ...]]] = {
    # A conv kernel, two dense layers and a bias: 99,072 and 1,002,496 parameters.
    100_000: {"conv.weight": (32, 16, 9), "dense1.weight": (256, 256),
              "dense1.bias": (256,), "dense2.weight": (64, 448)},
    1_000_000: {"conv.weight": (64, 32, 9), "dense1.weight": (1024, 512),
                "dense1.bias": (1024,), "dense2.weight": (512, 896)},
}


def _inputs(p: int) -> tuple[Tensors, list[Tensors], list[int]]:
    rng = np.random.default_rng(p)
    base = {k: (rng.normal(size=s) * 0.05).astype(np.float32) for k, s in SHAPES[p].items()}
    updates = [{k: (v + rng.normal(size=v.shape).astype(np.float32) * 0.01) for k, v in
                base.items()} for _ in range(4)]
    return base, updates, [100 + 37 * i for i in range(4)]


def _fedge_frames(updates: list[Tensors], examples: list[int]) -> list[bytes]:
    return [
        encode_frame(FrameHeader(kind="update", fleet=FLEET, device=f"dev-{i}", round_id=1,
                                 base_version=0, num_examples=n, created_at=1_700_000_000.0), u)
        for i, (u, n) in enumerate(zip(updates, examples, strict=True))
    ]


def _fedge(base: Tensors, frames: list[bytes], n: int) -> Tensors:
    """The coordinator's per-reply work for ``n`` replies, then the mean."""
    validator = UpdateValidator(fleet=FLEET)
    expect = RoundExpectation(1, 0, "train", base)
    topics = [parse_topic(TOPICS.update(1, f"dev-{i}")) for i in range(len(frames))]
    mean = StreamingMean(base)
    limit = 2 * len(frames[0])
    for i in range(n):
        k = i % len(frames)
        frame = decode_frame(frames[k], max_bytes=limit, copy=False)
        reply = validator.validate(topics[k], frame, expect)
        assert reply.update is not None
        mean.add_encoded(reply.update, float(frame.header.num_examples))
    return mean.result()


def _flwr_inputs(updates: list[Tensors], examples: list[int]) -> list[Any]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    names = sorted(updates[0])
    return [
        FitRes(status=Status(code=Code.OK, message=""),
               parameters=ndarrays_to_parameters([u[k] for k in names]), num_examples=n,
               metrics={})
        for u, n in zip(updates, examples, strict=True)
    ]


def _flwr_aggregate(fits: list[Any], n: int) -> list[np.ndarray]:
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy.aggregate import aggregate

    results = [(parameters_to_ndarrays(fits[i % len(fits)].parameters),
                fits[i % len(fits)].num_examples) for i in range(n)]
    return aggregate(results)  # type: ignore[no-any-return]


def _flwr_inplace(fits: list[Any], n: int) -> list[np.ndarray]:
    from flwr.server.strategy.aggregate import aggregate_inplace

    return aggregate_inplace([(None, fits[i % len(fits)]) for i in range(n)])  # type: ignore[no-any-return]


def _times(fns: dict[str, Callable[[], object] | None], repeats: int) -> dict[str, list[float]]:
    """Wall times of each method, interleaved repeat by repeat (load hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name, fn in fns.items() if fn is not None}
    for _ in range(repeats):
        for name, fn in fns.items():
            if fn is None:
                continue
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _peak_mib(fn: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def run_case(n: int, p: int, *, repeats: int, flwr_limit_gib: float) -> dict[str, Any]:
    base, updates, examples = _inputs(p)
    frames = _fedge_frames(updates, examples)
    fits = _flwr_inputs(updates, examples)
    names = sorted(base)
    params = sum(v.size for v in base.values())
    ours = _fedge(base, frames, n)
    theirs = _flwr_inplace(fits, n)
    worst = max(float(np.max(np.abs(ours[k] - t))) for k, t in zip(names, theirs, strict=True))
    big = n * params * 8 > flwr_limit_gib * 2**30
    times = _times({"fedge": lambda: _fedge(base, frames, n),
                    "flwr_inplace": lambda: _flwr_inplace(fits, n),
                    "flwr_aggregate": None if big else lambda: _flwr_aggregate(fits, n)}, repeats)
    fedge_s = statistics.median(times["fedge"])
    inplace_s = statistics.median(times["flwr_inplace"])
    aggregate_s = None if big else statistics.median(times["flwr_aggregate"])
    return {
        "n": n,
        "p": params,
        "fedge_s": round(fedge_s, 4),
        "fedge_peak_mib": round(_peak_mib(lambda: _fedge(base, frames, n)), 2),
        "flwr_aggregate_s": None if aggregate_s is None else round(aggregate_s, 4),
        "flwr_aggregate_peak_mib": None if big else round(
            _peak_mib(lambda: _flwr_aggregate(fits, n)), 2),
        "flwr_inplace_s": round(inplace_s, 4),
        "flwr_inplace_peak_mib": round(_peak_mib(lambda: _flwr_inplace(fits, n)), 2),
        "max_abs_diff_vs_flwr": worst,
        "flwr_aggregate_skipped": big,
        "times_s": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N in {10, 100}, one repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flwr-limit-gib", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise SystemExit("flwr is not installed: pip install flwr (benchmark only)") from None
    ns = (10, 100) if args.quick else (10, 100, 1000)
    repeats = 1 if args.quick else args.repeats
    load_before = os.getloadavg()[0]
    cases = [run_case(n, p, repeats=repeats, flwr_limit_gib=args.flwr_limit_gib)
             for p in (100_000, 1_000_000) for n in ns]
    table = Table(title="Aggregating N float32 updates of P parameters, decoding included "
                        "(median s; peak traced MiB)")
    for col in ("N", "P", "fedge s", "fedge MiB", "flwr aggregate s", "flwr aggregate MiB",
                "flwr inplace s", "flwr inplace MiB", "max |diff|"):
        table.add_column(col, justify="right")
    for c in cases:
        table.add_row(
            str(c["n"]), f"{c['p']:,}", f"{c['fedge_s']:.3f}", f"{c['fedge_peak_mib']:.1f}",
            "skipped" if c["flwr_aggregate_s"] is None else f"{c['flwr_aggregate_s']:.3f}",
            "-" if c["flwr_aggregate_peak_mib"] is None else f"{c['flwr_aggregate_peak_mib']:.0f}",
            f"{c['flwr_inplace_s']:.3f}", f"{c['flwr_inplace_peak_mib']:.1f}",
            f"{c['max_abs_diff_vs_flwr']:.1e}",
        )
    console = Console(width=140)
    console.print(table)
    import flwr as _flwr

    payload = {
        "cases": cases,
        "settings": {"quick": args.quick, "repeats": repeats,
                     "flwr_limit_gib": args.flwr_limit_gib},
        "machine": machine(load_before, numpy=np.__version__, flwr=_flwr.__version__),
    }
    write_results(args.json, payload, console)
    return payload


if __name__ == "__main__":
    main()
