"""The demo's HTML report: training curves, and each machine's lives.

Built from the SQLite telemetry file (the same schema InfluxDB gets), so what the
report shows is what an operator's dashboards would show: per device, predicted vs
true RUL and the health score over its lives, with its alerts (RUL and anomaly) and
its maintenance events (failures, repairs) marked. Given the agents' scored lives
(:class:`edge_agent.life_watch.LifeOutcome`) it also tabulates, per failure, how
long before it an alert was raised. Plots are rendered by matplotlib to inline
SVG; the file is self-contained.
"""

from __future__ import annotations

import html
import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a Pi or in CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from aggregator.sinks import SqliteSink
from edge_agent.life_watch import LifeOutcome
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


def _device_plot(
    device: str,
    preds: list[Point],
    truth: TruthFn | None,
    *,
    alerts: Sequence[Point] = (),
    events: Sequence[Point] = (),
    t0: int | None = None,
) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    start = preds[0].time_ns if t0 is None else t0

    def x(p: Point) -> float:
        return (p.time_ns - start) / 1e9

    xs = [x(p) for p in preds]
    # Version 0 carries only the fleet's normalisation: its "predictions" mean nothing.
    trained = [p for p in preds if int(p.field_dict.get("model_version", 0)) > 0]
    ax.plot(
        [x(p) for p in trained],
        [float(p.field_dict["rul"]) for p in trained],
        label="predicted RUL",
        lw=1,
    )
    if truth is not None:
        pairs = []
        for at, p in zip(xs, preds, strict=True):
            unit, cycle = p.field_dict.get("unit"), p.field_dict.get("cycle")
            if isinstance(unit, int) and isinstance(cycle, int):
                value = truth(device, unit, cycle)
                if value is not None:
                    pairs.append((at, value))
        if pairs:
            ax.plot(*zip(*pairs, strict=True), label="true RUL (capped)", ls="--", lw=1)
    marks = {
        "failure_predicted": ("v", "tab:red", "RUL alert"),
        "anomaly": ("^", "tab:orange", "anomaly"),
    }
    for kind, (marker, color, label) in marks.items():
        points = [p for p in alerts if p.tag_dict.get("kind") == kind]
        if points:
            ax.scatter(
                [x(p) for p in points],
                [float(p.field_dict.get("rul", 0.0)) for p in points],
                marker=marker, color=color, s=14, label=label, zorder=3,
            )  # fmt: skip
    for i, e in enumerate(p for p in events if p.tag_dict.get("kind") == "failure"):
        ax.axvline(x(e), color="black", lw=1.2, label="failure" if i == 0 else None)
    ax.set(title=device, xlabel="seconds into the demo", ylabel="RUL (cycles)")
    ax.grid(alpha=0.3)
    health = [(at, float(h)) for at, p in zip(xs, preds, strict=True)
              if isinstance(h := p.field_dict.get("health"), int | float)]  # fmt: skip
    if health:
        ax2 = ax.twinx()
        ax2.plot(*zip(*health, strict=True), color="tab:green", lw=0.8, alpha=0.8, label="health")
        ax2.axhline(0.5, color="tab:green", ls=":", lw=0.8)
        ax2.set(ylim=(0, 1.05), ylabel="health (1 = like its baseline)")
        ax2.legend(loc="upper right", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    return _svg(fig)


def _failure_rows(lives: Sequence[LifeOutcome]) -> list[list[str]]:
    rows = []
    for o in sorted(lives, key=lambda o: (o.device, o.unit)):
        rows.append(
            [
                o.device,
                str(o.unit),
                o.end_kind,
                f"{o.length:.0f}",
                o.first_alert_kind or "-",
                "-" if o.lead is None else f"{o.lead:.0f}",
                "yes" if o.alerted else "no",
                str(o.false_alarms),
            ]
        )
    return rows


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    sqlite_path: Path,
    out_path: Path,
    *,
    title: str = "fedge demo",
    truth: TruthFn | None = None,
    lives: Sequence[LifeOutcome] = (),
) -> Path:
    """Render the report for the data in ``sqlite_path`` to ``out_path``; returns the path.

    ``lives``: the agents' scored lives, for the table of failures and their alerts.
    """
    sink = SqliteSink(sqlite_path)
    try:
        rounds = sink.query("fl_round")
        predictions = sink.query("prediction")
        alerts = sink.query("alert")
        health = sink.query("device_health")
        events = sink.query("event")
        telemetry_count = sink.count("telemetry")
    finally:
        sink.close()
    by_device: dict[str, list[Point]] = defaultdict(list)
    for p in predictions:
        by_device[p.tag_dict["device"]].append(p)
    last_health = {p.tag_dict["device"]: p for p in health}
    alert_count: dict[str, int] = defaultdict(int)
    alerts_by_device: dict[str, list[Point]] = defaultdict(list)
    for p in alerts:
        alert_count[p.tag_dict["device"]] += 1
        alerts_by_device[p.tag_dict["device"]].append(p)
    events_by_device: dict[str, list[Point]] = defaultdict(list)
    for p in events:
        events_by_device[p.tag_dict["device"]].append(p)
    t0 = min((p.time_ns for p in predictions), default=None)

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
        '<div class="plot">'
        + _device_plot(
            d,
            ps,
            truth,
            alerts=alerts_by_device.get(d, []),
            events=events_by_device.get(d, []),
            t0=t0,
        )
        + "</div>"
        for d, ps in sorted(by_device.items())
        if ps
    )
    failed = [o for o in lives if o.end_kind == "failure"]
    failures_html = (
        f"<p>{len(failed)} failures, {sum(o.alerted for o in failed)} of them alerted at least "
        "20 cycles ahead; false alarms are alerts raised more than 125 cycles before the "
        "end of the life.</p>"
        + _table(
            [
                "device",
                "life",
                "ended by",
                "cycles",
                "first alert",
                "lead (cycles)",
                ">= 20 ahead",
                "false alarms",
            ],
            _failure_rows(lives),
        )
        if lives
        else "<p>no life ended during the demo</p>"
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
{len(alerts)} alerts, {len(events)} maintenance events.</p>
<h2>Federated training</h2>
<div class="plot">{_training_plot(rounds) if rounds else "<p>no rounds recorded</p>"}</div>
{_table(["round", "task", "outcome", "participants", "rejected", "val RMSE"], round_rows)}
<h2>Devices</h2>
{_table(["device", "last RUL", "P(failure)", "alerts", "buffer depth"], device_rows)}
<h2>Failures and the alerts before them</h2>
{failures_html}
<h2>Each machine's lives: predicted vs true RUL, health score, alerts, failures</h2>
<div class="plots">{plots or "<p>no predictions recorded</p>"}</div>
</body></html>
"""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path
