"""fedge's three Grafana dashboards and their provisioning files, built from code.

* **fleet overview** (``fedge-fleet``): devices online, device status, RUL ranking,
  predictions, health scores, alerts, ingestion rate.
* **device drill-down** (``fedge-device``): one ``$device`` — sensors, predictions,
  health score, alerts, latest readings.

Both mark maintenance events (the ``event`` measurement) on every time panel as
annotations: failures in red, repairs and replacements in green, with the note as
text and kind and device as tags.
* **federated training** (``fedge-training``): rounds, participants, loss and
  validation error, rejected updates by reason, bytes, durations.

All queries are InfluxQL over the schema in :mod:`fedge.points`, filtered by the
``$fleet`` variable and Grafana's ``$timeFilter``/``$__interval`` macros. The
datasource is provisioned with uid ``fedge-influxdb`` from environment variables
(``INFLUX_URL``, ``INFLUX_DB``, ``INFLUX_USER``, ``INFLUX_PASSWORD``); for InfluxDB
2.x use the v1-compatible DBRP mapping and put an API token in ``INFLUX_PASSWORD``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from dashboards.builder import (
    DATASOURCE_UID,
    Annotation,
    Dashboard,
    Panel,
    Row,
    Target,
    Variable,
    stat,
    table,
    timeseries,
)

__all__ = [
    "all_queries",
    "annotation_queries",
    "dashboards",
    "device_dashboard",
    "export_dashboards",
    "fleet_dashboard",
    "influxql",
    "training_dashboard",
    "variable_queries",
]

FLEET = '"fleet" =~ /^$fleet$/'
DEVICE = '"device" =~ /^$device$/'
TIME = "$timeFilter"
FLEET_TIME = (FLEET, TIME)
DEVICE_TIME = (FLEET, DEVICE, TIME)
INTERVAL = "time($__interval)"


def influxql(
    select: str,
    source: str,
    *,
    where: Sequence[str] = FLEET_TIME,
    group_by: str = "",
    tail: str = "",
) -> str:
    """Assemble one InfluxQL SELECT (the dashboards' only query shape)."""
    parts = ["SELECT", select, "FROM", source]
    if where:
        parts += ["WHERE", " AND ".join(where)]
    if group_by:
        parts += ["GROUP BY", group_by]
    if tail:
        parts.append(tail)
    return " ".join(parts)


FLEET_VAR = Variable(
    "fleet", 'SHOW TAG VALUES WITH KEY = "fleet"', label="Fleet", multi=True, include_all=True
)
DEVICE_VAR = Variable(
    "device",
    'SHOW TAG VALUES FROM "telemetry" WITH KEY = "device" WHERE ' + FLEET,
    label="Device",
)

ONLINE_MAPPINGS = (("1", "online", "green"), ("0", "offline", "red"))
RUL_THRESHOLDS = ((None, "red"), (30.0, "orange"), (60.0, "green"))
PROB_THRESHOLDS = ((None, "green"), (0.3, "orange"), (0.6, "red"))
HEALTH_THRESHOLDS = ((None, "red"), (0.5, "orange"), (0.8, "green"))
NO_TIME_COLUMN = ({"id": "organize", "options": {"excludeByName": {"Time": True}}},)


def _hide(pattern: str) -> dict[str, object]:
    """Override hiding the series whose name matches ``pattern`` (e.g. counters)."""
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [
            {"id": "custom.hideFrom", "value": {"legend": True, "tooltip": True, "viz": True}}
        ],
    }


def _drill_down_link(column: str) -> dict[str, object]:
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [
            {
                "id": "links",
                "value": [
                    {
                        "title": "Open device ${__value.raw}",
                        "url": "/d/fedge-device/fedge-device?var-fleet=${fleet}"
                        "&var-device=${__value.raw}&${__url_time_range}",
                    }
                ],
            }
        ],
    }


def _event_annotations(where: Sequence[str]) -> tuple[Annotation, ...]:
    """Failures (red) and repairs/replacements (green) from the ``event`` measurement."""

    def query(kind: str) -> str:
        return influxql('"note", "kind", "device", "source"', '"event"', where=(*where, kind, TIME))

    return (
        Annotation(
            "Failures",
            query("\"kind\" = 'failure'"),
            text_column="note",
            tags_column="kind,device",
            icon_color="red",
        ),
        Annotation(
            "Repairs and replacements",
            query("\"kind\" != 'failure'"),
            text_column="note",
            tags_column="kind,device",
            icon_color="green",
        ),
    )


