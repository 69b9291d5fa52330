"""fedge_app.backtest over CSV files written by the tests (no broker, no model)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fedge.errors import ConfigError, DataError
from fedge_app.backtest import parse_timestamp, run_backtest

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def write_csv(
    path: Path, n: int, *, change_at: int = 150, iso: bool = False, step: float = 60.0
) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "temp", "vib", "site"])
        for i in range(n):
            ts = T0 + step * i
            t = datetime.fromtimestamp(ts, tz=UTC).isoformat() if iso else f"{ts:.0f}"
            shift = 4.0 if i >= change_at else 0.0
            w.writerow(
                [
                    t,
                    50 + 0.2 * (rng.standard_normal() + shift),
                    2 + 0.05 * (rng.standard_normal() + shift),
                    "A",
                ]
            )
    return path


def read_out(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_good_file(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "m.csv", 200)
    summary = run_backtest(src, time_column="time", out_path=tmp_path / "out" / "m-health.csv")
    assert summary.rows == 200 and summary.bad_rows == 0 and summary.warnings == ()
    assert summary.columns == ("temp", "vib")  # "site" is text: not a feature
    assert summary.baseline_rows == 30
    assert (summary.baseline_start, summary.baseline_end) == (T0, T0 + 29 * 60)
    assert summary.baseline_hours == pytest.approx(29 / 60)
    assert summary.first_alert is not None and T0 + 150 * 60 <= summary.first_alert <= T0 + 175 * 60
    assert summary.alert_count >= 1
    rows = read_out(summary.out_path)
    assert len(rows) == 200 and list(rows[0]) == [
        "line",
        "time",
        "ts",
        "health",
        "score",
        "alert",
        "reason",
    ]
    assert rows[0]["line"] == "2" and rows[0]["health"] == "" and rows[0]["alert"] == "0"
    assert all(r["alert"] == "0" for r in rows[:150])
    assert rows[-1]["alert"] == "1" and float(rows[-1]["health"]) < 0.5
    raised = [r for r in rows if r["reason"]]
    assert len(raised) == summary.alert_count and raised[0]["reason"].split(" z=")[0] in {
        "temp",
        "vib",
    }
    assert summary.plot_path == tmp_path / "out" / "m-health.png"
    assert summary.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_iso_and_epoch_times_give_the_same_result(tmp_path: Path) -> None:
    a = run_backtest(
        write_csv(tmp_path / "e.csv", 200), time_column="time", out_path=tmp_path / "e-out.csv"
    )
    b = run_backtest(
        write_csv(tmp_path / "i.csv", 200, iso=True),
        time_column="time",
        out_path=tmp_path / "i-out.csv",
    )
    assert a.first_alert == b.first_alert and a.alert_count == b.alert_count
    ra, rb = read_out(a.out_path), read_out(b.out_path)
    assert [r["health"] for r in ra] == [r["health"] for r in rb]
    assert rb[0]["time"] == "2023-11-14T22:13:20+00:00" and rb[0]["ts"] == f"{T0:.3f}"


def test_parse_timestamp() -> None:
    assert parse_timestamp("1700000000") == T0
    assert parse_timestamp(" 2023-11-14T22:13:20Z ") == T0
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == T0
    assert parse_timestamp("2023-11-14 22:13:20") == T0  # naive: UTC
    with pytest.raises(ValueError, match="milliseconds"):
        parse_timestamp("1700000000000")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("yesterday")


def test_bad_rows_are_skipped_with_their_line_numbers(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "m.csv", 60)
    lines = src.read_text().splitlines()
    lines[5] = "not-a-time,50.0,2.0,A"  # line 6
    lines[10] = lines[10].replace(",A", ",A,extra")  # line 11
    cells = lines[20].split(",")
    lines[20] = ",".join([cells[0], "hot", cells[2], cells[3]])  # line 21
    lines[30] = f"{T0:.0f},50.0,2.0,A"  # line 31: goes back in time
    cells = lines[40].split(",")
    lines[40] = ",".join([cells[0], "", cells[2], cells[3]])  # line 41: missing value, kept
    src.write_text("\n".join(lines) + "\n")
    summary = run_backtest(src, time_column="time", out_path=tmp_path / "out.csv")
    assert summary.bad_rows == 4 and summary.rows == 56
    assert [w.split(":")[0] for w in summary.warnings] == [
        "line 6",
        "line 11",
        "line 21",
        "line 31",
    ]
    assert "temp='hot' is not a number" in summary.warnings[2]
    assert "5 fields" in summary.warnings[1] and "backwards" in summary.warnings[3]
    rows = read_out(summary.out_path)
    assert "6" not in [r["line"] for r in rows]
    missing = next(r for r in rows if r["line"] == "41")
    assert missing["health"] != ""  # scored on vib alone


def test_no_numeric_columns(tmp_path: Path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("time,site\n1700000000,A\n1700000060,B\n")
    with pytest.raises(DataError, match="no numeric columns"):
        run_backtest(src, time_column="time", out_path=tmp_path / "o.csv")


def test_missing_time_column_and_columns(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "m.csv", 40)
    with pytest.raises(DataError, match="no time column"):
        run_backtest(src, time_column="when", out_path=tmp_path / "o.csv")
    with pytest.raises(DataError, match="must be non-empty, exist"):
        run_backtest(src, time_column="time", columns=["temp", "rpm"], out_path=tmp_path / "o.csv")


def test_baseline_longer_than_the_file(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "m.csv", 40)  # 39 minutes
    with pytest.raises(DataError, match="longer than the file"):
        run_backtest(src, time_column="time", baseline_hours=2.0, out_path=tmp_path / "o.csv")
    short = write_csv(tmp_path / "s.csv", 20)
    with pytest.raises(DataError, match="needs a longer file"):
        run_backtest(short, time_column="time", out_path=tmp_path / "o.csv")
    with pytest.raises(ConfigError):
        run_backtest(
            src,
            time_column="time",
            baseline_hours=0.2,
            baseline_fraction=0.3,
            out_path=tmp_path / "o.csv",
        )


def test_baseline_by_hours_and_by_fraction(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "m.csv", 200)
    hours = run_backtest(src, time_column="time", baseline_hours=1.0, out_path=tmp_path / "h.csv")
    assert hours.baseline_rows == 61 and hours.baseline_end - hours.baseline_start == 3600.0
    frac = run_backtest(
        src,
        time_column="time",
        baseline_fraction=0.25,
        columns=["vib"],
        out_path=tmp_path / "f.csv",
    )
    assert frac.baseline_rows == 50 and frac.columns == ("vib",)
