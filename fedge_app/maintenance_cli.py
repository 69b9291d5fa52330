"""Maintenance commands of the ``fedge`` CLI: record an event, backtest a history.

``event`` writes a maintenance event into a (running) agent's SQLite store; the agent
picks it up at its next step, cuts its lives there and publishes the event on
``devices/<device>/events``. ``backtest`` runs :func:`fedge_app.backtest.run_backtest`
over a CSV file. Both report errors as one line and exit with status 2, never with a
traceback. (Registered in :mod:`fedge_app.cli`.)
"""

from __future__ import annotations

import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from fedge.errors import FedgeError

if TYPE_CHECKING:
    from rich.table import Table

    from edge_agent.life_watch import LifeOutcome

__all__ = ["backtest", "event", "lives_summary", "lives_table"]

console = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=140)
_MAX_WARNINGS_SHOWN = 20


def _fail(exc: FedgeError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(code=2)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def event(
    kind: Annotated[str, typer.Option(help="failure, repair or replace.")],
    store: Annotated[Path, typer.Option(help="The agent's SQLite store.", dir_okay=False)],
    at: Annotated[
        str | None,
        typer.Option(
            help="When it happened: unix seconds or ISO 8601 (UTC if naive); default now."
        ),
    ] = None,
    note: Annotated[str, typer.Option(help="What was found or done (<= 500 characters).")] = "",
    device: Annotated[
        str | None, typer.Option(help="Check the store belongs to this device.")
    ] = None,
    fleet: Annotated[
        str | None, typer.Option(help="Check the store belongs to this fleet.")
    ] = None,
) -> None:
    """Record a maintenance event for the machine of the agent that owns STORE.

    The running agent applies it at its next step without a restart: a failure closes
    the machine's current life (its readings get remaining-useful-life labels), a repair
    or replacement without failure closes a right-censored one. An event in the past
    (--at) re-cuts the lives from that time on.
    """
    from edge_agent.maintenance_store import MaintenanceStore
    from fedge.errors import ConfigError
    from fedge.lives import MaintenanceEvent
    from fedge_app.backtest import parse_timestamp

    try:
        if kind not in ("failure", "repair", "replace"):
            raise ConfigError(f"--kind must be failure, repair or replace, got {kind!r}")
        try:
            ts = datetime.now(UTC).timestamp() if at is None else parse_timestamp(at)
        except ValueError as exc:
            raise ConfigError(f"--at: {exc}") from exc
        db = MaintenanceStore.open(store)
        try:
            identity = db.identity()
            if identity is None:
                raise ConfigError(f"{store} has no agent identity yet: start the agent once")
            checks = ((fleet, identity[0], "fleet"), (device, identity[1], "device"))
            for given, known, what in checks:
                if given is not None and given != known:
                    raise ConfigError(f"{store} belongs to {what} {known!r}, not {given!r}")
            try:
                record = MaintenanceEvent.new(
                    fleet=identity[0],
                    device=identity[1],
                    kind=_kind(kind),
                    ts=ts,
                    source="cli",
                    note=note,
                )
            except ValidationError as exc:  # a time outside 2000..2100, a note too long
                err = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"invalid event: {where}: {err['msg']}") from exc
            db.add_event(record, sent=False)
        finally:
            db.close()
    except FedgeError as exc:
        raise _fail(exc) from exc
    out.print(
        f"recorded {record.kind} of {record.fleet}/{record.device} at {_when(record.ts)} "
        f"(event {record.event_id}); the agent applies it at its next step",
        highlight=False,
    )


def _kind(text: str) -> Literal["failure", "repair", "replace"]:
    if text == "failure":
        return "failure"
    if text == "repair":
        return "repair"
    return "replace"


