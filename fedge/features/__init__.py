"""Device-side feature stages: raw sensor snapshots in, named reading values out.

Pure numpy, no I/O. :func:`vibration_features` turns one accelerometer snapshot into
the values of one :class:`fedge.messages.Reading`; :func:`feature_names` gives their
names in order for mapping onto the fleet's feature schema; the ``snapshot_from_*``
helpers turn what a source delivers (JSON array, CSV cell) into a snapshot.
"""

from __future__ import annotations

from fedge.features.schema import feature_columns, forward_fill, non_numeric_features
from fedge.features.snapshot import snapshot_from_csv_field, snapshot_from_json
from fedge.features.vibration import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MIN_SAMPLES,
    STANDARD_GRAVITY,
    VibrationConfig,
    feature_names,
    vibration_features,
)

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_MIN_SAMPLES",
    "STANDARD_GRAVITY",
    "VibrationConfig",
    "feature_columns",
    "feature_names",
    "forward_fill",
    "non_numeric_features",
    "snapshot_from_csv_field",
    "snapshot_from_json",
    "vibration_features",
]
