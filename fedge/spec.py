"""The fleet's model architecture, :class:`ModelSpec`: it travels in global model frames
and in round announcements, so it lives below both :mod:`fedge.messages` and
:mod:`fedge.config` (which re-exports it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MAX_BASELINE_CYCLES", "ModelSpec"]

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
