"""Sources are plugins: entry points in the ``fedge.sources`` group, found by kind."""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources import BaseSource, source_from_table
from edge_agent.sources.registry import (
    SOURCE_GROUP,
    available_sources,
    load_source_class,
    open_source,
    source_kinds,
)
from fedge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BUILTINS = ("simulated", "cmapss", "csv", "command", "mqtt", "modbus", "opcua")

PLUGIN = '''
"""A third-party source: a counter with a configurable step."""
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from edge_agent.sources.base import BaseSource, SensorSample, SourceOptions, expect_options


class CounterOptions(SourceOptions):
    step: float = 1.0


class CounterSource(BaseSource):
    kind: ClassVar[str] = "thirdparty"
    Options: ClassVar[type[BaseModel]] = CounterOptions

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step
        self.n = 0

    @classmethod
    def from_model(cls, options, *, seed):
        return cls(expect_options(options, CounterOptions).step)

    @property
    def sensor_names(self):
        return ("count",)

    def read(self):
        self.n += 1
        return SensorSample(values=np.array([self.n * self.step]))
'''


def _install(site: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution: what pip leaves in site-packages."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{SOURCE_GROUP}]\n{lines}\n")
    for name, code in modules.items():
        (site / f"{name}.py").write_text(code)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    _install(
        site,
        "fedge_thirdparty",
        {
            "thirdparty": "fedge_thirdparty_source:CounterSource",
            "broken": "fedge_broken_source:Source",
            "notasource": "fedge_thirdparty_source:CounterOptions",
            "wrongkind": "fedge_thirdparty_source:CounterSource",
        },
        {
            "fedge_thirdparty_source": PLUGIN,
            "fedge_broken_source": "import fedge_no_such_dependency\n",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    importlib.invalidate_caches()


def test_a_third_party_plugin_is_found_and_built(plugin_site: Path) -> None:
    assert "thirdparty" in source_kinds()
    src = open_source("thirdparty", {"step": 2.5})
    assert isinstance(src, BaseSource)
    assert src.sensor_names == ("count",)
    first, second = src.read(), src.read()
    assert first is not None and second is not None
    np.testing.assert_array_equal(second.values, [5.0])
    table = source_from_table({"kind": "thirdparty", "step": 0.5})
    sample = table.read()
    assert sample is not None and sample.values[0] == 0.5


def test_plugin_options_are_validated(plugin_site: Path) -> None:
    with pytest.raises(ConfigError, match=r"source 'thirdparty': step: Input should be"):
        open_source("thirdparty", {"step": "fast"})


def test_a_plugin_that_fails_to_import_is_named(plugin_site: Path) -> None:
    with pytest.raises(ConfigError, match=r"source plugin 'broken' .* failed to import"):
        open_source("broken", {})
    with pytest.raises(ConfigError, match="not a BaseSource subclass"):
        load_source_class("notasource")
    with pytest.raises(ConfigError, match="entry point name and kind must match"):
        load_source_class("wrongkind")


def test_available_sources_skips_broken_plugins(
    plugin_site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    found = available_sources()
    assert found["thirdparty"].kind == "thirdparty"
    assert "broken" not in found and "notasource" not in found
    assert "failed to import" in caplog.text


def test_unknown_kind_lists_the_available_ones(plugin_site: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown source kind 'serial'; available: .*thirdparty"):
        open_source("serial", {})
    with pytest.raises(ConfigError, match=r"\[source\] needs kind"):
        source_from_table({"path": "x.csv"})


def _pyproject_entry_points() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries: dict[str, str] = data["project"]["entry-points"][SOURCE_GROUP]
    return entries


def test_pyproject_registers_every_builtin_to_a_class_of_that_kind() -> None:
    entries = _pyproject_entry_points()
    assert set(entries) == set(BUILTINS)
    for kind, target in entries.items():
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert issubclass(cls, BaseSource)
        assert cls.kind == kind


def test_every_builtin_kind_is_installed() -> None:
    # Reads the installed distribution's entry points: passes once fedge is
    # (re)installed from this pyproject (pip install -e .).
    assert set(BUILTINS) <= set(available_sources())
