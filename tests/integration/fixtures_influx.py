"""Real time-series servers for integration tests: VictoriaMetrics and InfluxDB 1.x.

Thin fixtures over :mod:`fedge_app.servers` (the Debian packages
``victoria-metrics`` and ``influxdb``):

* ``victoria_metrics`` (function scope): the InfluxDB v2 write API
  (``/api/v2/write``); tests read back every raw sample with
  :meth:`~fedge_app.servers.VictoriaMetrics.export` and restart it on the same port
  and data directory with ``stop()``/``start()`` or ``kill()``/``start()``.
* ``influxdb_v1`` (module scope): a real InfluxDB 1.x engine (InfluxQL ``/query``,
  v1 ``/write``) with every port on free loopback ports and all state in a temp dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge_app.servers import InfluxDB1, ServerError, VictoriaMetrics, find_binary

__all__ = ["influxdb_v1", "victoria_metrics"]


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A real VictoriaMetrics on a free loopback port; data in tmp_path."""
    if find_binary("victoria-metrics") is None:
        pytest.fail("victoria-metrics is not installed (apt-get install victoria-metrics)")
    with VictoriaMetrics(tmp_path / "victoria-metrics") as vm:
        yield vm


@pytest.fixture(scope="module")
def influxdb_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A real InfluxDB 1.x (influxd) on free loopback ports, all state in a temp dir."""
    if find_binary("influxd") is None:
        pytest.fail("influxd is not installed (apt-get install influxdb)")
    server = InfluxDB1(tmp_path_factory.mktemp("influxd"))
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()
