"""Data for fedge: fleet simulator, NASA C-MAPSS loader, windows and feature stats.

Everything here is pure (no network I/O); the C-MAPSS loader only reads files.
"""

from __future__ import annotations

from fedge.data.cmapss import (
    SENSOR_COLUMNS,
    SUBSETS,
    CmapssPrepared,
    CmapssSubset,
    CmapssUnit,
    RegimeNormaliser,
    informative_sensors,
    load_subset,
    operating_regimes,
    prepare,
)
from fedge.data.context import (
    add_context,
    stats_rows,
    unit_baseline,
    unit_last_window,
    unit_windows,
)
from fedge.data.simulator import (
    FAULT_MODES,
    REGIME_NAMES,
    SENSOR_NAMES,
    MachineSimulator,
    SiteProfile,
    UnitRun,
    make_site_profiles,
)
from fedge.data.splits import split_iid, split_noniid
from fedge.data.windows import (
    DEFAULT_RUL_CAP,
    DEFAULT_WINDOW,
    FeatureStats,
    last_window,
    make_windows,
    rul_targets,
)

__all__ = [
    "DEFAULT_RUL_CAP",
    "DEFAULT_WINDOW",
    "FAULT_MODES",
    "REGIME_NAMES",
    "SENSOR_COLUMNS",
    "SENSOR_NAMES",
    "SUBSETS",
    "CmapssPrepared",
    "CmapssSubset",
    "CmapssUnit",
    "FeatureStats",
    "MachineSimulator",
    "RegimeNormaliser",
    "SiteProfile",
    "UnitRun",
    "add_context",
    "informative_sensors",
    "last_window",
    "load_subset",
    "make_site_profiles",
    "make_windows",
    "operating_regimes",
    "prepare",
    "rul_targets",
    "split_iid",
    "split_noniid",
    "stats_rows",
    "unit_baseline",
    "unit_last_window",
    "unit_windows",
]
