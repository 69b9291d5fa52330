"""InfluxDB 1.x (``influxd``) on loopback with a generated config, plus tiny v1 API helpers."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from fedge_app.servers.probes import LOOPBACK, ServerError, answers_http, free_port, http_request
from fedge_app.servers.process import ServerProcess

__all__ = ["InfluxDB1"]

_INFLUXD_CONFIG = """\
reporting-disabled = true
reporting-enabled = false
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{root}/meta"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  index-version = "inmem"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  max-row-limit = 0

[logging]
  level = "error"
  suppress-logo = true

[ifql]
  enabled = false

[continuous_queries]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""


class InfluxDB1(ServerProcess):
    """InfluxDB 1.x (``influxd run``) with a generated config: HTTP API (InfluxQL ``/query``,
    v1 ``/write``) and the RPC bind on free loopback ports, all state in :attr:`root`."""

    program = "influxd"

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        binary: str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(
            root, binary=binary, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self._ports_given = port is not None or rpc_port is not None
        self.port = free_port() if port is None else port
        self.rpc_port = free_port() if rpc_port is None else rpc_port
        self.config_path = self.root / "influxdb.conf"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self.port}"

    def config_text(self) -> str:
        """The influxdb.conf written at every start."""
        return _INFLUXD_CONFIG.format(
            host=LOOPBACK, root=self.root, http_port=self.port, rpc_port=self.rpc_port
        )

    def _command(self) -> list[str]:
        self.config_path.write_text(self.config_text())
        return [str(self.binary), "run", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        return answers_http(f"{self.url}/ping", 204)

    def _pick_ports(self) -> None:
        self.port, self.rpc_port = free_port(), free_port()

    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """POST an InfluxQL query to ``/query``; the decoded JSON (ServerError on HTTP error)."""
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        status, body = http_request(f"{self.url}/query", data=data, method="POST")
        if status != 200:
            raise ServerError(f"/query HTTP {status}: {body[:500]!r} for {q}")
        result: dict[str, Any] = json.loads(body)
        return result

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (idempotent)."""
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, db: str, line_protocol: str, *, precision: str = "ns") -> None:
        """v1 ``/write`` of line protocol; ServerError on anything but 204."""
        query = urllib.parse.urlencode({"db": db, "precision": precision})
        status, body = http_request(
            f"{self.url}/write?{query}", data=line_protocol.encode(), method="POST"
        )
        if status != 204:
            raise ServerError(f"/write HTTP {status}: {body[:500]!r}")
