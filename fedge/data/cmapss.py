"""Loader for the NASA C-MAPSS turbofan run-to-failure data (FD001..FD004).

Each subset is three whitespace-separated text files in a directory::

    train_FD00x.txt   26 columns: unit, cycle, 3 operational settings, sensors s1..s21
    test_FD00x.txt    same columns, each unit cut off some time before failure
    RUL_FD00x.txt     1 column: true RUL at the last test cycle, one row per test unit

The data is read from where it lives (never copied into the repository). Every
problem with the files raises :class:`~fedge.errors.DataError` naming the file and
line. :func:`prepare` applies the usual protocol: drop constant sensors, z-score
with training statistics (per operating regime when there are several, as in
FD002/FD004), 30-cycle windows labelled with RUL capped at 125 for training, and
the last window of each test unit with its *raw* true RUL for evaluation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedge.data.simulator import UnitRun
from fedge.data.windows import (
    DEFAULT_RUL_CAP,
    DEFAULT_WINDOW,
    FeatureStats,
    last_window,
    make_windows,
    rul_targets,
)
from fedge.errors import DataError

__all__ = [
    "N_COLUMNS",
    "SENSOR_COLUMNS",
    "SETTING_COLUMNS",
    "SUBSETS",
    "CmapssPrepared",
    "CmapssSubset",
    "CmapssUnit",
    "RegimeNormaliser",
    "feature_names",
    "informative_sensors",
    "load_subset",
    "operating_regimes",
    "prepare",
    "read_rul_file",
    "read_table",
    "unit_runs",
]

SUBSETS: tuple[str, ...] = ("FD001", "FD002", "FD003", "FD004")
SETTING_COLUMNS: tuple[str, ...] = ("setting1", "setting2", "setting3")
SENSOR_COLUMNS: tuple[str, ...] = tuple(f"s{i}" for i in range(1, 22))
N_COLUMNS = 2 + len(SETTING_COLUMNS) + len(SENSOR_COLUMNS)  # 26
# Sensors whose (within-regime) training std is below this are treated as constant.
# 0.01 separates FD001's flat sensors (s6 flickers between 21.60 and 21.61, std
# ~0.0014) from the least variable useful one (s15, std ~0.04).
DEFAULT_STD_THRESHOLD = 0.01
# The six FD002/FD004 flight conditions are exact values plus tiny noise; rounding
# setting1 to units, setting2 to hundredths and setting3 to units recovers them.
DEFAULT_SETTING_DECIMALS: tuple[int, int, int] = (0, 2, 0)


@dataclass(frozen=True, eq=False)
class CmapssUnit:
    """One engine: its id, cycle numbers, operational settings and 21 sensors."""

    unit: int
    cycles: npt.NDArray[np.int64]
    settings: npt.NDArray[np.float64]  # (T, 3)
    sensors: npt.NDArray[np.float64]  # (T, 21)

    @property
    def n_cycles(self) -> int:
        """Number of recorded cycles."""
        return int(self.cycles.shape[0])


@dataclass(frozen=True, eq=False)
class CmapssSubset:
    """A loaded subset: training engines (run to failure), test engines, true test RUL."""

    name: str
    train: tuple[CmapssUnit, ...]
    test: tuple[CmapssUnit, ...]
    test_rul: npt.NDArray[np.int64]  # aligned with ``test``

    @property
    def n_train_rows(self) -> int:
        """Total training cycles over all engines."""
        return sum(u.n_cycles for u in self.train)


def _check_subset(subset: str) -> str:
    name = subset.upper() if isinstance(subset, str) else ""
    if name not in SUBSETS:
        raise DataError(f"unknown C-MAPSS subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    return name


def _read_numbers(path: Path, n_columns: int) -> npt.NDArray[np.float64]:
    """Parse a whitespace-separated numeric table with exactly ``n_columns`` per line."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise DataError(f"missing C-MAPSS file {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue  # tolerate blank lines (e.g. a trailing newline)
        if len(fields) != n_columns:
            raise DataError(f"{path}:{lineno}: expected {n_columns} columns, got {len(fields)}")
        try:
            values = [float(f) for f in fields]
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: non-numeric value: {exc}") from exc
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"{path}:{lineno}: non-finite value")
        rows.append(values)
    if not rows:
        raise DataError(f"{path} contains no data")
    return np.asarray(rows, dtype=np.float64)


