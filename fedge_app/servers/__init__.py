"""Real servers on loopback: Mosquitto, VictoriaMetrics and InfluxDB 1.x as child processes.

The one harness the integration tests, the benchmarks and (later) ``fedge broker``
use to run the real thing::

    with Mosquitto(extra_config=["max_inflight_messages 0"]) as broker, VictoriaMetrics() as vm:
        ...                 # broker.url, vm.url; both on free 127.0.0.1 ports
        vm.kill()           # SIGKILL: no flush, no goodbye (chaos tests)
        vm.start()          # back on the same port and data directory
        broker.restart()    # SIGTERM, then start again on the same port

Every launcher keeps its config, data and log in one directory (a temp dir of its
own unless ``root`` is given, removed on :meth:`ServerProcess.close`), listens on
127.0.0.1 only, waits a bounded time for the server to answer and, when it does
not, raises :class:`ServerError` with the tail of the server's log. Ports are
picked free at construction and kept for the object's life, so a restarted server
is found where it was; a first start that loses its port to another process is
retried on fresh ports.

Binaries are looked up on ``PATH``, then in ``/usr/sbin`` and ``/usr/bin`` (the
Debian packages ``mosquitto``, ``victoria-metrics``, ``influxdb``).
"""

from fedge_app.servers.influxdb1 import InfluxDB1
from fedge_app.servers.mosquitto import Mosquitto
from fedge_app.servers.probes import (
    LOOPBACK,
    ServerError,
    ServerNotInstalledError,
    find_binary,
    free_port,
    http_request,
    wait_for_http,
    wait_for_port,
)
from fedge_app.servers.process import ServerProcess
from fedge_app.servers.victoria_metrics import VictoriaMetrics

__all__ = [
    "LOOPBACK",
    "InfluxDB1",
    "Mosquitto",
    "ServerError",
    "ServerNotInstalledError",
    "ServerProcess",
    "VictoriaMetrics",
    "find_binary",
    "free_port",
    "http_request",
    "wait_for_http",
    "wait_for_port",
]
