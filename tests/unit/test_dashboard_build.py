"""Dashboards are built from code: structure, layout, queries and provisioning files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboards import all_queries, dashboards, export_dashboards, variable_queries
from dashboards.builder import DATASOURCE_UID, SCHEMA_VERSION, Dashboard, Panel, Row, Target
from fedge.errors import ConfigError


def test_three_dashboards_with_expected_uids() -> None:
    assert [d.uid for d in dashboards()] == ["fedge-fleet", "fedge-device", "fedge-training"]


@pytest.mark.parametrize("dashboard", dashboards(), ids=lambda d: d.uid)
def test_dashboard_json_is_well_formed(dashboard: Dashboard) -> None:
    doc = json.loads(json.dumps(dashboard.to_json()))  # JSON-serialisable
    assert doc["schemaVersion"] == SCHEMA_VERSION and doc["uid"] == dashboard.uid
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["rawQuery"] is True
            assert target["datasource"]["uid"] == DATASOURCE_UID
            assert target["query"].startswith("SELECT ")
            assert "$timeFilter" in target["query"]
            assert '"fleet" =~ /^$fleet$/' in target["query"]
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names[0] == "fleet"


def test_device_dashboard_has_device_variable_from_telemetry_tags() -> None:
    device = next(d for d in dashboards() if d.uid == "fedge-device")
    (var,) = [v for v in device.variables if v.name == "device"]
    assert var.query.startswith('SHOW TAG VALUES FROM "telemetry" WITH KEY = "device"')
    assert all("$device" in q for _, q in device.queries())


def test_all_queries_cover_every_target_and_use_interval_macro() -> None:
    queries = all_queries()
    targets = sum(len(p.targets) for d in dashboards() for p in d.panels)
    assert len(queries) == targets > 30
    assert any("GROUP BY time($__interval)" in q for _, _, q in queries)
    assert {d for d, _, _ in variable_queries()} == {
        "fedge-fleet",
        "fedge-device",
        "fedge-training",
    }


def test_export_writes_dashboards_and_provisioning(tmp_path: Path) -> None:
    paths = export_dashboards(tmp_path / "grafana")
    names = sorted(str(p.relative_to(tmp_path / "grafana")) for p in paths)
    assert names == [
        "dashboards/fedge-device.json",
        "dashboards/fedge-fleet.json",
        "dashboards/fedge-training.json",
        "provisioning/dashboards/fedge.yaml",
        "provisioning/datasources/fedge.yaml",
    ]
    fleet = json.loads((tmp_path / "grafana/dashboards/fedge-fleet.json").read_text())
    assert fleet["uid"] == "fedge-fleet"
    datasource = (tmp_path / "grafana/provisioning/datasources/fedge.yaml").read_text()
    for needle in (
        "type: influxdb",
        f"uid: {DATASOURCE_UID}",
        "url: ${INFLUX_URL}",
        "dbName: ${INFLUX_DB}",
        "user: ${INFLUX_USER}",
        "password: ${INFLUX_PASSWORD}",
    ):
        assert needle in datasource
    provider = (tmp_path / "grafana/provisioning/dashboards/fedge.yaml").read_text()
    assert f'path: "{(tmp_path / "grafana/dashboards").resolve()}"' in provider
    custom = export_dashboards(tmp_path / "other", dashboards_path="/var/lib/grafana/fedge")
    assert 'path: "/var/lib/grafana/fedge"' in custom[-1].read_text()


def test_builder_layout_wraps_and_rows_start_new_lines() -> None:
    q = Target('SELECT last("v") FROM "m" WHERE $timeFilter')
    dash = Dashboard(
        uid="t",
        title="t",
        items=(
            Panel("a", "stat", (q,), width=16, height=4),
            Panel("b", "stat", (q,), width=16, height=6),  # does not fit next to "a": wraps
            Row("r"),
            Panel("c", "stat", (q,), width=8, height=3),
        ),
    )
    pos = {p["title"]: p["gridPos"] for p in dash.to_json()["panels"]}
    assert pos["a"] == {"h": 4, "w": 16, "x": 0, "y": 0}
    assert pos["b"] == {"h": 6, "w": 16, "x": 0, "y": 4}
    assert pos["r"] == {"h": 1, "w": 24, "x": 0, "y": 10}
    assert pos["c"] == {"h": 3, "w": 8, "x": 0, "y": 11}


def test_builder_refuses_empty_or_oversized_panels() -> None:
    with pytest.raises(ConfigError):
        Panel("empty", "stat", ())
    with pytest.raises(ConfigError):
        Panel("wide", "stat", (Target("SELECT 1"),), width=25)


def test_fleet_and_device_dashboards_mark_maintenance_events() -> None:
    for dashboard in dashboards():
        listed = dashboard.to_json()["annotations"]["list"]
        assert listed[0]["builtIn"] == 1  # Grafana's own annotations stay first
        ours = listed[1:]
        if dashboard.uid == "fedge-training":
            assert ours == []
            continue
        assert [(a["name"], a["iconColor"]) for a in ours] == [
            ("Failures", "red"),
            ("Repairs and replacements", "green"),
        ]
        for a in ours:
            assert a["datasource"]["uid"] == DATASOURCE_UID and a["enable"] is True
            assert a["query"] == a["target"]["query"]
            assert a["query"].startswith('SELECT "note", "kind", "device", "source" FROM "event"')
            assert "$timeFilter" in a["query"] and '"fleet" =~ /^$fleet$/' in a["query"]
            assert ('"device" =~ /^$device$/' in a["query"]) == (dashboard.uid == "fedge-device")
            assert (a["textColumn"], a["tagsColumn"]) == ("note", "kind,device")


def test_annotation_without_time_filter_is_refused() -> None:
    from dashboards import Annotation

    with pytest.raises(ConfigError, match="needs \\$timeFilter"):
        Annotation("x", 'SELECT "note" FROM "event"', text_column="note")
