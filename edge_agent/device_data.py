"""What a model reads from this device's store: its features, windows and statistics.

:class:`DeviceData` turns the stored channel readings of the device's lives into what
a model of a given :class:`~fedge.spec.ModelSpec` takes: the feature columns (by the
fleet's feature names and the device's ``[features]`` mapping), forward-filled model
inputs, the training and held-out windows of the lives that ended in failure (RUL
labels from edge_agent.maintenance; cached until the lives change), the running unit's
latest window, and the feature statistics a ``stats`` round asks for.

It reads the store, whose SQLite connection belongs to the agent's thread: one
object per agent, used from that thread only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.maintenance import Maintenance
from edge_agent.store import ReadingStore
from fedge.config import AgentConfig
from fedge.data.context import add_context, stats_rows
from fedge.data.windows import FeatureStats, last_window, make_windows
from fedge.errors import FeatureSchemaError, RejectReason
from fedge.features.schema import feature_columns, forward_fill, non_numeric_features
from fedge.limits import check_stats_rows
from fedge.spec import ModelSpec
from fedge.training import WindowDataset

__all__ = ["DeviceData"]


class DeviceData:
    """One device's stored readings as model inputs (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        store: ReadingStore,
        maintenance: Maintenance,
        sensor_names: Sequence[str],
    ) -> None:
        self.config = config
        self.store = store
        self.maintenance = maintenance
        self.sensor_names = tuple(sensor_names)
        self._columns: dict[ModelSpec, np.ndarray] = {}
        self._key: tuple[tuple[int, ...], ModelSpec, int] | None = None
        self._train: WindowDataset | None = None
        self._holdout: WindowDataset | None = None

    def columns(self, spec: ModelSpec) -> np.ndarray:
        """Column of each of ``spec``'s features among this device's channels.

        Raises FeatureSchemaError naming the features the device lacks.
        """
        cols = self._columns.get(spec)
        if cols is None:
            cols = np.array(
                feature_columns(
                    spec,
                    self.sensor_names,
                    mapping=self.config.features,
                    device=self.config.device,
                ),
                dtype=np.intp,
            )
            self._columns[spec] = cols
        return cols

    def model_inputs(
        self, spec: ModelSpec, values: np.ndarray, cycles: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's features (in its order) from stored channel readings.

        Channels without a fresh value (NaN) carry their last value forward; rows before
        every feature has had a value are dropped (with their cycles).
        """
        cols = self.columns(spec)
        if cols.shape[0] == values.shape[1] and (cols == np.arange(cols.shape[0])).all():
            picked = values  # channels already in the model's order: no copy
        else:
            # Fancy indexing on axis 1 returns an F-ordered array; C order keeps every
            # later reduction (sums, windows) in the same order as for a plain array.
            picked = np.ascontiguousarray(values[:, cols])
        x = forward_fill(picked)
        if not np.isnan(x).any():
            return x, cycles
        complete = ~np.isnan(x).any(axis=1)
        first = int(np.argmax(complete)) if complete.any() else x.shape[0]
        return x[first:], None if cycles is None else cycles[first:]

    def datasets(self, spec: ModelSpec) -> tuple[WindowDataset, WindowDataset]:
        """Training and held-out windows from lives that ended in failure (cached).

        Labels come from the lives (edge_agent.maintenance): RUL in ``rul_unit``;
        lives closed by a repair or replacement are censored and not used.

        Every ``k``-th failed unit (k = 1/holdout_fraction) is held out, so the split
        is stable as new units fail and the model is never validated on its own
        training windows.
        """
        units = self.maintenance.failed_units()
        key = (units, spec, self.maintenance.revision)
        if key == self._key and self._train is not None and self._holdout is not None:
            return self._train, self._holdout
        fraction = self.config.holdout_fraction
        every = round(1 / fraction) if fraction > 0 else 0
        # The old windows go before the new ones are built: never both in memory.
        self._train = self._holdout = None
        train: list[WindowDataset] = []
        hold: list[WindowDataset] = []
        numeric: set[str] = set()
        names = spec.feature_names or tuple(f"feature {i}" for i in range(spec.n_features))
        for i, unit in enumerate(units):
            data = self.store.unit_data(unit)
            head, _ = self.model_inputs(spec, self.store.head(unit))
            if spec.context == "history" and head.shape[0] == 0:
                continue  # first cycles never seen: no baseline, cannot be used
            values, cycles = self.model_inputs(spec, data.values, data.cycles)
            assert cycles is not None  # noqa: S101 - cycles were given
            numeric.update(set(names) - set(non_numeric_features(values, names)))
            labels = self.maintenance.rul_labels(data)
            rul = np.minimum(labels, spec.rul_cap)[len(data.cycles) - len(cycles) :]
            if values.shape[0] < spec.window:
                continue
            x, y = make_windows(values, rul, window=spec.window)
            assert y is not None  # noqa: S101 - targets were given
            # Window k ends at the unit's (k + window - 1)-th stored reading.
            x = add_context(x, end_cycles=cycles[spec.window - 1 :], head=head, spec=spec)
            target = hold if every and i % every == every - 1 else train
            target.append(WindowDataset(x, y))
        silent = [n for n in names if n not in numeric]
        if units and silent:
            raise FeatureSchemaError(
                RejectReason.NON_NUMERIC_FEATURE,
                f"device {self.config.device} has no numeric values for {', '.join(silent)}",
                features=tuple(silent),
            )
        n_f = spec.input_features
        self._train = WindowDataset.concat(train, n_features=n_f, window=spec.window,
                                           release=True)
        self._holdout = WindowDataset.concat(hold, n_features=n_f, window=spec.window,
                                             release=True)
        # Keyed by the spec too: a new global model may read other inputs or windows.
        self._key = key
        return self._train, self._holdout

    def holdout_or_empty(self, spec: ModelSpec) -> WindowDataset:
        """The held-out windows for ``spec``; none if the device cannot build them."""
        try:
            return self.datasets(spec)[1]
        except FeatureSchemaError:
            return WindowDataset.concat([], n_features=spec.input_features, window=spec.window)

    def live_window(
        self, spec: ModelSpec, *, unit: int | None, cycle: int | None
    ) -> np.ndarray | None:
        """The model input (1, window, features) of running ``unit`` at ``cycle``, or
        None if there is none yet."""
        if unit is None:
            return None
        try:
            recent, _ = self.model_inputs(spec, self.store.latest(unit, spec.window))
            head, _ = self.model_inputs(spec, self.store.head(unit))
        except FeatureSchemaError:
            return None
        if recent.shape[0] == 0 or (spec.context == "history" and head.shape[0] == 0):
            return None
        return add_context(
            last_window(recent, window=spec.window)[None, ...],
            end_cycles=np.array([cycle or 0]),
            head=head,
            spec=spec,
        )

    def probe_windows(
        self, spec: ModelSpec, *, limit: int, unit: int | None, cycle: int | None
    ) -> np.ndarray | None:
        """Up to ``limit`` stored windows for a smoke forward pass of a model of ``spec``:
        held-out ones first, else training ones, else the running unit's live window."""
        try:
            train, holdout = self.datasets(spec)
        except FeatureSchemaError:
            return self.live_window(spec, unit=unit, cycle=cycle)
        for data in (holdout, train):
            if len(data):
                return data.x[:limit]
        return self.live_window(spec, unit=unit, cycle=cycle)

    def stats_tensors(self, spec: ModelSpec) -> tuple[int, dict[str, np.ndarray]] | None:
        """Count, sums and sums of squares of what ``spec`` reads (sensors, and age with
        history) over the failed lives, for a ``stats`` round; None if there are none."""
        units = self.store.failed_units()
        if not units:
            return None
        rows = []
        for unit in units:
            data = self.store.unit_data(unit)
            values, cycles = self.model_inputs(spec, data.values, data.cycles)
            assert cycles is not None  # noqa: S101 - cycles were given
            rows.append(stats_rows(values, cycles=cycles, spec=spec))
        stats = FeatureStats.combine(FeatureStats.from_array(r) for r in rows)
        if stats.count == 0:
            return None
        # Sums over a handful of rows are close to the readings themselves.
        check_stats_rows(int(stats.count), self.config.limits)
        return int(stats.count), {
            "count": np.array([stats.count], np.float64),
            "sum": np.asarray(stats.sum, np.float64),
            "sumsq": np.asarray(stats.sumsq, np.float64),
        }
