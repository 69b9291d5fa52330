"""The demo's HTML report: training curves and predicted vs true RUL per device.

Built from the SQLite telemetry file (the same schema InfluxDB gets), so what the
report shows is what an operator's dashboards would show. Plots are rendered by
matplotlib to inline SVG; the file is self-contained.
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a Pi or in CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from aggregator.sinks import SqliteSink
from fedge.points import Point

__all__ = ["TruthFn", "write_report"]

TruthFn = Callable[[str, int, int], float | None]
"""(device, unit, cycle) -> true remaining useful life, when the caller knows it."""


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]  # drop the XML prolog so it can be inlined


def _training_plot(rounds: list[Point]) -> str:
    train = sorted(
        (p for p in rounds if p.tag_dict.get("task") == "train"),
        key=lambda p: int(p.field_dict["round_id"]),
    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    versions = [int(p.field_dict["version"]) - 1 for p in train if "val_error" in p.field_dict]
    errors = [float(p.field_dict["val_error"]) for p in train if "val_error" in p.field_dict]
    final = [
        p for p in rounds if p.tag_dict.get("task") == "evaluate" and "val_error" in p.field_dict
    ]
    if final:
        versions.append(int(final[-1].field_dict["version"]))
        errors.append(float(final[-1].field_dict["val_error"]))
    ax1.plot(versions, errors, marker="o")
    ax1.set(
        title="validation RMSE of the global model",
        xlabel="global model version",
        ylabel="RMSE (cycles)",
    )
    losses = [
        (int(p.field_dict["round_id"]), float(p.field_dict["train_loss"]))
        for p in train
        if "train_loss" in p.field_dict
    ]
    if losses:
        ax2.plot(*zip(*losses, strict=True), marker="o", color="tab:orange")
    ax2.set(title="mean local training loss", xlabel="round", ylabel="loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _svg(fig)


def _device_plot(device: str, preds: list[Point], truth: TruthFn | None) -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    t0 = preds[0].time_ns
    xs = [(p.time_ns - t0) / 1e9 for p in preds]
    ax.plot(xs, [float(p.field_dict["rul"]) for p in preds], label="predicted", marker=".")
    if truth is not None:
        pairs = []
        for x, p in zip(xs, preds, strict=True):
            unit, cycle = p.field_dict.get("unit"), p.field_dict.get("cycle")
            if isinstance(unit, int) and isinstance(cycle, int):
                value = truth(device, unit, cycle)
                if value is not None:
                    pairs.append((x, value))
        if pairs:
            ax.plot(*zip(*pairs, strict=True), label="true (capped)", linestyle="--")
    ax.set(title=device, xlabel="seconds into the demo", ylabel="RUL (cycles)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    sqlite_path: Path, out_path: Path, *, title: str = "fedge demo", truth: TruthFn | None = None
) -> Path:
    """Render the report for the data in ``sqlite_path`` to ``out_path``; returns the path."""
    sink = SqliteSink(sqlite_path)
    try:
        rounds = sink.query("fl_round")
        predictions = sink.query("prediction")
        alerts = sink.query("alert")
        health = sink.query("device_health")
        telemetry_count = sink.count("telemetry")
    finally:
        sink.close()
    by_device: dict[str, list[Point]] = defaultdict(list)
    for p in predictions:
        by_device[p.tag_dict["device"]].append(p)
    last_health = {p.tag_dict["device"]: p for p in health}
    alert_count: dict[str, int] = defaultdict(int)
    for p in alerts:
        alert_count[p.tag_dict["device"]] += 1

    round_rows = [
        [
            str(p.field_dict.get("round_id")),
            p.tag_dict.get("task", ""),
            p.tag_dict.get("outcome", ""),
            str(p.field_dict.get("participants")),
            str(p.field_dict.get("rejected")),
            f"{float(v):.2f}"
            if isinstance(v := p.field_dict.get("val_error"), int | float)
            else "-",
        ]
        for p in sorted(rounds, key=lambda p: int(p.field_dict["round_id"]))
    ]
    device_rows = []
    for device in sorted(set(by_device) | set(last_health)):
        last = by_device[device][-1] if by_device.get(device) else None
        hp = last_health.get(device)
        device_rows.append(
            [
                device,
                f"{float(last.field_dict['rul']):.1f}" if last else "-",
                f"{float(last.field_dict['failure_probability']):.2f}" if last else "-",
                str(alert_count[device]),
                str(hp.field_dict.get("buffer_depth", "-")) if hp else "-",
            ]
        )
    plots = "".join(
        f'<div class="plot">{_device_plot(d, ps, truth)}</div>'
        for d, ps in sorted(by_device.items())
        if ps
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.plot svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {generated} from <code>{html.escape(str(sqlite_path))}</code>:
{len(rounds)} rounds, {telemetry_count} telemetry points, {len(predictions)} predictions,
{len(alerts)} alerts.</p>
<h2>Federated training</h2>
<div class="plot">{_training_plot(rounds) if rounds else "<p>no rounds recorded</p>"}</div>
{_table(["round", "task", "outcome", "participants", "rejected", "val RMSE"], round_rows)}
<h2>Devices</h2>
{_table(["device", "last RUL", "P(failure)", "alerts", "buffer depth"], device_rows)}
<h2>Predicted vs true remaining useful life</h2>
<div class="plots">{plots or "<p>no predictions recorded</p>"}</div>
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path