def read_table(path: Path) -> tuple[CmapssUnit, ...]:
    """Read a ``train_``/``test_`` file into engines, checking ids and cycle order.

    Rows of one engine must be contiguous, with strictly increasing integer cycles.
    """
    data = _read_numbers(Path(path), N_COLUMNS)
    ids, cycles = data[:, 0], data[:, 1]
    if np.any(ids != np.round(ids)) or np.any(cycles != np.round(cycles)):
        raise DataError(f"{path}: unit and cycle columns must be integers")
    if np.any(ids < 1) or np.any(cycles < 1):
        raise DataError(f"{path}: unit and cycle numbers start at 1")
    # A new engine starts wherever the unit id changes.
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    bounds = np.r_[starts, len(ids)]
    units: list[CmapssUnit] = []
    seen: set[int] = set()
    for lo, hi in itertools.pairwise(bounds.tolist()):
        unit_id = int(ids[lo])
        if unit_id in seen:
            raise DataError(f"{path}: rows of unit {unit_id} are not contiguous")
        seen.add(unit_id)
        unit_cycles = cycles[lo:hi].astype(np.int64)
        if np.any(np.diff(unit_cycles) <= 0):
            raise DataError(f"{path}: cycles of unit {unit_id} are not increasing")
        units.append(
            CmapssUnit(
                unit=unit_id,
                cycles=unit_cycles,
                settings=data[lo:hi, 2:5].copy(),
                sensors=data[lo:hi, 5:].copy(),
            )
        )
    return tuple(units)


def read_rul_file(path: Path) -> npt.NDArray[np.int64]:
    """Read a ``RUL_`` file: one non-negative integer per test engine."""
    values = _read_numbers(Path(path), 1)[:, 0]
    if np.any(values != np.round(values)) or np.any(values < 0):
        raise DataError(f"{path}: RUL values must be non-negative integers")
    return values.astype(np.int64)


def load_subset(directory: Path, subset: str = "FD001") -> CmapssSubset:
    """Load ``train_``, ``test_`` and ``RUL_`` files of ``subset`` from ``directory``."""
    name = _check_subset(subset)
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"C-MAPSS directory {root} does not exist")
    train = read_table(root / f"train_{name}.txt")
    test = read_table(root / f"test_{name}.txt")
    rul = read_rul_file(root / f"RUL_{name}.txt")
    if rul.shape[0] != len(test):
        raise DataError(
            f"RUL_{name}.txt has {rul.shape[0]} values but test_{name}.txt has {len(test)} units"
        )
    return CmapssSubset(name=name, train=train, test=test, test_rul=rul)


def _regime_keys(
    settings: npt.NDArray[np.float64], decimals: Sequence[int]
) -> npt.NDArray[np.float64]:
    # "+ 0.0" turns -0.0 into 0.0 so both round to the same regime.
    return np.stack([np.round(settings[:, i], d) + 0.0 for i, d in enumerate(decimals)], axis=1)


