"""A tiny builder for Grafana dashboards with InfluxQL targets (schemaVersion 39).

Dashboards are Python values (:class:`Dashboard`, :class:`Panel`, :class:`Target`,
:class:`Variable`) rendered to Grafana's JSON by :meth:`Dashboard.to_json`, so
they can be reviewed as code and every query can be tested against a real
InfluxDB (see ``tests/integration/test_dashboards.py``).

Panels are laid out left to right on Grafana's 24-column grid, wrapping to a new
line when a panel does not fit; a :class:`Row` always starts a new line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fedge.errors import ConfigError

__all__ = [
    "DATASOURCE",
    "DATASOURCE_UID",
    "SCHEMA_VERSION",
    "Annotation",
    "Dashboard",
    "Panel",
    "Row",
    "Target",
    "Variable",
    "stat",
    "table",
    "timeseries",
]

SCHEMA_VERSION = 39
DATASOURCE_UID = "fedge-influxdb"
"""uid of the provisioned InfluxDB (InfluxQL) datasource every panel uses."""
DATASOURCE: Mapping[str, str] = {"type": "influxdb", "uid": DATASOURCE_UID}

GRID_WIDTH = 24
PanelKind = Literal["timeseries", "stat", "table", "state-timeline", "bargauge"]
Json = dict[str, Any]


def _datasource() -> Json:
    return dict(DATASOURCE)


@dataclass(frozen=True, slots=True)
class Target:
    """One InfluxQL query of a panel (raw mode).

    ``alias`` may use Grafana's InfluxQL alias patterns such as ``$tag_device``.
    """

    query: str
    alias: str | None = None
    result_format: Literal["time_series", "table"] = "time_series"

    def to_json(self, ref_id: str) -> Json:
        out: Json = {
            "refId": ref_id,
            "datasource": _datasource(),
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias is not None:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True, slots=True)
class Variable:
    """A query template variable, e.g. ``$device`` from ``SHOW TAG VALUES``.

    ``refresh=1`` reloads options when the dashboard loads, ``2`` on time-range change.
    """

    name: str
    query: str
    label: str | None = None
    multi: bool = False
    include_all: bool = False
    refresh: Literal[1, 2] = 1

    def to_json(self) -> Json:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "type": "query",
            "datasource": _datasource(),
            "query": self.query,
            "definition": self.query,
            "refresh": self.refresh,
            "multi": self.multi,
            "includeAll": self.include_all,
            "allValue": ".*" if self.include_all else None,
            "sort": 1,
            "regex": "",
            "hide": 0,
            "skipUrlSync": False,
            "current": {},
            "options": [],
        }


@dataclass(frozen=True, slots=True)
class Annotation:
    """An InfluxQL annotation query: one marker per row of ``query`` on every time panel.

    ``text_column`` is shown when hovering a marker, ``tags_column`` (comma-separated
    columns) become its tags. The query must contain ``$timeFilter``.
    """

    name: str
    query: str
    text_column: str
    tags_column: str = ""
    icon_color: str = "red"
    enable: bool = True

    def __post_init__(self) -> None:
        if "$timeFilter" not in self.query:
            raise ConfigError(f"annotation {self.name!r}: the query needs $timeFilter")

    def to_json(self) -> Json:
        # Grafana's InfluxDB plugin reads the query and column mappings either at the top
        # level (the classic form, which it migrates) or in ``target``: both are written.
        columns = {"textColumn": self.text_column, "tagsColumn": self.tags_column}
        return {
            "name": self.name,
            "datasource": _datasource(),
            "enable": self.enable,
            "hide": False,
            "iconColor": self.icon_color,
            "query": self.query,
            **columns,
            "target": {
                "refId": "Anno",
                "query": self.query,
                "rawQuery": True,
                "fromAnnotations": True,
                "textEditor": True,
                **columns,
            },
        }


@dataclass(frozen=True, slots=True)
class Row:
    """A row header; the panels after it belong to it."""

    title: str


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel. ``options``/``custom``/``overrides``/``transformations`` pass through.

    ``thresholds`` are ``(from_value, color)`` steps, the first with ``None``;
    ``mappings`` maps exact values to display text and color.
    """

    title: str
    kind: PanelKind
    targets: tuple[Target, ...]
    width: int = 12
    height: int = 8
    description: str = ""
    unit: str | None = None
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    thresholds: tuple[tuple[float | None, str], ...] = ()
    mappings: tuple[tuple[str, str, str], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    custom: Mapping[str, Any] = field(default_factory=dict)
    overrides: tuple[Mapping[str, Any], ...] = ()
    transformations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError(f"panel {self.title!r} has no targets")
        if not 1 <= self.width <= GRID_WIDTH:
            raise ConfigError(f"panel {self.title!r} width must be 1..{GRID_WIDTH}")

    def _field_defaults(self) -> Json:
        defaults: Json = {"custom": dict(self.custom)}
        for key in ("unit", "decimals", "min", "max"):
            value = getattr(self, key)
            if value is not None:
                defaults[key] = value
        if self.thresholds:
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [{"value": v, "color": c} for v, c in self.thresholds],
            }
        if self.mappings:
            defaults["mappings"] = [
                {
                    "type": "value",
                    "options": {
                        value: {"text": text, "color": color, "index": i}
                        for i, (value, text, color) in enumerate(self.mappings)
                    },
                }
            ]
        return defaults

    def to_json(self, panel_id: int, grid_pos: Json) -> Json:
        ref_ids = [chr(ord("A") + i) for i in range(len(self.targets))]
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": _datasource(),
            "gridPos": grid_pos,
            "targets": [t.to_json(r) for t, r in zip(self.targets, ref_ids, strict=True)],
            "fieldConfig": {
                "defaults": self._field_defaults(),
                "overrides": [dict(o) for o in self.overrides],
            },
            "options": dict(self.options),
            "transformations": [dict(t) for t in self.transformations],
        }


