"""Tools of the chaos tests (and benchmarks/soak.py): publishers that count by seq, ingest
as a real ``fedge ingest`` process, end-to-end counts from the stores, a TCP proxy.

* :class:`SeqPublisher` publishes telemetry of one device over a real
  :class:`~broker.mqtt_transport.PahoTransport`, the way the agent does (QoS 1, paho
  keeps unacknowledged publishes across reconnects), and records for every reading
  when the broker acknowledged it. With ``confirm=True`` it also plays the agent's
  side of ingest's stored-up-to confirmations: it keeps every message until a
  retained :class:`~fedge.messages.StoredAck` covers it and, after each reconnect,
  re-sends the acknowledged ones not covered yet.
* :class:`IngestProcess` runs ``python -m fedge_app.cli ingest`` with this worktree
  on ``PYTHONPATH``; :meth:`IngestProcess.kill` is a SIGKILL.
* :func:`sqlite_seqs` / :func:`vm_seqs` count stored readings by ``(device, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.mqtt_transport import PahoTransport
from fedge.config import BrokerEndpoint
from fedge.messages import Reading, StoredAck, TelemetryBatch, decode_message, encode_message
from fedge.topics import Topics
from fedge.transport import InboundMessage, PublishHandle
from fedge_app.servers import LOOPBACK, VictoriaMetrics, free_port

__all__ = [
    "DedupVictoriaMetrics",
    "IngestProcess",
    "SeqPublisher",
    "TcpProxy",
    "sqlite_seqs",
    "vm_seqs",
    "wait_for",
    "wait_sqlite_settled",
]

REPO = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0  # device time of seq 0; readings are 10 ms apart (VM keeps ms)


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class _Sent:
    first: int
    last: int
    payload: bytes
    handle: PublishHandle
    acked_at: float | None = None  # monotonic time of the broker's PUBACK
    resent: int = 0


class SeqPublisher:
    """One device's telemetry: ``per_message`` readings per message, ``rate_hz`` messages/s."""

    def __init__(
        self,
        url: str,
        fleet: str,
        device: str,
        *,
        rate_hz: float = 20.0,
        per_message: int = 5,
        confirm: bool = False,
        port: int | None = None,
    ) -> None:
        endpoint = BrokerEndpoint.from_url(url)
        if port is not None:
            endpoint = endpoint.model_copy(update={"port": port})
        self.fleet, self.device = fleet, device
        self.topics = Topics(fleet)
        self.rate_hz, self.per_message, self.confirm = rate_hz, per_message, confirm
        self.transport = PahoTransport(
            endpoint, client_id=f"{fleet}-{device}", connect_timeout=30.0
        )
        self.sent: list[_Sent] = []
        self._lock = threading.Lock()
        self._next_seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.through_seq = -1  # from the retained StoredAck (confirm mode)
        self.resends = 0
        self._seen_reconnects = 0

    # Lifecycle -------------------------------------------------------------------------
    def start(self) -> SeqPublisher:
        if self.confirm:
            self.transport.subscribe(self.topics.stored(self.device), qos=1)
        self.transport.connect(on_message=self._on_message)
        self._thread = threading.Thread(target=self._run, name=f"pub-{self.device}", daemon=True)
        self._thread.start()
        return self

    def stop_publishing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def close(self) -> None:
        self.stop_publishing()
        self.transport.close(drain_timeout=0.0)

    # What happened ---------------------------------------------------------------------
    @property
    def generated(self) -> list[int]:
        with self._lock:
            return list(range(self._next_seq))

    def ack_times(self) -> dict[int, float]:
        """seq -> monotonic time of the broker's PUBACK of its message (acknowledged only)."""
        self._poll_acks()
        with self._lock:
            return {
                seq: s.acked_at
                for s in self.sent
                if s.acked_at is not None
                for seq in range(s.first, s.last + 1)
            }

    def all_acked(self) -> bool:
        self._poll_acks()
        with self._lock:
            return all(s.acked_at is not None for s in self.sent)

    def confirmed(self) -> bool:
        """Confirm mode: the stored-up-to watermark covers every generated reading."""
        with self._lock:
            return self.through_seq >= self._next_seq - 1

    # Internals -------------------------------------------------------------------------
    def _on_message(self, message: InboundMessage) -> None:
        ack = decode_message(StoredAck, message.payload)
        if ack.device == self.device and ack.fleet == self.fleet:
            with self._lock:
                self.through_seq = max(self.through_seq, ack.through_seq)

    def _poll_acks(self) -> None:
        now = time.monotonic()
        with self._lock:
            for s in self.sent:
                if s.acked_at is None and s.handle.delivered:
                    s.acked_at = now

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._publish_next()
            self._poll_acks()
            if self.confirm:
                self._resend_after_reconnect()
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _publish_next(self) -> None:
        with self._lock:
            first = self._next_seq
            self._next_seq += self.per_message
        seqs = range(first, first + self.per_message)
        batch = TelemetryBatch(
            fleet=self.fleet,
            device=self.device,
            readings=[
                Reading(seq=s, ts=T0 + s * 0.01, values={"temp": 20.0 + s % 7}) for s in seqs
            ],
        )
        payload = encode_message(batch)
        handle = self.transport.publish(self.topics.telemetry(self.device), payload, qos=1)
        with self._lock:
            self.sent.append(_Sent(first, seqs[-1], payload, handle))

    def _resend_after_reconnect(self) -> None:
        """The agent side of stored acks: after a reconnect, re-send what the broker
        acknowledged but ingest has not confirmed (the broker may have lost it)."""
        reconnects = self.transport.reconnects
        if reconnects == self._seen_reconnects or not self.transport.connected:
            return
        self._seen_reconnects = reconnects
        # The retained watermark comes right after the SUBACK.
        self.transport.wait_subscribed(5.0)
        time.sleep(0.3)
        with self._lock:
            through = self.through_seq
            todo = [s for s in self.sent if s.acked_at is not None and s.last > through]
        for s in todo:
            handle = self.transport.publish(self.topics.telemetry(self.device), s.payload, qos=1)
            with self._lock:
                s.handle, s.acked_at = handle, None
                s.resent += 1
                self.resends += 1


