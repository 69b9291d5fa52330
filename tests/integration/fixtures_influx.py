"""Real time-series servers for integration tests: VictoriaMetrics and InfluxDB 1.x.

* ``victoria_metrics`` (function scope): implements the InfluxDB v2 write API
  (``/api/v2/write``) and lets tests read back every raw sample with
  ``/api/v1/export``. :meth:`VictoriaMetrics.stop` / :meth:`VictoriaMetrics.start`
  restart it on the same port and data directory (outage tests).
* ``influxdb_v1`` (module scope): a real InfluxDB 1.x engine (InfluxQL ``/query``,
  v1 ``/write``) with every port on free loopback ports and all state in a temp dir.

Both run from the Debian packages (``victoria-metrics``, ``influxdb``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import free_port

__all__ = [
    "InfluxV1",
    "VictoriaMetrics",
    "http_request",
    "influxdb_v1",
    "victoria_metrics",
]

VICTORIA = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


def http_request(
    url: str, *, data: bytes | None = None, method: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """Plain HTTP to a loopback test server; returns (status, body), also for 4xx/5xx."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"tests only talk to loopback servers, not {url}")
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), bytes(exc.read())


def _ready(url: str, expect: int) -> bool:
    try:
        status, _ = http_request(url, timeout=1.0)
    except OSError:
        return False
    return status == expect


def _stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class VictoriaMetrics:
    """A VictoriaMetrics single-node process that can be stopped and restarted."""

    port: int
    data_dir: Path
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, timeout: float = 20.0) -> None:
        """Start (or restart) on the same port and data directory; wait for /health."""
        if self.running:
            return
        self._close_log()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                VICTORIA,
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.data_dir}",
                # Test data may be stamped in the past; the default keeps only 1 month.
                "-retentionPeriod=100y",
                "-loggerLevel=ERROR",
                "-selfScrapeInterval=0",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not _ready(f"{self.url}/health", 200):
            if self._proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"victoria-metrics not healthy after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM flushes data to disk); kill after a timeout."""
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def force_flush(self) -> None:
        """Make everything ingested so far searchable now (otherwise it takes ~10 s)."""
        status, body = http_request(f"{self.url}/internal/force_flush")
        if status != 200:
            raise RuntimeError(f"force_flush failed: HTTP {status}: {body[:300]!r}")

    def export(self, match: str, *, start: int = 0) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` (``/api/v1/export``, JSON lines)."""
        query = urllib.parse.urlencode({"match[]": match, "start": str(start)})
        status, body = http_request(f"{self.url}/api/v1/export?{query}", timeout=30.0)
        if status != 200:
            raise RuntimeError(f"export failed: HTTP {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A real VictoriaMetrics on a free loopback port; data in tmp_path."""
    if not Path(VICTORIA).exists():
        pytest.fail("victoria-metrics is not installed (apt-get install victoria-metrics)")
    vm = VictoriaMetrics(
        port=free_port(), data_dir=tmp_path / "vm-data", log_path=tmp_path / "vm.log"
    )
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


INFLUXD_CONFIG = """\
reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

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
  bind-address = "127.0.0.1:{http_port}"
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


@dataclass(frozen=True)
class InfluxV1:
    """Handle on a running InfluxDB 1.x: URL and tiny v1 API helpers."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, q: str, *, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """POST an InfluxQL query to ``/query``; returns the decoded JSON (raises on HTTP error)."""
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        data = urllib.parse.urlencode(params).encode()
        status, body = http_request(f"{self.url}/query", data=data, method="POST")
        if status != 200:
            raise RuntimeError(f"/query HTTP {status}: {body[:500]!r} for {q}")
        result: dict[str, Any] = json.loads(body)
        return result

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (idempotent)."""
        self.query(f'CREATE DATABASE "{name}"')

    def write(self, db: str, line_protocol: str, *, precision: str = "ns") -> None:
        """v1 ``/write`` of line protocol; raises on anything but 204."""
        query = urllib.parse.urlencode({"db": db, "precision": precision})
        status, body = http_request(
            f"{self.url}/write?{query}", data=line_protocol.encode(), method="POST"
        )
        if status != 204:
            raise RuntimeError(f"/write HTTP {status}: {body[:500]!r}")


@pytest.fixture(scope="module")
def influxdb_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxV1]:
    """A real InfluxDB 1.x (influxd) on free loopback ports, all state in a temp dir."""
    if not Path(INFLUXD).exists():
        pytest.fail("influxd is not installed (apt-get install influxdb)")
    root = tmp_path_factory.mktemp("influxd")
    http_port, rpc_port = free_port(), free_port()
    config = root / "influxdb.conf"
    config.write_text(INFLUXD_CONFIG.format(root=root, http_port=http_port, rpc_port=rpc_port))
    log_path = root / "influxd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [INFLUXD, "run", "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            server = InfluxV1(http_port)
            deadline = time.monotonic() + 30.0
            while not _ready(f"{server.url}/ping", 204):
                if proc.poll() is not None:
                    pytest.fail(f"influxd exited: {log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("influxd did not answer /ping within 30s")
                time.sleep(0.05)
            yield server
        finally:
            _stop_process(proc)