def _per_device(select: str, source: str, fill: str) -> Target:
    """One series per device, aggregated per ``$__interval``."""
    return Target(
        influxql(select, source, group_by=f'{INTERVAL}, "device" fill({fill})'),
        alias="$tag_device",
    )


def fleet_dashboard() -> Dashboard:
    """Fleet overview: health, RUL ranking, alerts."""
    last_online = influxql('last("online") AS "online"', '"device_health"', group_by='"device"')
    last_rul = influxql('last("rul") AS "rul"', '"prediction"', group_by='"device"')
    items: tuple[Panel | Row, ...] = (
        Row("Fleet health"),
        stat(
            "Devices online",
            influxql('sum("online")', f"({last_online})", where=()),
            thresholds=((None, "red"), (1.0, "green")),
        ),
        stat("Devices reporting", influxql('count("online")', f"({last_online})", where=())),
        stat(
            "Alerts in range",
            influxql('count("rul")', '"alert"'),
            thresholds=((None, "green"), (1.0, "red")),
        ),
        stat(
            "Lowest predicted RUL",
            influxql('min("rul")', f"({last_rul})", where=()),
            decimals=0,
            thresholds=RUL_THRESHOLDS,
        ),
        stat("Readings ingested", influxql('count("seq")', '"telemetry"')),
        stat("Global model version", influxql('last("version")', '"fl_round"')),
        table(
            "Device status",
            influxql(
                'last("online") AS "online", last("buffer_depth") AS "buffer_depth", '
                'last("model_version") AS "model_version", '
                'last("refused_model_version") AS "last_refused_model", '
                'last("cpu_percent") AS "cpu_percent", last("memory_mb") AS "memory_mb"',
                '"device_health"',
                group_by='"device"',
            ),
            width=12,
            mappings=ONLINE_MAPPINGS,
            overrides=(_drill_down_link("device"),),
            transformations=NO_TIME_COLUMN,
        ),
        Panel(
            "Online over time",
            "state-timeline",
            (_per_device('last("online")', '"device_health"', "previous"),),
            width=12,
            mappings=ONLINE_MAPPINGS,
            options={"showValue": "never", "mergeValues": True},
        ),
        Row("Predictions"),
        table(
            "RUL ranking (lowest first)",
            influxql(
                'last("rul") AS "rul", last("failure_probability") AS "failure_probability", '
                'last("model_version") AS "model_version"',
                '"prediction"',
                group_by='"device"',
            ),
            width=8,
            height=10,
            overrides=(_drill_down_link("device"),),
            options={"sortBy": [{"displayName": "rul", "desc": False}]},
            transformations=NO_TIME_COLUMN,
        ),
        timeseries(
            "Predicted RUL",
            _per_device('mean("rul")', '"prediction"', "none"),
            width=8,
            height=10,
        ),
        timeseries(
            "Failure probability",
            _per_device('max("failure_probability")', '"prediction"', "none"),
            width=8,
            height=10,
            unit="percentunit",
            min=0.0,
            max=1.0,
            thresholds=PROB_THRESHOLDS,
        ),
        timeseries(
            "Health score",
            _per_device('mean("health")', '"prediction"', "none"),
            width=24,
            min=0.0,
            max=1.0,
            thresholds=HEALTH_THRESHOLDS,
            description="1 = like the start of the current life, 0.5 = anomaly threshold.",
        ),
        Row("Alerts"),
        table(
            "Recent alerts",
            influxql(
                '"device", "kind", "rul", "failure_probability", "message"',
                '"alert"',
                tail="ORDER BY time DESC LIMIT 100",
            ),
            width=14,
            overrides=(_drill_down_link("device"),),
        ),
        timeseries(
            "Alerts per interval",
            _per_device('count("rul")', '"alert"', "0"),
            width=10,
            custom={"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}},
        ),
        Row("Ingestion"),
        timeseries("Readings per interval", _per_device('count("seq")', '"telemetry"', "0")),
        timeseries(
            "Agent buffer depth",
            _per_device('max("buffer_depth")', '"device_health"', "previous"),
            description="Readings waiting on the device (grows while the broker is unreachable).",
        ),
    )
    return Dashboard(
        uid="fedge-fleet",
        title="fedge — fleet overview",
        description="Fleet health, predicted remaining useful life and alerts.",
        items=items,
        variables=(FLEET_VAR,),
        annotations=_event_annotations((FLEET,)),
    )


def _device_series(select: str, source: str, fill: str, alias: str) -> Target:
    return Target(
        influxql(select, source, where=DEVICE_TIME, group_by=f"{INTERVAL} fill({fill})"),
        alias=alias,
    )


def device_dashboard() -> Dashboard:
    """Device drill-down: one ``$device``'s sensors, predictions and health."""

    def last(field: str, source: str) -> str:
        return influxql(f'last("{field}")', source, where=DEVICE_TIME)

    items: tuple[Panel | Row, ...] = (
        stat("State", last("online", '"device_health"'), mappings=ONLINE_MAPPINGS),
        stat(
            "Predicted RUL",
            last("rul", '"prediction"'),
            decimals=0,
            thresholds=RUL_THRESHOLDS,
        ),
        stat(
            "Failure probability",
            last("failure_probability", '"prediction"'),
            unit="percentunit",
            thresholds=PROB_THRESHOLDS,
        ),
        stat("Model version", last("model_version", '"prediction"')),
        stat("Cycle", last("cycle", '"telemetry"')),
        stat("Buffer depth", last("buffer_depth", '"device_health"')),
        timeseries(
            "Sensors",
            _device_series("mean(*)", '"telemetry"', "none", "$col"),
            width=24,
            height=10,
            # seq and cycle are counters, not sensors: keep them off the plot.
            overrides=(_hide("^mean_(seq|cycle)$"),),
        ),
        timeseries(
            "Predicted RUL and failure probability",
            _device_series('mean("rul")', '"prediction"', "none", "RUL"),
            _device_series(
                'mean("failure_probability")', '"prediction"', "none", "failure probability"
            ),
            overrides=(
                {
                    "matcher": {"id": "byName", "options": "failure probability"},
                    "properties": [
                        {"id": "unit", "value": "percentunit"},
                        {"id": "custom.axisPlacement", "value": "right"},
                    ],
                },
            ),
        ),
        timeseries(
            "Health score",
            _device_series('mean("health")', '"prediction"', "none", "health"),
            min=0.0,
            max=1.0,
            thresholds=HEALTH_THRESHOLDS,
            description="1 = like the start of the current life, 0.5 = anomaly threshold.",
        ),
        timeseries(
            "Readings per interval",
            _device_series('count("seq")', '"telemetry"', "0", "readings"),
        ),
        timeseries(
            "Agent CPU and memory",
            _device_series('mean("cpu_percent")', '"device_health"', "previous", "cpu %"),
            _device_series('mean("memory_mb")', '"device_health"', "previous", "memory MB"),
        ),
        table(
            "Alerts",
            influxql(
                '"kind", "rul", "failure_probability", "message"',
                '"alert"',
                where=DEVICE_TIME,
                tail="ORDER BY time DESC LIMIT 50",
            ),
        ),
        table(
            "Latest readings",
            influxql("*", '"telemetry"', where=DEVICE_TIME, tail="ORDER BY time DESC LIMIT 20"),
            width=24,
        ),
    )
    return Dashboard(
        uid="fedge-device",
        title="fedge — device drill-down",
        description="Sensors, predictions and agent health of one device.",
        items=items,
        variables=(FLEET_VAR, DEVICE_VAR),
        annotations=_event_annotations((FLEET, DEVICE)),
    )


def training_dashboard() -> Dashboard:
    """Federated training: rounds, participants, loss/error, rejections, bytes."""

    def rounds(select: str, **kwargs: str) -> str:
        return influxql(select, '"fl_round"', **kwargs)

    def by_outcome(outcome: str) -> str:
        return influxql(
            'count("round_id")', '"fl_round"', where=(FLEET, f"\"outcome\" = '{outcome}'", TIME)
        )

    items: tuple[Panel | Row, ...] = (
        stat("Rounds completed", by_outcome("completed")),
        stat(
            "Rounds failed",
            by_outcome("failed"),
            thresholds=((None, "green"), (1.0, "orange")),
        ),
        stat("Global model version", rounds('last("version")')),
        stat("Last round participants", rounds('last("participants")')),
        stat("Last validation error", rounds('last("val_error")'), decimals=2),
        stat("Updates rejected", rounds('sum("rejected")')),
        timeseries(
            "Participants and rejected updates per round",
            rounds('"participants", "rejected"'),
            custom={"drawStyle": "bars", "fillOpacity": 70},
        ),
        timeseries(
            "Training loss and validation error",
            rounds('"train_loss", "val_error"'),
            custom={"showPoints": "always"},
        ),
        timeseries(
            "Rejected updates by reason",
            Target(rounds("sum(/^rejected_/)", group_by=f"{INTERVAL} fill(none)"), alias="$col"),
            custom={"drawStyle": "bars", "stacking": {"mode": "normal"}, "fillOpacity": 80},
        ),
        timeseries(
            "Privacy budget spent (ε at the configured δ) and clipped updates",
            rounds('"dp_epsilon", "dp_epsilon_local", "clipped"'),
            custom={"showPoints": "always"},
        ),
        timeseries(
            "Update bytes received per round",
            rounds('"bytes_received"'),
            unit="bytes",
            custom={"drawStyle": "bars", "fillOpacity": 70},
        ),
        timeseries(
            "Round duration",
            rounds('"duration_s"'),
            unit="s",
            custom={"showPoints": "always"},
        ),
        timeseries(
            "Examples per round",
            rounds('"num_examples", "val_examples"'),
            custom={"showPoints": "always"},
        ),
        table(
            "Rounds",
            rounds(
                '"round_id", "task", "outcome", "version", "participants", "rejected", '
                '"num_examples", "train_loss", "val_error", "bytes_received", "duration_s"',
                tail="ORDER BY time DESC LIMIT 50",
            ),
            width=24,
            height=10,
        ),
    )
    return Dashboard(
        uid="fedge-training",
        title="fedge — federated training",
        description="Rounds, participants, loss and validation error, rejected updates.",
        items=items,
        variables=(FLEET_VAR,),
    )


def dashboards() -> list[Dashboard]:
    """All fedge dashboards."""
    return [fleet_dashboard(), device_dashboard(), training_dashboard()]


def all_queries() -> list[tuple[str, str, str]]:
    """``(dashboard uid, panel title, InfluxQL)`` for every panel target."""
    return [(d.uid, title, query) for d in dashboards() for title, query in d.queries()]


def annotation_queries() -> list[tuple[str, str, str]]:
    """``(dashboard uid, annotation name, InfluxQL)`` for every annotation query."""
    return [(d.uid, a.name, a.query) for d in dashboards() for a in d.annotations]


def variable_queries() -> list[tuple[str, str, str]]:
    """``(dashboard uid, variable name, InfluxQL)`` for every template variable."""
    return [(d.uid, v.name, v.query) for d in dashboards() for v in d.variables]


DATASOURCE_YAML = f"""\
# Generated by dashboards.fleet.export_dashboards; edit the code, not this file.
# Grafana substitutes ${{VAR}} from its environment at startup.
apiVersion: 1
datasources:
  - name: fedge InfluxDB
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: ${{INFLUX_URL}}
    user: ${{INFLUX_USER}}
    isDefault: true
    editable: false
    jsonData:
      dbName: ${{INFLUX_DB}}
      httpMode: POST
      timeInterval: 10s
    secureJsonData:
      password: ${{INFLUX_PASSWORD}}
"""


def _provider_yaml(dashboards_path: str) -> str:
    return f"""\
# Generated by dashboards.fleet.export_dashboards; edit the code, not this file.
apiVersion: 1
providers:
  - name: fedge
    orgId: 1
    folder: fedge
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 30
    options:
      path: {json.dumps(dashboards_path)}
      foldersFromFilesStructure: false
"""


def export_dashboards(out_dir: Path, *, dashboards_path: str | None = None) -> list[Path]:
    """Write the dashboards and Grafana provisioning files under ``out_dir``.

    Layout: ``dashboards/<uid>.json``, ``provisioning/datasources/fedge.yaml``,
    ``provisioning/dashboards/fedge.yaml``. ``dashboards_path`` is where Grafana
    will find the JSON files (default: the absolute path written here).
    """
    out_dir = Path(out_dir)
    json_dir = out_dir / "dashboards"
    ds_dir = out_dir / "provisioning" / "datasources"
    provider_dir = out_dir / "provisioning" / "dashboards"
    for directory in (json_dir, ds_dir, provider_dir):
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in dashboards():
        path = json_dir / f"{dashboard.uid}.json"
        path.write_text(json.dumps(dashboard.to_json(), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    ds_path = ds_dir / "fedge.yaml"
    ds_path.write_text(DATASOURCE_YAML, encoding="utf-8")
    provider_path = provider_dir / "fedge.yaml"
    provider_path.write_text(
        _provider_yaml(dashboards_path or str(json_dir.resolve())), encoding="utf-8"
    )
    return [*written, ds_path, provider_path]
