"""The example [source] configs in deploy/examples/ validate, and the README shows them."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from edge_agent.sources.base import BaseSource
from edge_agent.sources.registry import SOURCE_GROUP

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "examples"
# Sources whose construction reads data files that only exist on a real machine.
NEEDS_DATA = {"cmapss"}


def _builtins() -> dict[str, type[BaseSource]]:
    """The classes pyproject.toml registers, by kind (independent of what is installed)."""
    entries = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        SOURCE_GROUP
    ]
    out: dict[str, type[BaseSource]] = {}
    for kind, target in entries.items():
        module, _, attr = target.partition(":")
        out[kind] = getattr(importlib.import_module(module), attr)
    return out


BUILTINS = _builtins()


def test_every_builtin_kind_has_an_example() -> None:
    assert sorted(p.stem.removeprefix("source-") for p in EXAMPLES.glob("source-*.toml")) == sorted(
        BUILTINS
    )


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_example_validates(kind: str) -> None:
    table = tomllib.loads((EXAMPLES / f"source-{kind}.toml").read_text())["source"]
    options = dict(table)
    assert options.pop("kind") == kind
    cls = BUILTINS[kind]
    cls.Options.model_validate(options)  # raises on any bad field
    if kind in NEEDS_DATA:
        return
    src = cls.from_options(options)  # builds without connecting: nothing is started
    assert src.health().state == "starting"
    assert len(src.sensor_names) == len(set(src.sensor_names)) > 0


def test_csv_example_maps_the_snapshot_to_named_features() -> None:
    table = tomllib.loads((EXAMPLES / "source-csv.toml").read_text())["source"]
    src = BUILTINS["csv"].from_options({k: v for k, v in table.items() if k != "kind"})
    assert src.sensor_names == (
        "bearing_temp_c",
        "discharge_bar",
        "motor_current_a",
        "bearing_rms",
        "bearing_peak",
        "bearing_crest",
        "bearing_kurtosis",
        "bearing_band_10_1000_hz",
        "bearing_band_1000_5000_hz",
        "bearing_velocity_rms_mm_s",
    )


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_docs_show_the_example_verbatim(kind: str) -> None:
    docs = (ROOT / "README.md").read_text()
    example = (EXAMPLES / f"source-{kind}.toml").read_text()
    assert example in docs, f"README.md should show deploy/examples/source-{kind}.toml"
