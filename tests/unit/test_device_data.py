"""edge_agent.device_data: stored readings as model inputs, on literal arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.device_data import DeviceData
from fedge.data.simulator import SENSOR_NAMES
from fedge.errors import FeatureSchemaError
from fedge.spec import ModelSpec, feature_specs
from fedge.transport import InMemoryBroker
from tests.unit.test_agent import make_agent

NAMES = tuple(SENSOR_NAMES)


def _data(tmp_path: Path, **config: object) -> DeviceData:
    return make_agent(tmp_path, InMemoryBroker(), **config).data


def test_channels_in_the_models_order_are_used_as_they_are(tmp_path: Path) -> None:
    data = _data(tmp_path)
    spec = ModelSpec(features=feature_specs(NAMES))
    values = np.arange(2 * len(NAMES), dtype=np.float32).reshape(2, len(NAMES))
    x, cycles = data.model_inputs(spec, values, np.array([7, 8]))
    assert x is values  # no copy
    np.testing.assert_array_equal(cycles, [7, 8])


def test_a_mapped_channel_is_read_for_its_feature(tmp_path: Path) -> None:
    # The fleet's feature NAMES[0] is this device's channel NAMES[1] (and the other way).
    data = _data(tmp_path, features={NAMES[0]: NAMES[1], NAMES[1]: NAMES[0]})
    spec = ModelSpec(features=feature_specs(NAMES[:2]))
    values = np.zeros((1, len(NAMES)), np.float32)
    values[0, :2] = [1.0, 2.0]
    np.testing.assert_array_equal(data.columns(spec), [1, 0])
    x, _ = data.model_inputs(spec, values)
    np.testing.assert_array_equal(x, [[2.0, 1.0]])
    assert x.flags.c_contiguous


def test_gaps_carry_the_last_value_and_rows_before_every_feature_had_one_go(
    tmp_path: Path,
) -> None:
    data = _data(tmp_path)
    spec = ModelSpec(features=feature_specs(NAMES[:2]))
    values = np.full((4, len(NAMES)), np.nan, np.float32)
    values[:, 0] = [1.0, 2.0, np.nan, 4.0]
    values[:, 1] = [np.nan, 5.0, 6.0, np.nan]
    x, cycles = data.model_inputs(spec, values, np.array([10, 11, 12, 13]))
    np.testing.assert_array_equal(x, [[2.0, 5.0], [2.0, 6.0], [4.0, 6.0]])
    np.testing.assert_array_equal(cycles, [11, 12, 13])


def test_a_feature_the_device_lacks_is_named(tmp_path: Path) -> None:
    data = _data(tmp_path)
    spec = ModelSpec(features=feature_specs((*NAMES[:1], "no_such_sensor")))
    with pytest.raises(FeatureSchemaError, match="no_such_sensor"):
        data.columns(spec)
    assert data.live_window(spec, unit=0, cycle=3) is None  # no window, not an error


def test_nothing_stored_gives_no_windows_and_no_statistics(tmp_path: Path) -> None:
    data = _data(tmp_path)
    spec = ModelSpec(n_features=len(NAMES))
    train, holdout = data.datasets(spec)
    assert len(train) == len(holdout) == 0
    assert data.live_window(spec, unit=None, cycle=None) is None
    assert data.probe_windows(spec, limit=8, unit=None, cycle=None) is None
    assert data.stats_tensors(spec) is None