def backtest(
    csv_path: Annotated[Path, typer.Argument(help="CSV history: a time column and sensors.")],
    time_column: Annotated[str, typer.Option(help="Name of the time column.")] = "time",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Output CSV (default: <csv>.backtest.csv).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Sensor columns, comma-separated (default: numeric ones).")
    ] = None,
    baseline_hours: Annotated[
        float | None, typer.Option(help="Baseline: the first H hours of the file.")
    ] = None,
    baseline_fraction: Annotated[
        float | None, typer.Option(help="Baseline: this fraction of the rows.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Aggregator checkpoint directory: also predict RUL.")
    ] = None,
) -> None:
    """Replay a CSV history through the health score (and a fleet model) offline.

    What would fedge have said about this machine? One output row per input row
    (health, score, alert[, rul], reason) and a PNG plot next to it; bad rows are
    skipped and reported with their line numbers.
    """
    from fedge_app.backtest import run_backtest

    names = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
    target = out_path or csv_path.with_name(csv_path.stem + ".backtest.csv")
    try:
        summary = run_backtest(
            csv_path,
            time_column=time_column,
            out_path=target,
            columns=names,
            baseline_hours=baseline_hours,
            baseline_fraction=baseline_fraction,
            model_checkpoint=checkpoint,
        )
    except FedgeError as exc:
        raise _fail(exc) from exc
    for warning in summary.warnings[:_MAX_WARNINGS_SHOWN]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    hidden = len(summary.warnings) - _MAX_WARNINGS_SHOWN
    if hidden > 0:
        console.print(f"[yellow]warning:[/] ... and {hidden} more (see {summary.out_path})")
    first = "none" if summary.first_alert is None else _when(summary.first_alert)
    lines = [
        f"rows: {summary.rows} scored, {summary.bad_rows} skipped",
        f"columns: {', '.join(summary.columns)}",
        f"baseline: first {summary.baseline_rows} rows, {_when(summary.baseline_start)} .. "
        f"{_when(summary.baseline_end)} ({summary.baseline_hours:.3g} h)",
        f"first alert: {first}",
        f"alerts raised: {summary.alert_count}",
    ]
    if summary.model_version is not None:
        lines.append(f"RUL: model v{summary.model_version} from {checkpoint}")
    lines += [f"output: {summary.out_path}", f"plot: {summary.plot_path}"]
    for line in lines:
        out.print(line, highlight=False)


def lives_table(lives: list[LifeOutcome], title: str, *, per_device: bool = False) -> Table:
    """The closed lives of a demo: each failure with its first alert and lead time, and
    the false alarms (``per_device``: one row per device instead)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.caption = (
        "lead: cycles between the alert and the failure; alerted: >= 20 cycles ahead; "
        "false alarms: raised > 125 cycles before the end"
    )
    if per_device:
        for col in ("device", "failures", "alerted", "median lead", "false alarms"):
            table.add_column(col, justify="left" if col == "device" else "right")
        for device in sorted({o.device for o in lives}):
            mine = [o for o in lives if o.device == device]
            failed = [o for o in mine if o.end_kind == "failure"]
            leads = [o.lead for o in failed if o.lead is not None]
            table.add_row(
                device,
                str(len(failed)),
                str(sum(o.alerted for o in failed)),
                "-" if not leads else f"{statistics.median(leads):.0f}",
                str(sum(o.false_alarms for o in mine)),
            )
        return table
    for col in ("device", "life", "ended by", "cycles", "first alert", "lead", "alerted", "FA"):
        table.add_column(col, justify="left" if col in ("device", "ended by") else "right")
    for o in lives:
        table.add_row(
            o.device,
            str(o.unit),
            o.end_kind,
            f"{o.length:.0f}",
            o.first_alert_kind or "-",
            "-" if o.lead is None else f"{o.lead:.0f}",
            "yes" if o.alerted else "no",
            str(o.false_alarms),
        )
    return table


def lives_summary(figures: dict[str, object]) -> str:
    """One line from :func:`fedge_app.demo.failure_figures`."""
    lead = figures["median_lead"]
    return (
        f"failures: {figures['failures']}, alerted >= 20 cycles ahead: "
        f"{figures['failures_alerted']}, median lead "
        f"{'-' if lead is None else f'{lead:.0f}'} cycles, false alarms: {figures['false_alarms']}"
    )