def operating_regimes(
    units: Sequence[CmapssUnit],
    *,
    decimals: Sequence[int] = DEFAULT_SETTING_DECIMALS,
) -> npt.NDArray[np.float64]:
    """Centroids ``(R, 3)`` of the operating regimes found in ``units``' settings.

    Regimes are the distinct rounded setting triples (one for FD001/FD003, six for
    FD002/FD004); the centroid is the mean of the raw settings in each.
    """
    if not units:
        raise DataError("no units to find operating regimes in")
    settings = np.concatenate([u.settings for u in units])
    keys = _regime_keys(settings, decimals)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse)
    sums = np.stack([np.bincount(inverse, settings[:, i]) for i in range(settings.shape[1])], 1)
    return np.asarray(sums / counts[:, None], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class RegimeNormaliser:
    """Z-scores sensors with statistics of the operating regime each row is in.

    With a single regime this is plain z-scoring with the training stats.
    """

    centroids: npt.NDArray[np.float64]  # (R, 3)
    scale: npt.NDArray[np.float64]  # (3,) setting scale for nearest-centroid matching
    stats: tuple[FeatureStats, ...]  # one per regime, over the selected sensors
    sensor_indices: tuple[int, ...]

    @classmethod
    def fit(
        cls,
        units: Sequence[CmapssUnit],
        sensor_indices: Sequence[int],
        *,
        per_regime: bool = True,
        decimals: Sequence[int] = DEFAULT_SETTING_DECIMALS,
    ) -> RegimeNormaliser:
        """Fit on training engines; ``per_regime=False`` uses one global regime."""
        if not units:
            raise DataError("no units to fit a normaliser on")
        settings = np.concatenate([u.settings for u in units])
        spread = settings.std(axis=0)
        scale = np.where(spread > 1e-9, spread, 1.0)
        if per_regime:
            centroids = operating_regimes(units, decimals=decimals)
        else:
            centroids = settings.mean(axis=0, keepdims=True)
        idx = list(sensor_indices)
        partial = cls(centroids, scale, (), tuple(idx))
        regimes = partial.assign(settings)
        sensors = np.concatenate([u.sensors[:, idx] for u in units])
        stats = tuple(FeatureStats.from_array(sensors[regimes == r]) for r in range(len(centroids)))
        if any(s.count == 0 for s in stats):
            raise DataError("an operating regime has no rows; use coarser setting decimals")
        return cls(centroids, scale, stats, tuple(idx))

    def assign(self, settings: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Regime index of each settings row: the nearest centroid (scaled settings)."""
        diff = (settings[:, None, :] - self.centroids[None, :, :]) / self.scale
        return np.asarray(np.argmin(np.square(diff).sum(axis=2), axis=1), dtype=np.int64)

    def transform(self, unit: CmapssUnit) -> npt.NDArray[np.float32]:
        """The unit's selected sensors, z-scored per regime, as float32 ``(T, F)``."""
        x = unit.sensors[:, list(self.sensor_indices)]
        regimes = self.assign(unit.settings)
        mean = np.stack([s.mean for s in self.stats])[regimes]
        std = np.stack([s.std for s in self.stats])[regimes]
        return ((x - mean) / std).astype(np.float32)


def informative_sensors(
    train: Sequence[CmapssUnit],
    *,
    threshold: float = DEFAULT_STD_THRESHOLD,
    decimals: Sequence[int] = DEFAULT_SETTING_DECIMALS,
) -> list[int]:
    """0-based indices (into s1..s21) of sensors that vary in the training set.

    A sensor is dropped when its standard deviation *within every operating regime*
    is below ``threshold``: in FD002/FD004 the regime switches move every sensor,
    so a global std would keep sensors that carry no degradation information.
    For FD001 this keeps the usual 14: s2 s3 s4 s7 s8 s9 s11 s12 s13 s14 s15 s17 s20 s21.
    """
    if not train:
        raise DataError("no training units")
    settings = np.concatenate([u.settings for u in train])
    sensors = np.concatenate([u.sensors for u in train])
    keys = _regime_keys(settings, decimals)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    stds = np.stack([sensors[inverse == r].std(axis=0) for r in range(int(inverse.max()) + 1)])
    return [int(i) for i in np.flatnonzero(stds.max(axis=0) >= threshold)]


@dataclass(frozen=True, eq=False)
class CmapssPrepared:
    """Model-ready arrays for one subset (float32, features = selected sensors).

    Training windows stay grouped per engine so callers can split by engine (or
    hand engines to different federated clients) without leaking between splits.
    """

    sensor_indices: tuple[int, ...]
    train_units: tuple[int, ...]
    train_x: tuple[npt.NDArray[np.float32], ...]  # per engine: (N_u, W, F)
    train_y: tuple[npt.NDArray[np.float32], ...]  # per engine: (N_u,), RUL capped
    test_units: tuple[int, ...]
    test_x: npt.NDArray[np.float32]  # (n_test, W, F): last window of each test engine
    test_y: npt.NDArray[np.float32]  # (n_test,): raw true RUL from RUL_FD00x.txt
    normaliser: RegimeNormaliser | None

    @property
    def sensor_names(self) -> tuple[str, ...]:
        """Names (s1..s21) of the selected sensors."""
        return tuple(SENSOR_COLUMNS[i] for i in self.sensor_indices)


def prepare(
    subset: CmapssSubset,
    *,
    window: int = DEFAULT_WINDOW,
    rul_cap: float = DEFAULT_RUL_CAP,
    normalise: bool = True,
    per_regime: bool | None = None,
    sensor_indices: Sequence[int] | None = None,
) -> CmapssPrepared:
    """Windows and labels under the usual C-MAPSS protocol.

    ``per_regime=None`` normalises per operating regime only when the training set
    has more than one (FD002/FD004). ``normalise=False`` returns raw sensor values,
    e.g. for federated normalisation with :class:`FeatureStats`. Training labels
    are the piecewise-linear RUL capped at ``rul_cap``; test labels are the raw
    values of the ``RUL_`` file.
    """
    indices = informative_sensors(subset.train) if sensor_indices is None else list(sensor_indices)
    if not indices or any(not 0 <= i < len(SENSOR_COLUMNS) for i in indices):
        raise DataError(f"sensor indices must be a non-empty subset of 0..20, got {indices}")
    normaliser: RegimeNormaliser | None = None
    if normalise:
        if per_regime is None:
            per_regime = len(operating_regimes(subset.train)) > 1
        normaliser = RegimeNormaliser.fit(subset.train, indices, per_regime=per_regime)

    def features(unit: CmapssUnit) -> npt.NDArray[np.float32]:
        if normaliser is None:
            return unit.sensors[:, indices].astype(np.float32)
        return normaliser.transform(unit)

    train_x: list[npt.NDArray[np.float32]] = []
    train_y: list[npt.NDArray[np.float32]] = []
    for unit in subset.train:
        x, y = make_windows(features(unit), rul_targets(unit.n_cycles, cap=rul_cap), window=window)
        train_x.append(x)
        train_y.append(y)
    n_features = len(indices)
    test_x = (
        np.stack([last_window(features(u), window=window) for u in subset.test])
        if subset.test
        else np.empty((0, window, n_features), dtype=np.float32)
    )
    return CmapssPrepared(
        sensor_indices=tuple(indices),
        train_units=tuple(u.unit for u in subset.train),
        train_x=tuple(train_x),
        train_y=tuple(train_y),
        test_units=tuple(u.unit for u in subset.test),
        test_x=test_x,
        test_y=subset.test_rul.astype(np.float32),
        normaliser=normaliser,
    )


def feature_names(sensor_indices: Sequence[int], *, with_settings: bool) -> tuple[str, ...]:
    """Column names of :func:`unit_runs` features: settings (if used), then sensors."""
    settings = SETTING_COLUMNS if with_settings else ()
    return (*settings, *(SENSOR_COLUMNS[i] for i in sensor_indices))


def unit_runs(
    units: Sequence[CmapssUnit], *, sensor_indices: Sequence[int], with_settings: bool
) -> list[UnitRun]:
    """Engines as raw-feature :class:`UnitRun` s, the form sensor sources and agents use.

    Features are the selected sensors (prefixed by the three operational settings
    when ``with_settings``, which lets one model serve the six flight conditions of
    FD002/FD004); no normalisation — the model normalises with federated statistics.
    """
    cols = list(sensor_indices)
    runs = []
    for u in units:
        parts = [u.settings] if with_settings else []
        parts.append(u.sensors[:, cols])
        runs.append(
            UnitRun(
                unit=u.unit,
                fault_mode="unknown",
                regimes=np.zeros(u.n_cycles, np.int64),
                sensors=np.concatenate(parts, axis=1).astype(np.float32),
            )
        )
    return runs
