"""Parsers shared by the text sources, the latest-value store and the file tail."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.sources.inputs import (
    InputError,
    LatestValues,
    LimitedLog,
    SnapshotFeatures,
    VibrationChannel,
    json_number,
    lookup_path,
    parse_number,
    parse_timestamp,
    timezone,
)
from edge_agent.sources.tail import LineTail

UTC_TZ = timezone("UTC")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714564800", 1714564800.0),
        ("1714564800.25", 1714564800.25),
        (1714564800, 1714564800.0),
        ("2024-05-01T12:00:00Z", 1714564800.0),
        ("2024-05-01T12:00:00+00:00", 1714564800.0),
        ("2024-05-01 14:00:00.5+02:00", 1714564800.5),
        ("2024-05-01T12:00:00", 1714564800.0),  # naive: read in the given zone (UTC)
    ],
)
def test_timestamps_epoch_and_iso(text: object, expected: float) -> None:
    assert parse_timestamp(text, naive_tz=UTC_TZ) == expected


def test_naive_iso_times_use_the_configured_zone() -> None:
    berlin = timezone("Europe/Berlin")  # CEST = UTC+2 on 1 May 2024
    assert parse_timestamp("2024-05-01T14:00:00", naive_tz=berlin) == 1714564800.0
    with pytest.raises(ValueError, match="unknown time zone"):
        timezone("Mars/Olympus")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1714564800000", "milliseconds"),
        ("yesterday", "neither epoch seconds nor ISO 8601"),
        ("", "empty"),
        (True, "boolean"),
        (None, "NoneType"),
        ("nan", "not epoch seconds"),
    ],
)
def test_bad_timestamps_are_refused(text: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_timestamp(text, naive_tz=UTC_TZ)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1)))
def test_iso_round_trip(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    assert parse_timestamp(aware.isoformat(), naive_tz=UTC_TZ) == aware.timestamp()
    shifted = aware.astimezone(timezone("Asia/Kolkata"))
    assert parse_timestamp(shifted.isoformat(), naive_tz=UTC_TZ) == aware.timestamp()
    assert parse_timestamp(repr(aware.timestamp()), naive_tz=UTC_TZ) == aware.timestamp()


def test_numbers_from_cells_and_json() -> None:
    assert parse_number(" 41.5 ") == 41.5
    assert math.isnan(parse_number(""))  # an empty cell: no value
    assert math.isnan(parse_number("nan"))
    for bad in ("41,5", "inf", "-Infinity", "ok"):
        with pytest.raises(InputError):
            parse_number(bad)
    assert json_number(3, what="t") == 3.0
    assert math.isnan(json_number(None, what="t"))
    refused: tuple[object, ...] = (True, "3", [3], {"v": 3}, 10**400)
    for value in refused:
        with pytest.raises(InputError, match="t: "):
            json_number(value, what="t")


def test_dotted_paths() -> None:
    doc = {"data": {"value": 4.5, "list": [{"t": 1}, {"t": 2}]}}
    assert lookup_path(doc, ("data", "value")) == 4.5
    assert lookup_path(doc, ("data", "list", "1", "t")) == 2
    with pytest.raises(InputError, match=r"no 'data\.list\.2'"):
        lookup_path(doc, ("data", "list", "2", "t"))
    with pytest.raises(InputError, match=r"no 'data\.value\.x'"):
        lookup_path(doc, ("data", "value", "x"))


def test_latest_values_one_reading_per_batch_of_updates() -> None:
    latest = LatestValues(3, max_age_s=None)
    assert latest.take() is None
    latest.set(0, 1.0, ts=10.0)
    latest.set(2, 3.0, ts=12.0)
    latest.set(0, 1.5, ts=11.0)
    taken = latest.take()
    assert taken is not None
    np.testing.assert_array_equal(taken[0], [1.5, np.nan, 3.0])
    assert taken[1] == 12.0  # the newest update's time
    assert latest.take() is None  # nothing new
    latest.set(1, 2.0, ts=13.0)
    again = latest.take()
    assert again is not None
    np.testing.assert_array_equal(again[0], [1.5, 2.0, 3.0])  # the others are held


def test_latest_values_expire_after_max_age() -> None:
    latest = LatestValues(2, max_age_s=1e-9)
    latest.set(0, 1.0, ts=1.0)
    taken = latest.take()
    assert taken is not None
    assert np.isnan(taken[0]).all()


def test_snapshot_features_from_text_and_json() -> None:
    channel = VibrationChannel(column="accel", prefix="bearing", sample_rate_hz=4000.0)
    features = SnapshotFeatures([channel])
    assert features.names[:2] == ("bearing_rms", "bearing_peak")
    square = [1.0, -1.0] * 32  # rms 1, peak 1, crest 1, kurtosis 1
    values, problems = features.compute({"accel": square}, from_text=False)
    assert problems == []
    np.testing.assert_allclose(values[:4], [1.0, 1.0, 1.0, 1.0])
    text_values, _ = features.compute({"accel": ";".join(map(str, square))}, from_text=True)
    np.testing.assert_array_equal(text_values, values)
    dead, problems = features.compute({"accel": [0.5] * 64}, from_text=False)
    assert np.isnan(dead).all() and "flat_line" in problems[0]
    missing, problems = features.compute({}, from_text=False)
    assert np.isnan(missing).all() and problems == []


def test_limited_log_caps_a_flood(caplog: pytest.LogCaptureFixture) -> None:
    limited = LimitedLog(logging.getLogger("test.limited"), burst=3, period_s=3600.0)
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for i in range(10):
            limited.warning("bad %d", i)
    assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1", "bad 2"]


# --- the tail ---------------------------------------------------------------------


def _drain(tail: LineTail) -> list[tuple[int, bytes | None]]:
    out = []
    while (item := tail.next_line()) is not None:
        out.append(item)
    return out


def test_tail_reads_a_finished_file_with_its_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\r\nx\n\ny")
    with LineTail(path, follow=False) as tail:
        assert _drain(tail) == [(1, b"h"), (2, b"x"), (3, b""), (4, b"y")]
        assert tail.eof
        tail.rewind()
        assert _drain(tail)[0] == (1, b"h")


def test_tail_follow_keeps_a_partial_line_until_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\n1,")
    with LineTail(path, follow=True, from_start=True) as tail:
        assert _drain(tail) == [(1, b"h")]
        with path.open("ab") as fh:
            fh.write(b"2\n3,4\n")
        assert _drain(tail) == [(2, b"1,2"), (3, b"3,4")]


def test_tail_follow_from_the_end_keeps_the_header_and_counts_skipped_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\nold1\nold2\n")
    with LineTail(path, follow=True, from_start=False) as tail:
        assert _drain(tail) == [(1, b"h")]
        with path.open("ab") as fh:
            fh.write(b"new\n")
        assert _drain(tail) == [(4, b"new")]


def test_tail_drops_overlong_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\n" + b"x" * 5000 + b"\nok\n")
    with LineTail(path, follow=False, max_line_bytes=1024, chunk_bytes=700) as tail:
        assert _drain(tail) == [(1, b"h"), (2, None), (3, b"ok")]


def test_tail_follows_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"h\n1\n2")  # the writer has not finished line 3 yet
    with LineTail(path, follow=True, from_start=True) as tail:
        assert _drain(tail) == [(1, b"h"), (2, b"1")]
        path.rename(tmp_path / "a.csv.1")  # logrotate, create mode
        path.write_bytes(b"h\n10\n")
        tail._last_stat = -1.0  # no need to wait out the stat interval in a unit test
        assert _drain(tail) == [(3, b"2"), (1, b"h"), (2, b"10")]
        path.write_bytes(b"h\n")  # copytruncate: shorter than where we are
        tail._last_stat = -1.0
        assert _drain(tail) == [(1, b"h")]


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_tail_gives_the_same_lines_however_the_writes_are_split(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(line + b"\n" for line in lines)
    path = tmp_path_factory.mktemp("tail") / "f"
    path.write_bytes(b"")
    got: list[tuple[int, bytes | None]] = []
    at = 0
    with LineTail(path, follow=True, from_start=True, chunk_bytes=7) as tail:
        for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
            with path.open("ab") as fh:
                fh.write(data[at:cut])
            at = cut
            got += _drain(tail)
    expected = [(i + 1, line.removesuffix(b"\r")) for i, line in enumerate(lines)]
    assert got == expected
