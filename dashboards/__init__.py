"""Grafana dashboards and provisioning for fedge, built from code.

``python -m dashboards OUT_DIR`` writes the dashboard JSON and the provisioning
files; see :func:`dashboards.fleet.export_dashboards`.
"""

from dashboards.builder import Annotation, Dashboard, Panel, Row, Target, Variable
from dashboards.fleet import (
    all_queries,
    annotation_queries,
    dashboards,
    device_dashboard,
    export_dashboards,
    fleet_dashboard,
    training_dashboard,
    variable_queries,
)

__all__ = [
    "Annotation",
    "Dashboard",
    "Panel",
    "Row",
    "Target",
    "Variable",
    "all_queries",
    "annotation_queries",
    "dashboards",
    "device_dashboard",
    "export_dashboards",
    "fleet_dashboard",
    "training_dashboard",
    "variable_queries",
]
