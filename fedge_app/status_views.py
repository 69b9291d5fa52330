"""Rich tables for ``fedge status`` and ``fedge agent status`` (their ``--json`` is plain)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edge_agent.store_status import StoreStatus

__all__ = ["fleet_table", "store_lines", "store_table"]


def _version(value: int | None) -> str:
    return "-" if value is None else f"v{value}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def fleet_table(data: dict[str, Any], *, now: float) -> Table:
    """One row per device of a :meth:`FleetSnapshot.to_json` dict; ages relative to ``now``."""
    model = data["global_model"]
    ann = data["round"]
    title = f"fleet {data['fleet']}: global model " + (
        "none" if model is None else f"v{model['version']}"
    )
    if ann is not None:
        title += f", round {ann['round_id']} ({ann['task']})"
    table = Table(title=title, title_justify="left")
    for col in ("device", "state", "seen", "model", "buffer", "source", "prediction", "error"):
        table.add_column(col, no_wrap=col != "error")
    for d in data["devices"]:
        seen = "-" if d["last_seen"] is None else f"{max(0.0, now - d['last_seen']):.0f}s ago"
        version = _version(d["model_version"])
        if d["behind_global"] and model is not None:
            version += f" (not v{model['version']})"
        p = d["prediction"]
        prediction = (
            "-"
            if p is None
            else f"RUL {p['rul']:.0f}, p={p['failure_probability']:.2f}"
            + (" [bold red]ALERT[/]" if p["alert"] else "")
        )
        table.add_row(
            d["device"],
            "[green]online[/]" if d["online"] else "[red]offline[/]",
            seen,
            version,
            _count(d["buffer_depth"])
            + (f" (+{d['buffer_unconfirmed']} unconfirmed)" if d["buffer_unconfirmed"] else ""),
            d["source_state"] or "-",
            prediction,
            d["last_error"] or "",
        )
    return table


def store_table(status: StoreStatus) -> Table:
    """The machine's lives in an agent store, oldest first."""
    table = Table(title=f"agent store {status.path}", title_justify="left")
    for col in ("unit", "readings", "cycles", "state"):
        table.add_column(col, justify="left" if col == "state" else "right", no_wrap=True)
    for unit in status.units:
        if unit.failed:
            state = f"failed after {unit.failed_after} cycles"
        else:
            state = "running (current)" if unit.unit == status.current_unit else "censored"
        cycles = f"{unit.first_cycle}-{unit.last_cycle}" if unit.readings else "-"
        table.add_row(str(unit.unit), str(unit.readings), cycles, state)
    return table


def store_lines(status: StoreStatus) -> list[str]:
    """The store's totals and the agent's last error, as lines under the table."""
    return [
        f"readings {status.readings}, unsent {status.unsent}, failed units "
        f"{len(status.failed_units)}, current unit {_count(status.current_unit)}, "
        f"model version {_version(status.model_version)}",
        f"telemetry: unconfirmed {status.unconfirmed} (acknowledged by the broker, not yet "
        f"confirmed stored by ingest), confirmed through seq "
        f"{_count(status.confirmed_through_seq)}",
        f"last error: {status.last_error or '-'}",
    ]
