"""Finding sources by kind: the ``fedge.sources`` entry-point group.

Every source, built-in or third-party, is registered the same way, in its package's
``pyproject.toml``::

    [project.entry-points."fedge.sources"]
    mydevice = "my_package.my_module:MyDeviceSource"

and selected in the agent's TOML with ``[source] kind = "mydevice"`` (the other keys
of the table are the source's options). Only the requested plugin is imported, so a
broken third-party package cannot stop an agent that does not use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from edge_agent.sources.base import BaseSource
from fedge.errors import ConfigError

__all__ = [
    "SOURCE_GROUP",
    "available_sources",
    "load_source_class",
    "open_source",
    "source_from_table",
    "source_kinds",
]

log = logging.getLogger(__name__)

SOURCE_GROUP = "fedge.sources"


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=SOURCE_GROUP):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins
    return found


def source_kinds() -> tuple[str, ...]:
    """The names of every installed source kind, sorted (nothing is imported)."""
    return tuple(sorted(_entry_points()))


def _load(ep: EntryPoint) -> type[BaseSource]:
    try:
        obj = ep.load()
    except Exception as exc:  # any import-time failure of a plugin is a config problem
        raise ConfigError(
            f"source plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseSource)):
        raise ConfigError(f"source plugin {ep.name!r} ({ep.value}) is not a BaseSource subclass")
    if getattr(obj, "kind", None) != ep.name:
        raise ConfigError(
            f"source plugin {ep.name!r} ({ep.value}) declares kind "
            f"{getattr(obj, 'kind', None)!r}; the entry point name and kind must match"
        )
    return obj


def load_source_class(kind: str) -> type[BaseSource]:
    """The class registered as ``kind``; ConfigError listing the kinds if there is none."""
    eps = _entry_points()
    ep = eps.get(kind)
    if ep is None:
        listing = ", ".join(sorted(eps)) or "none (is fedge installed?)"
        raise ConfigError(f"unknown source kind {kind!r}; available: {listing}")
    return _load(ep)


def available_sources() -> dict[str, type[BaseSource]]:
    """Every importable source kind and its class; broken plugins are logged and skipped."""
    out: dict[str, type[BaseSource]] = {}
    for name, ep in sorted(_entry_points().items()):
        try:
            out[name] = _load(ep)
        except ConfigError as exc:
            log.warning("%s", exc)
    return out


def open_source(kind: str, options: Mapping[str, Any], *, seed: int = 0) -> BaseSource:
    """Build (not start) the source ``kind`` from its options; ConfigError on any problem."""
    return load_source_class(kind).from_options(options, seed=seed)


def source_from_table(table: Mapping[str, Any], *, seed: int = 0) -> BaseSource:
    """Build the source a ``[source]`` TOML table describes: ``kind`` plus its options."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[source] must be a table, got {type(table).__name__}")
    options = dict(table)
    kind = options.pop("kind", None)
    if not isinstance(kind, str):
        raise ConfigError(
            f"[source] needs kind = one of {', '.join(source_kinds()) or '(none installed)'}"
        )
    return open_source(kind, options, seed=seed)
