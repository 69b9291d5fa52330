"""The fleet's model architecture, :class:`ModelSpec`: it travels in global model frames
and in round announcements, so it lives below both :mod:`fedge.messages` and
:mod:`fedge.config` (which re-exports it).

The model declares its input features **by name** (:class:`FeatureSpec`); each device
maps its sensor channels onto those names (:func:`fedge.features.schema.feature_columns`).
A spec without names (``features=None``) reads a device's channels by position, which
only suits replayed datasets whose channel order is fixed.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = ["MAX_BASELINE_CYCLES", "FeatureSpec", "ModelSpec", "feature_specs"]

FeatureName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


class FeatureSpec(BaseModel):
    """One input feature of the fleet's model: its name and (for people) its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: FeatureName
    unit: Annotated[str, Field(max_length=32)] | None = None


def feature_specs(names: tuple[str, ...], units: dict[str, str] | None = None) -> tuple[
    FeatureSpec, ...
]:
    """Feature specs for ``names`` in order, with units where ``units`` knows them."""
    units = units or {}
    return tuple(FeatureSpec(name=n, unit=units.get(n)) for n in names)

# A device keeps the first readings of every unit (never pruned) to compute the
# unit's baseline; this is how many, hence the upper bound of ``baseline_cycles``.
MAX_BASELINE_CYCLES = 64


class ModelSpec(BaseModel):
    """The architecture of the fleet's model and the inputs it reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["cnn", "gru"] = "cnn"
    n_features: Annotated[int, Field(ge=1, le=256)] = 14
    window: Annotated[int, Field(ge=4, le=512)] = 30
    hidden: Annotated[int, Field(ge=4, le=256)] = 32
    rul_cap: Annotated[float, Field(gt=0)] = 125.0
    horizon: Annotated[int, Field(ge=1)] = 30
    # What the model sees besides the window (see fedge/data/context.py):
    # "window" is the window alone; "history" adds, at every time step, the unit's
    # baseline (mean of its first `baseline_cycles` readings) and its age in cycles,
    # which the model turns into drift rates. "history" is for machines that run in
    # one operating regime (C-MAPSS FD001/FD003: validation RMSE 15.1 -> 11.3); a
    # baseline averaged over mixed regimes misleads.
    context: Literal["window", "history"] = "window"
    baseline_cycles: Annotated[int, Field(ge=1, le=MAX_BASELINE_CYCLES)] = 20
    # "cnn" model only (see fedge/models/cnn.py for why these values):
    # learnt temporal filters shared by all sensors,
    filters: Annotated[int, Field(ge=1, le=64)] = 8
    # dropout on the filter outputs,
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    # training-time random per-sensor offset (in standard deviations) added to each window.
    offset_noise: Annotated[float, Field(ge=0.0, le=10.0)] = 0.3
    # The input features by name, in the model's order (len == n_features), or None to
    # read a device's channels by position.
    features: Annotated[tuple[FeatureSpec, ...], Field(max_length=256)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _count_named_features(cls, data: object) -> object:
        # A spec that names its features need not count them too.
        if isinstance(data, dict) and data.get("features") and "n_features" not in data:
            return {**data, "n_features": len(data["features"])}
        return data

    @model_validator(mode="after")
    def _features_match(self) -> Self:
        if self.features is not None:
            names = [f.name for f in self.features]
            if len(names) != self.n_features:
                raise ValueError(
                    f"features lists {len(names)} names but n_features is {self.n_features}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"feature names repeat: {names}")
        return self

    @property
    def feature_names(self) -> tuple[str, ...] | None:
        """The input features by name, or None when the spec reads channels by position."""
        return None if self.features is None else tuple(f.name for f in self.features)

    @property
    def input_features(self) -> int:
        """Width of one time step of the model's input (sensors, then context)."""
        return self.n_features if self.context == "window" else 2 * self.n_features + 1

    @property
    def model_features(self) -> int:
        """Width of one time step after the model's input transform."""
        return 2 * self.n_features if self.context == "history" else self.n_features

    @property
    def stats_features(self) -> int:
        """Width of the rows the federated statistics round summarises.

        Sensors, plus the age with ``history`` context. The baseline needs no
        statistics of its own: it is normalised with the sensors' mean and
        standard deviation, so a calibration offset shifts the reading and the
        baseline alike and their difference stays meaningful.
        """
        return self.n_features if self.context == "window" else self.n_features + 1
