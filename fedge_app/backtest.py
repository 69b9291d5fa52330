"""Backtest: run the health score (and optionally a fleet model) over a CSV history.

``fedge backtest machine.csv --time-column time`` answers "what would fedge have
said about this machine?" before anything is deployed: it reads the file, feeds
every row through the same :class:`fedge.health.HealthMonitor` an agent runs,
and writes one output row per accepted input row (``line,time,ts,health,score,
alert[,rul],reason``) plus a PNG plot next to it. With a model checkpoint (an
aggregator's checkpoint directory) it also predicts RUL on every row's window
the way :meth:`edge_agent.agent.EdgeAgent.predict_and_publish` does.

Input rules: the first line is the header; timestamps are unix seconds or ISO
8601 (a naive time is taken as UTC); an empty or ``nan`` cell is a missing
reading (the monitor leaves that sensor out). A row with an unparsable timestamp
or value, the wrong number of fields, or a timestamp older than the previous row
is skipped and reported as a warning with its line number, never an exception.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aggregator.checkpoint import CheckpointStore
from fedge.data.context import add_context
from fedge.errors import ConfigError, DataError
from fedge.health import MAX_BASELINE_READINGS, HealthConfig, HealthMonitor
from fedge.models import build_model, load_tensors
from fedge.spec import MAX_BASELINE_CYCLES
from fedge.training import predict

__all__ = ["BacktestSummary", "parse_timestamp", "run_backtest"]

# Unix seconds fedge accepts (fedge.messages.Timestamp): 2000-01-01 .. 2100-01-01.
_TS_MIN, _TS_MAX = 946_684_800.0, 4_102_444_800.0
_NUMERIC_PROBE_ROWS = 100  # a column is numeric if most of its first non-empty cells are
_PREDICT_CHUNK = 2048  # windows per model call: bounds memory on long files
_MISSING = {"", "nan", "NaN", "NAN", "null", "NULL", "NA"}


@dataclass(frozen=True, slots=True)
class BacktestSummary:
    """What a backtest did: rows, what it skipped and why, the baseline, the alerts."""

    rows: int
    bad_rows: int
    warnings: tuple[str, ...]
    columns: tuple[str, ...]
    baseline_rows: int
    baseline_start: float
    baseline_end: float
    first_alert: float | None
    alert_count: int
    out_path: Path
    plot_path: Path
    model_version: int | None = None

    @property
    def baseline_hours(self) -> float:
        """Time span of the baseline, hours."""
        return (self.baseline_end - self.baseline_start) / 3600.0


def parse_timestamp(text: str) -> float:
    """Unix seconds from epoch seconds or ISO 8601 text; ValueError if neither or out of range."""
    value = text.strip()
    try:
        ts = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not epoch seconds or ISO 8601: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    if not math.isfinite(ts) or not _TS_MIN <= ts <= _TS_MAX:
        hint = " (milliseconds?)" if math.isfinite(ts) and ts > _TS_MAX else ""
        raise ValueError(f"timestamp {value!r} is not between 2000 and 2100{hint}")
    return ts


def _value(text: str) -> float:
    stripped = text.strip()
    return math.nan if stripped in _MISSING else float(stripped)


@dataclass(frozen=True)
class _Table:
    columns: tuple[str, ...]
    lines: list[int]
    times: list[str]
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64]
    warnings: tuple[str, ...]
    bad_rows: int


def _numeric_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]], time_col: int
) -> list[str]:
    out = []
    for i, name in enumerate(header):
        if i == time_col:
            continue
        probe = [r[i] for r in rows if len(r) == len(header) and r[i].strip() not in _MISSING]
        probe = probe[:_NUMERIC_PROBE_ROWS]
        # Most cells, not all: one bad value near the top must not hide a sensor column
        # (its row is reported as bad instead).
        if probe and sum(_is_number(v) for v in probe) > len(probe) / 2:
            out.append(name)
    return out


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _read_table(path: Path, time_column: str, columns: Sequence[str] | None) -> _Table:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if row:  # blank lines carry nothing
                    rows.append(row)
                    lines.append(reader.line_num)
    except FileNotFoundError as exc:
        raise DataError(f"no such file: {path}") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if header is None:
        raise DataError(f"{path} is empty")
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header")
    if time_column not in header:
        raise DataError(f"{path}: no time column {time_column!r} (columns: {', '.join(header)})")
    t_idx = header.index(time_column)
    if columns is None:
        names = _numeric_columns(header, rows, t_idx)
        if not names:
            raise DataError(f"{path}: no numeric columns besides {time_column!r}")
    else:
        names = list(columns)
        missing = [c for c in names if c not in header]
        if missing or not names or time_column in names:
            raise DataError(
                f"{path}: columns {names} must be non-empty, exist and exclude {time_column!r}"
            )
    idx = [header.index(c) for c in names]
    warnings: list[str] = []
    keep_lines: list[int] = []
    keep_times: list[str] = []
    ts_list: list[float] = []
    values: list[list[float]] = []
    for line, row in zip(lines, rows, strict=True):
        if len(row) != len(header):
            warnings.append(f"line {line}: {len(row)} fields, expected {len(header)}; skipped")
            continue
        try:
            ts = parse_timestamp(row[t_idx])
        except ValueError as exc:
            warnings.append(f"line {line}: bad time: {exc}; skipped")
            continue
        if ts_list and ts < ts_list[-1]:
            warnings.append(f"line {line}: time {row[t_idx].strip()} goes backwards; skipped")
            continue
        try:
            vals = [_value(row[i]) for i in idx]
        except ValueError:
            k = next(k for k, i in enumerate(idx) if not _parses(row[i]))
            text = row[idx[k]].strip()
            warnings.append(f"line {line}: {names[k]}={text!r} is not a number; skipped")
            continue
        keep_lines.append(line)
        keep_times.append(row[t_idx].strip())
        ts_list.append(ts)
        values.append(vals)
    return _Table(
        columns=tuple(names),
        lines=keep_lines,
        times=keep_times,
        ts=np.asarray(ts_list, dtype=np.float64),
        values=np.asarray(values, dtype=np.float64).reshape(len(values), len(names)),
        warnings=tuple(warnings),
        bad_rows=len(warnings),
    )


def _parses(text: str) -> bool:
    try:
        _value(text)
    except ValueError:
        return False
    return True


def _health_config(
    base: HealthConfig, n_rows: int, span_s: float, hours: float | None, fraction: float | None
) -> HealthConfig:
    if hours is not None and fraction is not None:
        raise ConfigError("give baseline_hours or baseline_fraction, not both")
    fields = base.model_dump()
    if hours is not None:
        fields.update(baseline_hours=hours, baseline_readings=None)
    elif fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"baseline_fraction must be in (0, 1), got {fraction}")
        wanted = max(5, math.ceil(fraction * n_rows))
        if wanted > MAX_BASELINE_READINGS:
            raise ConfigError(
                f"a baseline of {wanted} rows exceeds {MAX_BASELINE_READINGS}: use a smaller "
                "fraction"
            )
        fields.update(baseline_readings=wanted, baseline_hours=None)
    try:
        config = HealthConfig.model_validate(fields)
    except ValueError as exc:
        raise ConfigError(f"invalid health settings: {exc}") from exc
    if config.baseline_hours is not None:
        if span_s < config.baseline_hours * 3600.0 or n_rows <= config.min_baseline_readings:
            raise DataError(
                f"baseline of {config.baseline_hours:g} h is longer than the file "
                f"({span_s / 3600.0:.3g} h, {n_rows} rows)"
            )
    elif n_rows <= config.readings_needed:
        raise DataError(
            f"baseline of {config.readings_needed} rows needs a longer file ({n_rows} good rows)"
        )
    return config


def _predict_rul(
    checkpoint_dir: Path, values: npt.NDArray[np.float64], columns: Sequence[str]
) -> tuple[npt.NDArray[np.float64], int]:
    checkpoint = CheckpointStore(checkpoint_dir).load_latest()
    if checkpoint is None:
        raise DataError(f"no checkpoint in {checkpoint_dir}")
    spec = checkpoint.spec
    if spec.n_features != len(columns):
        raise DataError(
            f"the model reads {spec.n_features} features, the file gives {len(columns)} "
            f"({', '.join(columns)}); choose the model's columns, in its order"
        )
    model = build_model(spec)
    load_tensors(model, checkpoint.tensors)
    x = values.astype(np.float32)
    n, w = x.shape[0], spec.window
    head = x[:MAX_BASELINE_CYCLES]
    rul = np.full(n, np.nan)
    for lo in range(0, n, _PREDICT_CHUNK):
        ends = np.arange(lo, min(n, lo + _PREDICT_CHUNK))
        # Row i's window is rows i-W+1 .. i, the first row repeated before the start
        # (fedge.data.windows.last_window pads a short unit the same way).
        idx = np.maximum(ends[:, None] - (w - 1) + np.arange(w)[None, :], 0)
        inputs = add_context(x[idx], end_cycles=ends, head=head, spec=spec)
        finite = np.isfinite(inputs).all(axis=(1, 2))
        if finite.any():
            pred, _ = predict(model, inputs[finite])
            rul[ends[finite]] = pred
    return rul, checkpoint.version


def _write_plot(
    path: Path,
    ts: npt.NDArray[np.float64],
    health: npt.NDArray[np.float64],
    alert: npt.NDArray[np.bool_],
    raised: npt.NDArray[np.bool_],
    rul: npt.NDArray[np.float64] | None,
) -> None:
    # The object API with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    when = ts / 86_400.0  # matplotlib dates: days since 1970-01-01
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(when, health, color="tab:blue", lw=1.2, label="health")
    ax.axhline(0.5, color="tab:red", ls="--", lw=1, label="alert threshold (health 0.5)")
    ax.fill_between(
        when,
        0,
        1,
        where=list(alert),
        color="tab:red",
        alpha=0.12,
        step="post",
        label="alert active",
    )
    for i in np.flatnonzero(raised):
        ax.axvline(when[i], color="tab:red", lw=1)
    ax.xaxis_date(tz=UTC)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("health (1 = like baseline)")
    ax.set_xlabel("time (UTC)")
    if rul is not None:
        ax2 = ax.twinx()
        ax2.plot(when, rul, color="tab:green", lw=1, label="predicted RUL")
        ax2.set_ylabel("predicted RUL (cycles)")
        ax2.legend(loc="lower right")
    ax.legend(loc="lower left")
    fig.savefig(path, dpi=100)


def run_backtest(
    csv_path: Path,
    *,
    time_column: str,
    out_path: Path,
    columns: Sequence[str] | None = None,
    baseline_hours: float | None = None,
    baseline_fraction: float | None = None,
    model_checkpoint: Path | None = None,
    health: HealthConfig | None = None,
) -> BacktestSummary:
    """Run the health monitor (and a checkpoint's model) over ``csv_path``.

    Writes ``out_path`` (CSV) and ``out_path`` with a ``.png`` suffix (plot);
    returns a summary. Bad rows are skipped and listed in ``summary.warnings``.
    Raises :class:`DataError` for an unusable file (no numeric columns, fewer
    rows than the baseline, a checkpoint that does not fit) and
    :class:`ConfigError` for contradictory options.
    """
    table = _read_table(Path(csv_path), time_column, columns)
    n = table.ts.shape[0]
    span = float(table.ts[-1] - table.ts[0]) if n else 0.0
    config = _health_config(health or HealthConfig(), n, span, baseline_hours, baseline_fraction)
    monitor = HealthMonitor(config, table.columns)
    score = np.full(n, np.nan)
    health_v = np.full(n, np.nan)
    alert = np.zeros(n, dtype=np.bool_)
    raised = np.zeros(n, dtype=np.bool_)
    reasons = [""] * n
    baseline_rows = 0
    for i in range(n):
        update = monitor.feed(float(table.ts[i]), table.values[i])
        if update.phase == "baseline":
            baseline_rows += 1
            continue
        if update.score is not None and update.health is not None:
            score[i], health_v[i] = update.score, update.health
        alert[i], raised[i] = update.alert, update.newly_raised
        if update.newly_raised:
            reasons[i] = update.reason
    if monitor.phase == "baseline":
        raise DataError(f"the baseline took the whole file ({n} rows): nothing left to score")
    rul: npt.NDArray[np.float64] | None = None
    version: int | None = None
    if model_checkpoint is not None:
        rul, version = _predict_rul(Path(model_checkpoint), table.values, table.columns)
    out = Path(out_path)
    plot = out.with_suffix(".png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["line", "time", "ts", "health", "score", "alert"]
                + (["rul"] if rul is not None else [])
                + ["reason"]
            )
            for i in range(n):
                row = [
                    str(table.lines[i]),
                    table.times[i],
                    f"{table.ts[i]:.3f}",
                    _fmt(health_v[i], 4),
                    _fmt(score[i], 4),
                    "1" if alert[i] else "0",
                ]
                if rul is not None:
                    row.append(_fmt(rul[i], 2))
                writer.writerow([*row, reasons[i]])
        _write_plot(plot, table.ts, health_v, alert, raised, rul)
    except OSError as exc:
        raise DataError(f"cannot write backtest output {out}: {exc}") from exc
    first = np.flatnonzero(raised)
    return BacktestSummary(
        rows=n,
        bad_rows=table.bad_rows,
        warnings=table.warnings,
        columns=table.columns,
        baseline_rows=baseline_rows,
        baseline_start=float(table.ts[0]),
        baseline_end=float(table.ts[baseline_rows - 1]),
        first_alert=float(table.ts[first[0]]) if first.size else None,
        alert_count=int(first.size),
        out_path=out,
        plot_path=plot,
        model_version=version,
    )


def _fmt(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"
