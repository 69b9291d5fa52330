"""Mapping a device's sensor channels onto the fleet model's named input features (pure).

The fleet's :class:`~fedge.spec.ModelSpec` lists its features by name; an agent's
source has channels with names of its own. ``mapping`` (the agent's ``[features]``
config, feature name -> channel name) says which channel feeds which feature; a
feature not in the mapping is read from the channel of the same name. The result is
the column of each feature in the source's channel order, so stored readings (kept in
channel order) can serve any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedge.errors import FeatureSchemaError, RejectReason
from fedge.spec import ModelSpec

__all__ = ["feature_columns", "forward_fill", "non_numeric_features"]


def feature_columns(
    spec: ModelSpec,
    channels: Sequence[str],
    *,
    mapping: Mapping[str, str] | None = None,
    device: str = "this device",
) -> tuple[int, ...]:
    """Column of each of ``spec``'s features in ``channels``, in the model's order.

    Raises FeatureSchemaError (reason ``missing_feature``) naming every feature that no
    channel provides, e.g. "device pump-03 lacks feature bearing_temp". A spec without
    names takes the channels by position and needs exactly ``spec.n_features`` of them.
    """
    names = spec.feature_names
    if names is None:
        if len(channels) != spec.n_features:
            raise FeatureSchemaError(
                RejectReason.MISSING_FEATURE,
                f"device {device} has {len(channels)} channels, the fleet model reads "
                f"{spec.n_features} by position (name its features to map them)",
                features=(),
            )
        return tuple(range(spec.n_features))
    mapping = mapping or {}
    index = {name: i for i, name in enumerate(channels)}
    columns: list[int] = []
    missing: list[str] = []
    for feature in names:
        column = index.get(mapping.get(feature, feature))
        if column is None:
            missing.append(feature)
        else:
            columns.append(column)
    if missing:
        what = "feature" if len(missing) == 1 else "features"
        raise FeatureSchemaError(
            RejectReason.MISSING_FEATURE,
            f"device {device} lacks {what} {', '.join(missing)}",
            features=tuple(missing),
        )
    return tuple(columns)


def non_numeric_features(values: np.ndarray, names: Sequence[str]) -> tuple[str, ...]:
    """The ``names`` whose column in ``values`` (rows x features) holds no finite number."""
    if values.shape[0] == 0:
        return ()
    finite = np.isfinite(values).any(axis=0)
    return tuple(name for name, ok in zip(names, finite, strict=True) if not ok)


def forward_fill(values: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last finite value above it in its column (rows = time).

    A source that reads channels at different rates leaves NaN where a channel had no
    fresh value; the machine's state is then best described by that channel's latest
    reading. NaNs before a column's first value stay NaN (the caller drops those rows).
    Returns ``values`` itself when it holds no NaN.
    """
    missing = np.isnan(values)
    if not missing.any():
        return values
    rows = np.arange(values.shape[0])[:, None]
    source = np.where(missing, 0, rows)
    np.maximum.accumulate(source, axis=0, out=source)
    filled = values[source, np.arange(values.shape[1])]
    # A leading NaN points at row 0 of its own column, itself NaN, so it stays NaN.
    return filled
