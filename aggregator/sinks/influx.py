"""InfluxDB sink: influxdb-client's batching WriteApi behind a durable spool (zero loss).

Life of a write::

    write(points) ──► spool.append (fsync) ──► WriteApi (batches by count/interval,
                                               short in-memory retries)
                                                │
          success_callback ◄────────────────────┤  lines removed from the spool
          error_callback   ◄────────────────────┘  lines stay in the spool
                                                   (server said 400: dead letter)

* Every batch is durable in the spool **before** the HTTP client sees it and is
  deleted only in the success callback, line by line; a batch that was only partly
  written shrinks to the lines still missing, so a replay re-sends nothing twice.
* A retryable error opens a circuit breaker: new batches are then only spooled,
  and a background replayer probes the server with the oldest batch, backing off
  exponentially; the first success closes the breaker and the replayer drains the
  spool (bounded by ``max_inflight_points`` so memory stays bounded).
* :meth:`InfluxSink.close` stops accepting, waits for in-flight batches (the
  client can otherwise drop its last window), closes the WriteApi properly and
  leaves anything unacknowledged in the spool for the next start.
* Errors from influxdb-client, urllib3 and SQLite surface as
  :class:`~fedge.errors.SinkError`; callback errors are counted in :attr:`stats`.

Works with InfluxDB 2.x/3.x (``InfluxTarget.v2``), InfluxDB 1.8+ through its v2
compatibility API (``InfluxTarget.v1``: token ``user:password``, bucket ``db/rp``),
and anything else that speaks ``/api/v2/write`` (VictoriaMetrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Literal, cast

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import WriteOptions, WriteType
from influxdb_client.rest import ApiException
from reactivex.scheduler import ThreadPoolScheduler
from urllib3.exceptions import MaxRetryError

from aggregator.sinks.base import SinkStats
from aggregator.sinks.spool import TelemetrySpool
from fedge.errors import SinkError, StorageError
from fedge.points import Point, line_bytes

__all__ = ["InfluxSink", "InfluxTarget"]

log = logging.getLogger(__name__)

# The server understood the request and refused the data: re-sending cannot help.
_INVALID_DATA_STATUS = frozenset({400, 413, 422})

Outcome = Literal["ok", "retry", "reject"]


@dataclass(frozen=True, slots=True)
class InfluxTarget:
    """Where to write: v2 API coordinates. ``token`` is kept out of ``repr``."""

    url: str
    bucket: str
    org: str = "-"
    token: str = field(default="", repr=False)

    @classmethod
    def v2(cls, url: str, *, org: str, bucket: str, token: str) -> InfluxTarget:
        """InfluxDB 2.x / 3.x (or any ``/api/v2/write`` server)."""
        return cls(url=url, bucket=bucket, org=org, token=token)

    @classmethod
    def v1(
        cls,
        url: str,
        *,
        database: str,
        retention_policy: str = "",
        username: str = "",
        password: str = "",
    ) -> InfluxTarget:
        """InfluxDB 1.8+ through its v2 compatibility endpoint."""
        bucket = f"{database}/{retention_policy}" if retention_policy else database
        token = f"{username}:{password}" if (username or password) else ""
        return cls(url=url, bucket=bucket, org="-", token=token)


@dataclass(slots=True)
class _InFlight:
    """Acknowledgement state of one spooled batch handed to the client.

    Acknowledged lines are only counted (``ok``); lines that need an action (replay,
    dead letter) are kept. The lines no callback reported on yet are exactly those
    still mapped to this batch in the sink's line owners.
    """

    total: int
    lines: list[bytes]
    since: float
    ok: int = 0
    retry: list[bytes] = field(default_factory=list)
    reject: list[bytes] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.ok + len(self.retry) + len(self.reject)

    @property
    def done(self) -> bool:
        return self.answered >= self.total


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
        return f"HTTP {exc.status} {exc.reason}: {str(body or '').strip()[:300]}"
    if isinstance(exc, MaxRetryError):
        return f"gave up after retries: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"[:400]


class InfluxSink:
    """Zero-loss InfluxDB writer. Thread-safe; see the module docs for the design.

    ``batch_size``/``flush_interval_ms`` shape the client's batches (in points): no
    request carries more than ``batch_size`` points. Small writes are coalesced line by
    line by the client's batching WriteApi; a write of at least ``batch_size / 2``
    points is already a batch, so it is cut into requests of at most ``batch_size``
    points and handed to a second WriteApi of the same client that sends each as is
    (same retries, callbacks and scheduler), sparing the per-line batching overhead.
    ``max_retries``/``retry_interval_ms``/``max_retry_time_ms`` bound the client's own
    in-memory retries, after which the durable spool takes over with
    ``replay_backoff_s`` (initial, maximum) seconds between probes.
    """

    def __init__(
        self,
        target: InfluxTarget,
        spool_path: Path | str,
        *,
        batch_size: int = 1000,
        flush_interval_ms: int = 1000,
        max_retries: int = 3,
        retry_interval_ms: int = 500,
        max_retry_delay_ms: int = 5000,
        max_retry_time_ms: int = 10_000,
        request_timeout_ms: int = 10_000,
        replay_backoff_s: tuple[float, float] = (0.5, 30.0),
        max_inflight_points: int | None = None,
        spool_max_bytes: int = 256 << 20,
        close_timeout_s: float = 15.0,
        verify_ssl: bool = True,
    ) -> None:
        if batch_size < 1 or flush_interval_ms < 1:
            raise SinkError("batch_size and flush_interval_ms must be positive")
        self.target = target
        self.close_timeout_s = close_timeout_s
        self._batch_size = batch_size
        self._direct_min = max(1, batch_size // 2)
        self._backoff_min, self._backoff_max = replay_backoff_s
        self._max_inflight = max_inflight_points or 10 * batch_size
        # A batch the client never answers (its pipeline died) is released for replay
        # after the longest time an honest answer can take, with a wide margin.
        longest_ms = max_retry_time_ms + request_timeout_ms * (max_retries + 2) + flush_interval_ms
        self._stale_after_s = max(30.0, 2 * longest_ms / 1000)
        try:
            self.spool = TelemetrySpool(spool_path, max_bytes=spool_max_bytes)
        except StorageError as exc:
            raise SinkError(f"cannot open InfluxDB spool: {exc}") from exc

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight: dict[int, _InFlight] = {}
        self._inflight_points = 0
        # line -> id of the in-flight batch containing it (a deque of ids, oldest first,
        # for the rare line in flight more than once; ``_shared`` counts those). The
        # client's callbacks only hand back the concatenated body, so lines are mapped
        # back to their batches; identical lines are the same InfluxDB point, so which
        # copy is credited is moot.
        self._owners: dict[bytes, int | deque[int]] = {}
        self._shared = 0
        self._breaker_open = False
        self._backoff = self._backoff_min
        self._next_probe = 0.0
        self._accepting = True
        self._closed = False
        self._written = 0
        self._batches_ok = 0
        self._errors = 0
        self._retries = 0
        self._refused = 0
        self._last_error: str | None = None

        # Our own scheduler: WriteOptions' default is one pool shared by every client.
        self._scheduler = ThreadPoolScheduler(1)

        def options(size: int) -> WriteOptions:
            return WriteOptions(
                write_type=WriteType.batching,
                batch_size=size,
                flush_interval=flush_interval_ms,
                jitter_interval=0,
                retry_interval=retry_interval_ms,
                max_retries=max_retries,
                max_retry_delay=max_retry_delay_ms,
                max_retry_time=max_retry_time_ms,
                exponential_base=2,
                max_close_wait=int(close_timeout_s * 1000),
                write_scheduler=self._scheduler,
            )

        callbacks = {
            "success_callback": self._on_success,
            "error_callback": self._on_error,
            "retry_callback": self._on_retry,
        }
        try:
            self._client = InfluxDBClient(
                url=target.url,
                token=target.token,  # the client sends no auth header for ""
                org=target.org,
                timeout=request_timeout_ms,
                verify_ssl=verify_ssl,
            )
            # Records are single lines here: the client's batch_size counts points.
            self._write_api = self._client.write_api(write_options=options(batch_size), **callbacks)
            # Records are ready-made requests of up to batch_size points here.
            self._direct_api = self._client.write_api(write_options=options(1), **callbacks)
        except Exception as exc:
            self.spool.close()
            self._scheduler.executor.shutdown(wait=False)
            raise SinkError(f"cannot create InfluxDB client for {target.url}: {exc}") from exc

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._replayer = threading.Thread(
            target=self._replay_loop, name="fedge-influx-replay", daemon=True
        )
        self._replayer.start()

    # Writing ---------------------------------------------------------------------------
    @property
    def accepts_line_protocol(self) -> bool:
        """True: writes line protocol, reusing a :class:`~fedge.points.PointBatch`'s lines."""
        return True

    def write(self, points: Sequence[Point]) -> None:
        """Spool ``points`` durably and queue them for InfluxDB; SinkError if refused."""
        if not points:
            return
        lines = line_bytes(points)
        body = b"\n".join(lines)
        with self._lock:
            if not self._accepting:
                raise SinkError("InfluxDB sink is closed")
            try:
                batch_id = self.spool.append(body, len(lines))
            except StorageError as exc:
                self._refused += len(lines)
                self._last_error = str(exc)
                raise SinkError(f"InfluxDB sink refused {len(lines)} point(s): {exc}") from exc
            submit = not self._breaker_open and self._inflight_points < self._max_inflight
            if submit:
                self._register(batch_id, lines)
        if submit:
            self._submit(lines)
        # Otherwise the batch waits in the spool; the replayer sends it.

    def _register(self, batch_id: int, lines: list[bytes]) -> None:
        # Caller holds self._lock.
        self._inflight[batch_id] = _InFlight(len(lines), lines, time.monotonic())
        self._inflight_points += len(lines)
        owners = self._owners
        fresh = dict.fromkeys(lines, batch_id)
        if len(fresh) == len(lines) and owners.keys().isdisjoint(fresh):
            owners.update(fresh)  # the usual case: every line is in flight only here
            return
        for line in lines:
            owner = owners.get(line)
            if owner is None:
                owners[line] = batch_id
            elif isinstance(owner, int):
                owners[line] = deque((owner, batch_id))
                self._shared += 1
            else:
                owner.append(batch_id)

    def _take_owner(self, line: bytes) -> int | None:
        # Caller holds self._lock. The oldest in-flight batch holding ``line``.
        owner = self._owners.get(line)
        if owner is None or isinstance(owner, int):
            self._owners.pop(line, None)
            return owner
        batch_id = owner.popleft()
        if not owner:
            del self._owners[line]
            self._shared -= 1
        return batch_id

    def _submit(self, lines: list[bytes]) -> None:
        try:
            if len(lines) >= self._direct_min:
                # Already a batch: requests of at most batch_size points, sent as they are.
                size = self._batch_size
                chunks = -(-len(lines) // size)
                step = -(-len(lines) // chunks)  # equal-sized requests
                records = [b"\n".join(lines[i : i + step]) for i in range(0, len(lines), step)]
                self._direct_api.write(
                    bucket=self.target.bucket, org=self.target.org, record=records
                )
            else:
                self._write_api.write(
                    bucket=self.target.bucket,
                    org=self.target.org,
                    record=lines,  # one record per line: batch_size counts points
                )  # default precision: nanoseconds, as Point.to_line writes
        except Exception as exc:
            # Nothing reached the client, but the batch is safe in the spool: release its
            # lines so the replayer sends them later. The caller's write still succeeded.
            log.warning("InfluxDB client refused a batch (kept spooled): %s", _describe(exc))
            self._resolve(lines, "retry", _describe(exc))

    # Client callbacks (run on the client's write thread) -------------------------------
    def _on_success(self, conf: tuple[str, str, str], data: bytes | str) -> None:
        self._resolve(self._split(data), "ok", None)

    def _on_error(self, conf: tuple[str, str, str], data: bytes | str, exc: Exception) -> None:
        invalid = isinstance(exc, ApiException) and exc.status in _INVALID_DATA_STATUS
        text = _describe(exc)
        what = "rejected as invalid" if invalid else "will replay"
        log.warning("InfluxDB write failed (%s): %s", what, text)
        self._resolve(self._split(data), "reject" if invalid else "retry", text)

    def _on_retry(self, conf: tuple[str, str, str], data: bytes | str, exc: Exception) -> None:
        with self._lock:
            self._retries += 1
            self._last_error = _describe(exc)
            # The server is struggling: stop feeding the client until it recovers.
            self._open_breaker()

    @staticmethod
    def _split(data: bytes | str) -> list[bytes]:
        raw = data.encode() if isinstance(data, str) else data
        return raw.split(b"\n")

    def _open_breaker(self) -> None:
        # Caller holds self._lock.
        if self._breaker_open:
            self._backoff = min(self._backoff * 2, self._backoff_max)
        else:
            self._breaker_open = True
            self._backoff = self._backoff_min
        self._next_probe = time.monotonic() + self._backoff

    def _resolve(self, lines: list[bytes], outcome: Outcome, error: str | None) -> None:
        finished: list[tuple[int, _InFlight]] = []
        with self._cond:
            if self._closed:
                return  # a late answer after close: the batch stays spooled for next start
            if outcome == "ok":
                self._batches_ok += 1
                if self._breaker_open:
                    log.info("InfluxDB reachable again; replaying the spool")
                self._breaker_open = False
                self._backoff = self._backoff_min
                self._wake.set()
            else:
                self._errors += 1
                self._last_error = error
                if outcome == "retry":
                    self._open_breaker()
            if outcome == "ok" and not self._shared:
                # Fast path, no line in flight twice: count acknowledged lines per batch.
                owned = list(map(self._owners.pop, lines, repeat(None)))
                # No shared line: every owner is a plain batch id (spool ids start at 1).
                acked: Counter[int] = Counter(cast("Iterable[int]", filter(None, owned)))
                if acked.total() < len(owned):
                    # Expected only for batches released as stale: they are replayed anyway.
                    log.debug("%d acknowledged line(s) not in flight", owned.count(None))
                for batch_id, count in acked.items():
                    state = self._inflight.get(batch_id)
                    if state is None:
                        continue
                    self._inflight_points -= count
                    state.ok += count
                    if state.done:
                        del self._inflight[batch_id]
                        finished.append((batch_id, state))
            else:
                for line in lines:
                    owner = self._take_owner(line)
                    if owner is None:
                        # Expected only for batches released as stale: replayed anyway.
                        log.debug("acknowledged line not in flight (ignored): %.120r", line)
                        continue
                    state = self._inflight.get(owner)
                    if state is None:
                        continue
                    self._inflight_points -= 1
                    if outcome == "ok":
                        state.ok += 1
                    else:
                        answers: list[bytes] = getattr(state, outcome)  # .retry / .reject
                        answers.append(line)
                    if state.done:
                        del self._inflight[owner]
                        finished.append((owner, state))
            for batch_id, state in finished:
                self._settle(batch_id, state, error)
            self._cond.notify_all()

    def _settle(self, batch_id: int, state: _InFlight, error: str | None) -> None:
        # Caller holds self._lock. Update the spool only after the whole batch is answered.
        self._written += state.ok
        if self.spool.closed:
            return  # a late callback after close: the batch stays spooled for next start
        try:
            if state.reject:
                self.spool.dead_letter(b"\n".join(state.reject), len(state.reject), error or "")
            if state.retry:
                self.spool.replace(batch_id, b"\n".join(state.retry), len(state.retry))
            else:
                self.spool.remove([batch_id])
        except StorageError as exc:
            self._last_error = str(exc)
            log.error("spool update failed for batch %d: %s", batch_id, exc)

    # Replaying -------------------------------------------------------------------------
    def _replay_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._replay_once()
            except Exception:  # the replayer must outlive any single failure
                log.exception("spool replay failed; will try again")

    def _release_stale(self) -> None:
        # Caller holds self._lock.
        cutoff = time.monotonic() - self._stale_after_s
        stale = [bid for bid, state in self._inflight.items() if state.since < cutoff]
        for batch_id in stale:
            state = self._inflight.pop(batch_id)
            log.warning(
                "batch %d unanswered for %.0fs; releasing it for replay",
                batch_id,
                self._stale_after_s,
            )
            self._inflight_points -= state.total - state.answered
            # The lines still mapped to this batch are the ones nobody answered.
            unanswered: list[bytes] = []
            for line in state.lines:
                owner = self._owners.get(line)
                if owner == batch_id:
                    del self._owners[line]
                    unanswered.append(line)
                elif isinstance(owner, deque) and batch_id in owner:
                    owner.remove(batch_id)
                    if not owner:
                        del self._owners[line]
                        self._shared -= 1
                    unanswered.append(line)
            # Keep what was acknowledged acknowledged: only the rest is replayed.
            state.retry += unanswered
            self._settle(batch_id, state, "no answer from the client")

    def _replay_once(self) -> None:
        batches: list[list[bytes]] = []
        with self._lock:
            if self._closed:
                return
            self._release_stale()
            if self._breaker_open:
                # Probe with one batch once the backoff has passed and nothing is in flight.
                if self._inflight or time.monotonic() < self._next_probe:
                    return
                limit = 1
            else:
                limit = 1_000
            budget = self._max_inflight - self._inflight_points
            if budget <= 0:
                return
            # Only the batches that fit the in-flight budget are read back from the spool.
            for batch in self.spool.pending(
                limit=limit, exclude=self._inflight.keys(), max_points=budget
            ):
                lines = batch.lines
                self._register(batch.id, lines)
                batches.append(lines)
            if self._breaker_open:
                self._next_probe = time.monotonic() + self._backoff
        for lines in batches:
            self._submit(lines)

    # Flushing and closing --------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything written before this call is acknowledged by the server.

        Raises SinkError after ``timeout`` seconds; unacknowledged points stay spooled.
        """
        deadline = time.monotonic() + timeout
        try:
            watermark = self.spool.last_id
        except StorageError as exc:
            raise SinkError(f"InfluxDB sink spool unavailable: {exc}") from exc
        with self._cond:
            # Whoever flushes wants an answer now, not after the current backoff.
            self._next_probe = min(self._next_probe, time.monotonic())
            self._wake.set()
            while True:
                try:
                    remaining = self.spool.count_upto(watermark)
                except StorageError as exc:
                    raise SinkError(f"InfluxDB sink spool unavailable: {exc}") from exc
                if remaining == 0:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SinkError(
                        f"{remaining} batch(es) not acknowledged by {self.target.url} after "
                        f"{timeout:.1f}s (kept in the spool); last error: {self._last_error}"
                    )
                self._cond.wait(min(left, 0.1))

    def close(self, *, timeout: float | None = None) -> None:
        """Flush, stop the client properly, keep anything unwritten in the spool. Idempotent."""
        timeout = self.close_timeout_s if timeout is None else timeout
        with self._lock:
            if self._closed or not self._accepting:
                return
            self._accepting = False
        try:
            self.flush(timeout)
        except SinkError as exc:
            log.warning("closing InfluxDB sink with data still spooled: %s", exc)
        self._stop.set()
        self._wake.set()
        self._replayer.join(timeout=5.0)
        try:
            # Completes the client's stream so its last window is written (not dropped),
            # waiting at most max_close_wait.
            self._write_api.close()  # type: ignore[no-untyped-call]  # untyped library
            self._direct_api.close()  # type: ignore[no-untyped-call]
            self._client.close()  # type: ignore[no-untyped-call]
        except Exception as exc:
            log.warning("error while closing the InfluxDB client: %s", _describe(exc))
        finally:
            self._scheduler.executor.shutdown(wait=False)
            with self._lock:
                self._closed = True
                self._inflight.clear()
                self._owners.clear()
                self._inflight_points = 0
                self.spool.close()

    def __enter__(self) -> InfluxSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Introspection ---------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the server answers ``/ping`` right now."""
        try:
            return bool(self._client.ping())
        except Exception:  # ping is a probe: any failure just means "no"
            return False

    @property
    def breaker_open(self) -> bool:
        """True while the sink only spools (server unreachable or failing)."""
        return self._breaker_open

    @property
    def stats(self) -> SinkStats:
        """Current counters; ``points_pending`` is what the spool holds."""
        spool = self.spool.stats
        with self._lock:
            return SinkStats(
                points_written=self._written,
                points_pending=spool.points,
                batches_written=self._batches_ok,
                write_errors=self._errors,
                retries=self._retries,
                points_refused=self._refused,
                points_rejected=spool.dead_points,
                last_error=self._last_error,
            )
