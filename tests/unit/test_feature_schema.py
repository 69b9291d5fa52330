"""Named feature schema: specs, channel mapping, forward fill, non-numeric detection."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from fedge.config import AggregatorConfig, default_fleet_model
from fedge.data.simulator import SENSOR_NAMES
from fedge.errors import FeatureSchemaError, RejectReason
from fedge.features.schema import feature_columns, forward_fill, non_numeric_features
from fedge.spec import FeatureSpec, ModelSpec, feature_specs

NAMED = ModelSpec(features=feature_specs(("flow", "bearing_temp", "vib"), {"flow": "m3/h"}))


def test_named_spec_counts_its_features_and_keeps_units() -> None:
    assert NAMED.n_features == 3
    assert NAMED.feature_names == ("flow", "bearing_temp", "vib")
    assert NAMED.features is not None and NAMED.features[0] == FeatureSpec(name="flow", unit="m3/h")
    assert ModelSpec().feature_names is None


@pytest.mark.parametrize(
    "bad",
    [
        {"n_features": 2, "features": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
        {"features": [{"name": "a"}, {"name": "a"}]},
        {"features": [{"name": "not a name"}]},
        {"features": [{"name": "a", "colour": "red"}]},
    ],
)
def test_bad_feature_lists_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelSpec.model_validate(bad)


def test_columns_follow_the_model_order_with_a_mapping() -> None:
    channels = ("temp1", "vib", "flow_m3h", "unused")
    cols = feature_columns(
        NAMED, channels, mapping={"flow": "flow_m3h", "bearing_temp": "temp1"}, device="p3"
    )
    assert cols == (2, 0, 1)


def test_a_missing_feature_is_refused_by_name() -> None:
    with pytest.raises(FeatureSchemaError) as info:
        feature_columns(NAMED, ("flow", "vib"), device="pump-03")
    assert info.value.reason is RejectReason.MISSING_FEATURE
    assert info.value.features == ("bearing_temp",)
    assert str(info.value) == "device pump-03 lacks feature bearing_temp"


def test_several_missing_features_are_all_named() -> None:
    with pytest.raises(FeatureSchemaError, match="lacks features bearing_temp, vib"):
        feature_columns(NAMED, ("flow",), device="pump-03")


def test_positional_spec_needs_the_exact_channel_count() -> None:
    spec = ModelSpec(n_features=2)
    assert feature_columns(spec, ("a", "b")) == (0, 1)
    with pytest.raises(FeatureSchemaError, match="has 3 channels, the fleet model reads 2"):
        feature_columns(spec, ("a", "b", "c"), device="d")


def test_forward_fill_carries_the_last_value_and_leaves_leading_gaps() -> None:
    nan = np.nan
    x = np.array([[nan, 1.0], [2.0, nan], [nan, nan], [5.0, 6.0]], np.float32)
    expected = np.array([[nan, 1.0], [2.0, 1.0], [2.0, 1.0], [5.0, 6.0]], np.float32)
    np.testing.assert_array_equal(forward_fill(x), expected)
    clean = np.ones((3, 2), np.float32)
    assert forward_fill(clean) is clean


def test_non_numeric_features_are_the_all_nan_columns() -> None:
    x = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, 4.0]], np.float32)
    assert non_numeric_features(x, ("a", "b", "c")) == ("b",)
    assert non_numeric_features(np.zeros((0, 3), np.float32), ("a", "b", "c")) == ()


def test_default_fleet_model_names_the_simulated_pump() -> None:
    spec = AggregatorConfig().model
    assert spec == default_fleet_model()
    assert spec.feature_names == SENSOR_NAMES
    assert spec.features is not None and spec.features[9] == FeatureSpec(
        name="bearing_temp", unit="degC"
    )
