"""One memory case of ``benchmarks/attacks.py``: a robust reducer or Flower's, N x P.

    python benchmarks/reducer_memory.py median --n 100 --p 1000000

Run in a fresh interpreter (no torch) so the numbers are the case's own. Prints one
JSON line: the tracemalloc peak, the RSS high-water mark above the RSS at the start
(the kernel's peak is reset first through ``/proc/self/clear_refs``) and the time.
Our reducers get each update as it arrives (spooled to an unnamed temp file and
dropped); Flower's functions get the list of every update, which is what they take.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

CASES = ("median", "trimmed_mean", "krum", "multi_krum",
         "flwr_median", "flwr_trimmed_mean", "flwr_krum", "flwr_multi_krum")


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _update(rng: np.random.Generator, p: int) -> list[np.ndarray]:
    return [rng.standard_normal(p // 4, dtype=np.float32) * 0.01 for _ in range(4)]


def run(case: str, n: int, p: int) -> dict[str, float]:
    from aggregator.spool import file_spool
    from fedge.strategies.reducers import SpooledReducer, make_reducer

    if case.startswith("flwr_"):
        from flwr.server.strategy import aggregate as flwr
    rng = np.random.default_rng(0)
    f, m = max(1, n // 10), n // 2  # attackers assumed, updates kept (Multi-Krum)
    template = {f"t{i}": np.zeros(p // 4, np.float32) for i in range(4)}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
    start_rss = _status_kib("VmRSS")
    tracemalloc.start()
    started = time.perf_counter()
    if case.startswith("flwr_"):
        results = [(_update(rng, p), 10) for _ in range(n)]
        if case == "flwr_median":
            flwr.aggregate_median(results)
        elif case == "flwr_trimmed_mean":
            flwr.aggregate_trimmed_avg(results, 0.2)
        else:
            flwr.aggregate_krum(results, f, m if case == "flwr_multi_krum" else 0)
    else:
        options = {"trimmed_mean": {"trim": 0.2}, "krum": {"f": f},
                   "multi_krum": {"f": f, "m": m}}.get(case, {})
        with tempfile.TemporaryDirectory(prefix="fedge-mem-") as tmp:
            reducer = make_reducer(case, options)(template)
            assert isinstance(reducer, SpooledReducer)
            reducer.use_spool(file_spool(Path(tmp)))
            for _ in range(n):  # each update arrives, is spooled, and is dropped
                parts = _update(rng, p)
                reducer.add({f"t{i}": parts[i] for i in range(4)}, 10.0)
                del parts
            reducer.result()
            reducer.close()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"tracemalloc_mib": peak / 2**20,
            "rss_mib": (_status_kib("VmHWM") - start_rss) / 1024, "time_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--p", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(run(args.case, args.n, args.p)))


if __name__ == "__main__":
    main()