def _targets(queries: Sequence[str | Target]) -> tuple[Target, ...]:
    return tuple(q if isinstance(q, Target) else Target(q) for q in queries)


def timeseries(title: str, *queries: str | Target, **kwargs: Any) -> Panel:
    """A time-series panel (lines) with legend as a table of last/max values."""
    kwargs.setdefault(
        "options",
        {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )
    return Panel(title, "timeseries", _targets(queries), **kwargs)


def stat(title: str, query: str | Target, **kwargs: Any) -> Panel:
    """A single-value panel showing the last non-null value."""
    kwargs.setdefault("width", 4)
    kwargs.setdefault("height", 4)
    kwargs.setdefault(
        "options",
        {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value",
        },
    )
    return Panel(title, "stat", _targets([query]), **kwargs)


def table(title: str, query: str | Target, **kwargs: Any) -> Panel:
    """A table panel; plain-string queries use the ``table`` result format."""
    target = query if isinstance(query, Target) else Target(query, result_format="table")
    return Panel(title, "table", (target,), **kwargs)


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A dashboard: panels and rows in display order, template variables, metadata."""

    uid: str
    title: str
    items: tuple[Panel | Row, ...]
    variables: tuple[Variable, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    description: str = ""
    tags: tuple[str, ...] = ("fedge",)
    refresh: str = "30s"
    time_from: str = "now-6h"

    @property
    def panels(self) -> list[Panel]:
        """The panels (rows excluded), in order."""
        return [p for p in self.items if isinstance(p, Panel)]

    def queries(self) -> list[tuple[str, str]]:
        """``(panel title, query)`` for every target of every panel."""
        return [(p.title, t.query) for p in self.panels for t in p.targets]

    def _layout(self) -> list[Json]:
        out: list[Json] = []
        x = y = line_height = 0
        for panel_id, item in enumerate(self.items, start=1):
            if isinstance(item, Row):
                y += line_height
                x = line_height = 0
                out.append(
                    {
                        "id": panel_id,
                        "type": "row",
                        "title": item.title,
                        "collapsed": False,
                        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                        "panels": [],
                    }
                )
                y += 1
                continue
            if x + item.width > GRID_WIDTH:
                y += line_height
                x = line_height = 0
            grid = {"h": item.height, "w": item.width, "x": x, "y": y}
            out.append(item.to_json(panel_id, grid))
            x += item.width
            line_height = max(line_height, item.height)
        return out

    def to_json(self) -> Json:
        """Grafana dashboard JSON (as loaded by file provisioning)."""
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "timezone": "browser",
            "refresh": self.refresh,
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "links": [
                {
                    "type": "dashboards",
                    "title": "fedge",
                    "tags": ["fedge"],
                    "asDropdown": False,
                    "includeVars": True,
                    "keepTime": True,
                }
            ],
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    },
                    *(a.to_json() for a in self.annotations),
                ]
            },
            "templating": {"list": [v.to_json() for v in self.variables]},
            "panels": self._layout(),
        }
