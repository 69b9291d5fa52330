"""C-MAPSS loader: synthetic files in the original format, errors, and real FD001."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.data import (
    SENSOR_COLUMNS,
    informative_sensors,
    load_subset,
    operating_regimes,
    prepare,
)
from fedge.data.cmapss import read_rul_file, read_table
from fedge.errors import DataError

REAL_DIR = Path(__file__).resolve().parents[2].parent / "shared/datasets/cmapss"
# 1-based sensor numbers that never move in the synthetic data (as in FD001).
CONSTANT = {1, 5, 6, 10, 16, 18, 19}
USUAL_14 = [f"s{i}" for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)]


def _row(unit: int, cycle: int, settings: tuple[float, float, float], offset: float = 0.0) -> str:
    sensors = [
        10.0 * j if j in CONSTANT else 100.0 * j + unit + cycle / 10 + offset for j in range(1, 22)
    ]
    fields = [
        str(unit),
        str(cycle),
        *(f"{s:.4f}" for s in settings),
        *(f"{v:.2f}" for v in sensors),
    ]
    # The original files end every line with a space.
    return " ".join(fields) + " \n"


def _write(path: Path, lengths: dict[int, int], settings: tuple[float, float, float]) -> None:
    path.write_text(
        "".join(_row(u, c, settings) for u, n in lengths.items() for c in range(1, n + 1)),
        encoding="ascii",
    )


@pytest.fixture
def fd001_like(tmp_path: Path) -> Path:
    _write(tmp_path / "train_FD001.txt", {1: 5, 2: 3}, (0.0007, -0.0004, 100.0))
    _write(tmp_path / "test_FD001.txt", {1: 2, 2: 4}, (-0.0002, 0.0003, 100.0))
    (tmp_path / "RUL_FD001.txt").write_text("10\n20\n", encoding="ascii")
    return tmp_path


def test_load_synthetic_subset_values(fd001_like: Path) -> None:
    subset = load_subset(fd001_like, "fd001")  # the name is case-insensitive
    assert subset.name == "FD001"
    assert [u.unit for u in subset.train] == [1, 2]
    assert [u.n_cycles for u in subset.train] == [5, 3]
    assert subset.n_train_rows == 8
    unit1 = subset.train[0]
    assert unit1.cycles.tolist() == [1, 2, 3, 4, 5]
    assert unit1.settings.shape == (5, 3) and unit1.sensors.shape == (5, 21)
    assert unit1.settings[0].tolist() == [0.0007, -0.0004, 100.0]
    assert unit1.sensors[2, 1] == pytest.approx(201.3)  # s2 of unit 1, cycle 3
    assert unit1.sensors[0, 0] == 10.0  # s1 is constant
    assert subset.train[1].sensors[2, 20] == pytest.approx(2102.3)  # s21, unit 2, cycle 3
    assert [u.n_cycles for u in subset.test] == [2, 4]
    assert subset.test_rul.tolist() == [10, 20]


def test_informative_sensors_drops_constant_ones(fd001_like: Path) -> None:
    subset = load_subset(fd001_like)
    indices = informative_sensors(subset.train)
    assert [SENSOR_COLUMNS[i] for i in indices] == USUAL_14


def test_prepare_raw_windows_and_labels(fd001_like: Path) -> None:
    prepared = prepare(load_subset(fd001_like), window=3, rul_cap=1.5, normalise=False)
    assert prepared.sensor_names == tuple(USUAL_14)
    assert prepared.train_units == (1, 2)
    x1, x2 = prepared.train_x
    assert x1.shape == (3, 3, 14) and x2.shape == (1, 3, 14)
    assert x1.dtype == np.float32
    # Unit 1, first window: cycles 1..3 of s2 (= 200 + unit + cycle/10).
    np.testing.assert_allclose(x1[0, :, 0], [201.1, 201.2, 201.3], rtol=1e-6)
    # Capped piecewise-linear RUL at the window ends (cycles 3, 4, 5 of 5).
    assert prepared.train_y[0].tolist() == [1.5, 1.0, 0.0]
    assert prepared.train_y[1].tolist() == [0.0]
    # Test: last window, the 2-cycle unit padded with its first row; raw true RUL.
    assert prepared.test_x.shape == (2, 3, 14)
    np.testing.assert_allclose(prepared.test_x[0, :, 0], [201.1, 201.1, 201.2], rtol=1e-6)
    np.testing.assert_allclose(prepared.test_x[1, :, 0], [202.2, 202.3, 202.4], rtol=1e-6)
    assert prepared.test_y.tolist() == [10.0, 20.0]
    assert prepared.normaliser is None


def test_prepare_normalises_with_training_stats(fd001_like: Path) -> None:
    subset = load_subset(fd001_like)
    prepared = prepare(subset, window=3)
    assert prepared.normaliser is not None
    assert len(prepared.normaliser.stats) == 1  # one operating regime
    rows = np.concatenate([prepared.normaliser.transform(u) for u in subset.train])
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=1e-4)
    # The windows are cut from exactly those normalised rows.
    np.testing.assert_allclose(prepared.train_x[0][0], rows[:3], rtol=1e-6)


def test_multiple_regimes_are_found_and_normalised_separately(tmp_path: Path) -> None:
    # Two flight conditions (like FD002's): every sensor jumps by 500 between them.
    lines = []
    for unit in (1, 2):
        for cycle in range(1, 9):
            high = cycle % 2 == 0
            settings = (42.0049, 0.8408, 100.0) if high else (-0.0013, 0.0002, 60.0)
            lines.append(_row(unit, cycle, settings, offset=500.0 if high else 0.0))
    (tmp_path / "train_FD002.txt").write_text("".join(lines), encoding="ascii")
    (tmp_path / "test_FD002.txt").write_text("".join(lines[:4]), encoding="ascii")
    (tmp_path / "RUL_FD002.txt").write_text("7\n", encoding="ascii")
    subset = load_subset(tmp_path, "FD002")
    centroids = operating_regimes(subset.train)
    assert centroids.shape == (2, 3)
    np.testing.assert_allclose(sorted(centroids[:, 0]), [-0.0013, 42.0049])
    # A regime-only jump is not degradation: the constant sensors stay dropped.
    assert [SENSOR_COLUMNS[i] for i in informative_sensors(subset.train)] == USUAL_14
    prepared = prepare(subset, window=2)
    assert prepared.normaliser is not None and len(prepared.normaliser.stats) == 2
    rows = np.concatenate([prepared.normaliser.transform(u) for u in subset.train])
    regimes = np.concatenate([prepared.normaliser.assign(u.settings) for u in subset.train])
    for r in (0, 1):
        np.testing.assert_allclose(rows[regimes == r].mean(axis=0), 0.0, atol=1e-4)
    # Per-regime z-scores remove the 500-unit jump entirely.
    assert np.abs(rows).max() < 3.0
    assert prepared.test_x.shape == (1, 2, 14)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1 1 0 0 100 " + "1.0 " * 20 + "\n", "expected 26 columns, got 25"),
        ("1 1 0 0 100 " + "1.0 " * 20 + "abc\n", "non-numeric"),
        ("1 1 0 0 100 " + "1.0 " * 20 + "nan\n", "non-finite"),
        ("1.5 1 0 0 100 " + "1.0 " * 21 + "\n", "integers"),
        ("", "no data"),
    ],
)
def test_malformed_table(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "train_FD001.txt"
    path.write_text(content, encoding="ascii")
    with pytest.raises(DataError, match=message):
        read_table(path)


def test_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    good = _row(1, 1, (0.0, 0.0, 100.0))
    path = tmp_path / "train_FD001.txt"
    path.write_text(good + good + "1 2 3\n", encoding="ascii")
    with pytest.raises(DataError, match=r"train_FD001\.txt:3: expected 26 columns, got 3"):
        read_table(path)


def test_unit_order_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    settings = (0.0, 0.0, 100.0)
    path.write_text(_row(1, 1, settings) + _row(2, 1, settings) + _row(1, 2, settings))
    with pytest.raises(DataError, match="not contiguous"):
        read_table(path)
    path.write_text(_row(1, 2, settings) + _row(1, 1, settings))
    with pytest.raises(DataError, match="not increasing"):
        read_table(path)


def test_rul_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "RUL_FD001.txt"
    path.write_text("10\n-1\n")
    with pytest.raises(DataError, match="non-negative"):
        read_rul_file(path)
    path.write_text("10 11\n")
    with pytest.raises(DataError, match="expected 1 columns"):
        read_rul_file(path)


def test_missing_files_and_bad_names(fd001_like: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown C-MAPSS subset"):
        load_subset(fd001_like, "FD005")
    with pytest.raises(DataError, match="does not exist"):
        load_subset(tmp_path / "nowhere", "FD001")
    with pytest.raises(DataError, match="missing C-MAPSS file"):
        load_subset(fd001_like, "FD003")
    (fd001_like / "RUL_FD001.txt").write_text("10\n")
    with pytest.raises(DataError, match=r"1 values but test_FD001\.txt has 2 units"):
        load_subset(fd001_like, "FD001")


def test_prepare_rejects_bad_sensor_indices(fd001_like: Path) -> None:
    with pytest.raises(DataError):
        prepare(load_subset(fd001_like), sensor_indices=[0, 21])


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason="C-MAPSS data not present")
def test_real_fd001() -> None:
    subset = load_subset(REAL_DIR, "FD001")
    assert len(subset.train) == 100 and len(subset.test) == 100
    assert subset.n_train_rows == 20631
    assert sum(u.n_cycles for u in subset.test) == 13096
    assert subset.test_rul.shape == (100,)
    assert subset.test_rul[:3].tolist() == [112, 98, 69]  # first lines of RUL_FD001.txt
    indices = informative_sensors(subset.train)
    assert len(indices) == 14
    assert [SENSOR_COLUMNS[i] for i in indices] == USUAL_14
    assert len(operating_regimes(subset.train)) == 1
    prepared = prepare(subset)
    assert sum(len(x) for x in prepared.train_x) == 20631 - 100 * 29
    assert prepared.test_x.shape == (100, 30, 14)
    assert max(float(y.max()) for y in prepared.train_y) == 125.0
    assert prepared.test_y.max() > 125  # raw test RUL is not capped
    assert np.all(np.isfinite(prepared.test_x))
