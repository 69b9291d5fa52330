"""The ``cmapss`` source: NASA C-MAPSS training engines replayed as this machine.

All but the last of the selected engines (``engines = "1-10"``) are history, run to
failure, handed to the agent at start; the last one is streamed live, cycle by cycle,
and reported failed at its last cycle. Features are the subset's informative sensors,
with the three operational settings in front for the multi-regime subsets (FD002,
FD004), exactly as ``fedge.data.cmapss.unit_runs`` gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, StringConstraints, field_validator, model_validator

from edge_agent.sources.base import SourceOptions, expect_options
from edge_agent.sources.replay import ReplaySensorSource
from fedge.data.cmapss import (
    feature_names,
    informative_sensors,
    load_subset,
    operating_regimes,
    unit_runs,
)
from fedge.errors import ConfigError

__all__ = ["CmapssOptions", "CmapssSource", "cmapss_source"]


class CmapssOptions(SourceOptions):
    """Where the C-MAPSS text files are, which subset, which training engines."""

    path: Path
    subset: Literal["FD001", "FD002", "FD003", "FD004"] = "FD001"
    engines: Annotated[str, StringConstraints(pattern=r"^\d{1,4}(-\d{1,4})?$")] = "1-10"
    loop: bool = False

    @field_validator("subset", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _range(self) -> Self:
        first, last = self.engine_range
        if first < 1 or last < first:
            raise ValueError(f"engines {self.engines!r}: need FIRST-LAST, 1 <= FIRST <= LAST")
        return self

    @property
    def engine_range(self) -> tuple[int, int]:
        """``(first, last)`` engine numbers, inclusive."""
        first, _, last = self.engines.partition("-")
        return int(first), int(last or first)


class CmapssSource(ReplaySensorSource):
    """A replay of C-MAPSS training engines: history, then the last engine live."""

    kind: ClassVar[str] = "cmapss"
    Options: ClassVar[type[BaseModel]] = CmapssOptions

    @classmethod
    def from_model(cls, options: BaseModel, *, seed: int) -> Self:
        opts = expect_options(options, CmapssOptions)
        data = load_subset(opts.path, opts.subset)
        sensors = informative_sensors(data.train)
        multi = len(operating_regimes(data.train)) > 1
        first, last = opts.engine_range
        runs = [
            r
            for r in unit_runs(data.train, sensor_indices=sensors, with_settings=multi)
            if first <= r.unit <= last
        ]
        if len(runs) < 2:
            raise ConfigError(
                f"source 'cmapss': engines {opts.engines!r} selects {len(runs)} engines of "
                f"{opts.subset}; need at least 2 (history and one live)"
            )
        return cls(
            sensor_names=feature_names(sensors, with_settings=multi),
            history=runs[:-1],
            live=runs[-1:],
            loop=opts.loop,
        )


def cmapss_source(directory: Path, subset: str = "FD001", engines: str = "1-10") -> CmapssSource:
    """The ``cmapss`` source from CLI-style arguments (ConfigError naming a bad one)."""
    return CmapssSource.from_options({"path": directory, "subset": subset, "engines": engines})