class IngestProcess:
    """``fedge ingest`` as a child process, state (spool, instance id, log) in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        broker_url: str,
        fleet: str,
        sqlite: Path | None = None,
        influx_url: str | None = None,
        shared_group: str | None = None,
        stored_acks: bool = False,
    ) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir / "ingest.log"
        args = [
            sys.executable,
            "-m",
            "fedge_app.cli",
            "ingest",
            "--broker",
            broker_url,
            "--fleet",
            fleet,
            "--spool",
            str(state_dir / "spool.sqlite"),
            "--log-level",
            "INFO",
        ]
        if sqlite is not None:
            args += ["--sqlite", str(sqlite)]
        if influx_url is not None:
            args += ["--influx-url", influx_url, "--influx-bucket", "fedge"]
        if shared_group is not None:
            args += ["--shared-group", shared_group]
        if stored_acks:
            args.append("--stored-acks")
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def launch(self) -> IngestProcess:
        """Start the process without waiting (see :meth:`wait_ready`)."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "250"}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=env,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> tuple[str, str]:
        """Wait for the "ingesting" line; returns (client id, "new"/"resumed")."""
        pattern = re.compile(r"as\s+client\s+(\S+)\s+\((\w+)\s+session\)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.log_since_launch())
            if match:
                return match.group(1), match.group(2)
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"ingest did not come up; log:\n{self.log_since_launch()[-3000:]}")

    def start(self, timeout: float = 30.0) -> tuple[str, str]:
        return self.launch().wait_ready(timeout)

    def log_since_launch(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10.0)
        self.proc = None

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM (a clean stop) and the log since launch."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10.0)
        self.proc = None
        return self.log_since_launch()


def sqlite_seqs(paths: Iterable[Path]) -> Counter[tuple[str, int]]:
    """Stored telemetry readings by (device, seq) over one or more SQLite sink files."""
    counts: Counter[tuple[str, int]] = Counter()
    for path in paths:
        if not path.exists():
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            rows = db.execute(
                "SELECT json_extract(tags, '$.device'), json_extract(fields, '$.seq') "
                "FROM points WHERE measurement = 'telemetry'"
            ).fetchall()
        except sqlite3.OperationalError:  # not created yet
            rows = []
        finally:
            db.close()
        counts.update((str(device), int(seq)) for device, seq in rows)
    return counts


def wait_sqlite_settled(db: Path, *, timeout: float = 30.0) -> bool:
    """Wait until the SQLite sink's row count stopped moving (three equal looks, 0.5 s apart)."""
    counts: list[int] = []

    def settled() -> bool:
        counts.append(sum(sqlite_seqs([db]).values()))
        return len(counts) >= 3 and counts[-1] == counts[-3]

    return wait_for(settled, timeout=timeout, interval=0.5)


def vm_seqs(vm: VictoriaMetrics, fleet: str) -> Counter[tuple[str, int]]:
    """Stored telemetry readings by (device, seq) as VictoriaMetrics returns them."""
    vm.force_flush()
    counts: Counter[tuple[str, int]] = Counter()
    for series in vm.export(f'telemetry_seq{{fleet="{fleet}"}}'):
        device = series["metric"]["device"]
        counts.update((device, int(v)) for v in series["values"])
    return counts


class DedupVictoriaMetrics(VictoriaMetrics):
    """VictoriaMetrics as fedge needs it: ``-dedup.minScrapeInterval=1ms``.

    VictoriaMetrics keeps every sample it is sent, also one with the same series and
    timestamp as a stored one; at-least-once delivery (a redelivered message, a
    replayed spool batch) then shows up twice. With deduplication on a 1 ms grid
    (VictoriaMetrics keeps milliseconds anyway) one sample per series and instant
    remains: InfluxDB's own semantics, where the same point overwrites itself.
    """

    def _command(self) -> list[str]:
        return [*super()._command(), "-dedup.minScrapeInterval=1ms"]


def expected(publishers: Sequence[SeqPublisher]) -> Counter[tuple[str, int]]:
    """Every generated reading exactly once."""
    return Counter((p.device, seq) for p in publishers for seq in p.generated)


class TcpProxy:
    """A loopback TCP proxy to ``target_port`` whose connections can be cut and refused.

    :meth:`cut` aborts every proxied connection and makes new ones close at once
    (a dead network link, as the client sees it); :meth:`restore` lets them through.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.cuts = 0

    def start(self) -> TcpProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        future.result(10.0)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._conns.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        def abort_all() -> None:
            self._cut = True
            self.cuts += 1
            for writer in list(self._conns):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(abort_all)

    def restore(self) -> None:
        def allow() -> None:
            self._cut = False

        self._loop.call_soon_threadsafe(allow)

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._conns):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
