"""Run the small-devices-on-bad-links benchmarks in turn, then check their targets.

    python benchmarks/run_all.py [--quick] [--only codec aggregate ...]

Each benchmark runs as its own process (``benchmarks/<name>.py``, with ``--quick``
passed on), prints its table and writes ``benchmarks/results/<name>.json``; this
script then reads the JSON files and prints one table of targets, met or not.
Exit status 1 if a benchmark failed (a missed target is reported, not an error).

=================  ==========================================================
benchmark          target
=================  ==========================================================
codec              >= 10x fewer bytes than float32 at <= 2% higher FD001 RMSE
aggregate          N=100, P=1M: <= Flower aggregate_inplace's time, >= 3x
                   faster than Flower aggregate; peak memory flat in N
round              round overhead <= 100 ms at 100 agents over Mosquitto
async              FedBuff within 10% of sync validation error, in less time
agent_footprint    peak RSS <= 300 MB, first round <= 2x steady, inference
                   <= 2 ms per window, no server or demo package
=================  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS = ("codec", "aggregate", "round", "async", "agent_footprint")

Check = tuple[str, str, bool | None]  # target, measured, met (None: not measured)


def _codec(r: dict[str, Any]) -> list[Check]:
    base = r.get("float32_fd001_rmse")
    rows = [s for s in r["schemes"] if s["model"] == "fd001" and s.get("fd001_rmse") is not None]
    if not base or not rows:
        return [(">= 10x fewer bytes at <= 2% RMSE loss (FD001)", "FD001 not measured", None)]
    small = [s for s in rows if s["ratio_vs_float32"] >= 10]
    good = [s for s in small if s["fd001_rmse"] <= 1.02 * base]
    if good:  # the smallest frames that keep the RMSE
        best = max(good, key=lambda s: s["ratio_vs_float32"])
    elif small:  # the best RMSE among small enough frames
        best = min(small, key=lambda s: s["fd001_rmse"])
    else:
        best = max(rows, key=lambda s: s["ratio_vs_float32"])
    measured = (f"{best['scheme']}: {best['ratio_vs_float32']:.1f}x, RMSE {best['fd001_rmse']:.2f}"
                f" vs {base:.2f} ({best['fd001_rmse'] / base - 1:+.1%})")
    return [(">= 10x fewer bytes at <= 2% RMSE loss (FD001)", measured, bool(good))]


def _aggregate(r: dict[str, Any]) -> list[Check]:
    cases = {(c["n"], c["p"]): c for c in r["cases"]}
    key = next((k for k in cases if k[0] == 100 and k[1] > 900_000), None)
    checks: list[Check] = []
    if key is not None:
        c = cases[key]
        checks.append(("N=100 P=1M: fedge <= flwr aggregate_inplace",
                       f"{c['fedge_s']:.3f} s vs {c['flwr_inplace_s']:.3f} s",
                       c["fedge_s"] <= c["flwr_inplace_s"]))
        if c["flwr_aggregate_s"] is not None:
            checks.append(("N=100 P=1M: fedge >= 3x faster than flwr aggregate",
                           f"{c['flwr_aggregate_s'] / c['fedge_s']:.1f}x",
                           c["flwr_aggregate_s"] >= 3 * c["fedge_s"]))
    for p in sorted({k[1] for k in cases}):
        peaks = [cases[k]["fedge_peak_mib"] for k in sorted(cases) if k[1] == p]
        checks.append((f"P={p:,}: fedge peak memory flat in N",
                       " / ".join(f"{m:.1f}" for m in peaks) + " MiB",
                       max(peaks) <= 1.1 * min(peaks) + 0.5))
    checks.append(("equal to Flower's FedAvg (float tolerance)",
                   f"max |diff| {max(c['max_abs_diff_vs_flwr'] for c in cases.values()):.1e}",
                   all(c["max_abs_diff_vs_flwr"] < 1e-5 for c in cases.values())))
    return checks


def _round(r: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    for c in r["cases"]:
        met = c["overhead_s"] <= 0.1 if c["agents"] == 100 else None
        out.append((f"{c['agents']} agents: overhead" + (" <= 100 ms" if c["agents"] == 100
                                                          else ""),
                    f"{c['overhead_s'] * 1e3:.0f} ms", met))
    return out


def _async(r: dict[str, Any]) -> list[Check]:
    return [
        ("FedBuff within 10% of sync validation error",
         f"{r['async_val_error']:.2f} vs {r['sync_val_error']:.2f}",
         r["async_val_error"] <= 1.10 * r["sync_val_error"]),
        ("... in less (virtual) wall time",
         f"{r['async_wall_s']:.0f} s vs {r['sync_wall_s']:.0f} s",
         r["async_wall_s"] < r["sync_wall_s"]),
    ]


def _footprint(r: dict[str, Any]) -> list[Check]:
    return [
        ("peak RSS <= 300 MB", f"{r['rss_peak_mb']:.0f} MB", r["rss_peak_mb"] <= 300),
        ("first round <= 2x steady", f"{r['first_round_s']:.2f} s / {r['steady_round_s']:.2f} s",
         r["first_round_s"] <= 2 * r["steady_round_s"]),
        ("inference <= 2 ms per window", f"{r['inference_ms']:.2f} ms", r["inference_ms"] <= 2),
        ("no server/demo package imported", ", ".join(r["server_packages"]) or "none",
         not r["server_packages"] and not r["torch_dynamo_loaded"]),
        ("installed size (base install)", "-" if r["install_mib"] is None else
         f"{r['install_mib']:.0f} MiB, {r['install_distributions']} distributions",
         None if r["install_mib"] is None else not r.get("install_server_or_demo")),
    ]


CHECKS: dict[str, Callable[[dict[str, Any]], list[Check]]] = {
    "codec": _codec, "aggregate": _aggregate, "round": _round, "async": _async,
    "agent_footprint": _footprint,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short variant of each")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    console = Console(width=140)
    failed: list[str] = []
    timings: dict[str, float] = {}
    for name in args.only:
        console.rule(f"benchmarks/{name}.py{' --quick' if args.quick else ''}")
        started = time.monotonic()
        command = [sys.executable, str(REPO / "benchmarks" / f"{name}.py")]
        done = subprocess.run([*command, *(["--quick"] if args.quick else [])], cwd=REPO,
                              check=False)
        timings[name] = time.monotonic() - started
        if done.returncode != 0:
            failed.append(name)
    table = Table(title="Targets (issue 13: small devices on bad links)")
    for col in ("benchmark", "target", "measured", "met"):
        table.add_column(col)
    for name in args.only:
        if name in failed:
            table.add_row(name, "-", "benchmark failed", "[red]error[/]")
            continue
        result = json.loads((RESULTS / f"{name}.json").read_text())
        for target, measured, met in CHECKS[name](result):
            mark = "-" if met is None else ("[green]yes[/]" if met else "[red]no[/]")
            table.add_row(name, target, measured, mark)
    console.print(table)
    console.print("took " + ", ".join(f"{n} {s:.0f} s" for n, s in timings.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
