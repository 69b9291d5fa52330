"""VictoriaMetrics single node on loopback (the InfluxDB v2 write API, raw sample export)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from fedge_app.servers.probes import LOOPBACK, ServerError, answers_http, free_port, http_request
from fedge_app.servers.process import ServerProcess

__all__ = ["VictoriaMetrics"]


class VictoriaMetrics(ServerProcess):
    """VictoriaMetrics single node (InfluxDB v2 write API at ``/api/v2/write``), data in
    ``root/vm-data``. SIGTERM (:meth:`stop`) flushes data to disk; :meth:`kill` does not.
    """

    program = "victoria-metrics"

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        port: int | None = None,
        retention: str = "100y",
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(
            root, binary=binary, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self._ports_given = port is not None
        self.port = free_port() if port is None else port
        self.retention = retention
        self.data_dir = self.root / "vm-data"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            # Test data may be stamped in the past; the default keeps only 1 month.
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=ERROR",
            "-selfScrapeInterval=0",
        ]

    def _ready(self) -> bool:
        return answers_http(f"{self.url}/health", 200)

    def _pick_ports(self) -> None:
        self.port = free_port()

    def force_flush(self, *, timeout: float = 60.0) -> None:
        """Make everything ingested so far searchable now (otherwise it takes ~10 s)."""
        status, body = http_request(f"{self.url}/internal/force_flush", timeout=timeout)
        if status != 200:
            raise ServerError(f"force_flush failed: HTTP {status}: {body[:300]!r}")

    def export(self, match: str, *, start: int = 0, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` (``/api/v1/export``, JSON lines)."""
        query = urllib.parse.urlencode({"match[]": match, "start": str(start)})
        status, body = http_request(f"{self.url}/api/v1/export?{query}", timeout=timeout)
        if status != 200:
            raise ServerError(f"export failed: HTTP {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]
