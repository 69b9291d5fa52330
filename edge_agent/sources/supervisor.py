"""Keeping a connection (or a child process) alive: restart with backoff and jitter.

The schedule is tenacity's ``wait_exponential_jitter``: ``initial_s * 2**n`` plus a
uniform jitter of up to ``initial_s``, capped at ``max_s``. The jitter matters on a
plant network: when a broker, PLC or OPC UA server restarts, every client that lost it
would otherwise come back in lock-step. (paho and asyncua have their own reconnect
loops, but neither adds jitter, and neither retries the *first* connection, so the
sources drive their sessions through :func:`supervise` instead.)

A *session* is one connection's lifetime: it connects, serves until the connection is
lost (raising, or returning) and cleans up after itself. A session that stayed up for
``healthy_after_s`` resets the backoff; one that keeps failing quickly backs off
further. Everything here is bounded by a stop event: sleeps are ``stop.wait``, so
:meth:`Worker.stop` returns as soon as the session notices.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Annotated

from pydantic import Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from edge_agent.sources.base import SourceOptions

__all__ = ["ReconnectOptions", "SessionEnded", "Worker", "supervise", "supervise_async"]

log = logging.getLogger(__name__)

OnFailure = Callable[[BaseException, float], None]


class SessionEnded(Exception):
    """A session returned (connection closed, process exited) sooner than was healthy."""


def _waits(initial_s: float, max_s: float) -> wait_exponential_jitter:
    return wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)


def _report(on_failure: OnFailure) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        on_failure(exc or SessionEnded("session ended"), state.upcoming_sleep)

    return before_sleep


def supervise(
    session: Callable[[], None],
    *,
    stop: threading.Event,
    on_failure: OnFailure,
    initial_s: float,
    max_s: float,
    healthy_after_s: float = 10.0,
) -> None:
    """Run ``session`` until ``stop`` is set, restarting it with backoff and jitter.

    ``on_failure(exc, delay_s)`` is called before each wait (the session's exception,
    or :class:`SessionEnded`). Returns once ``stop`` is set; exceptions other than
    ``Exception`` subclasses (KeyboardInterrupt, SystemExit) propagate.
    """

    def attempt() -> None:
        if stop.is_set():
            return
        started = time.monotonic()
        try:
            session()
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started < healthy_after_s:
                raise
            on_failure(exc, 0.0)  # it was up long enough: start the schedule afresh
            return
        if not stop.is_set() and time.monotonic() - started < healthy_after_s:
            raise SessionEnded(f"session ended after {time.monotonic() - started:.1f} s")

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # returns early when stopping

    while not stop.is_set():
        retrying = Retrying(
            wait=_waits(initial_s, max_s),
            stop=lambda _state: stop.is_set(),
            sleep=sleep,
            retry=retry_if_exception_type(Exception),
            before_sleep=_report(on_failure),
        )
        try:
            retrying(attempt)
        except RetryError:
            return


async def supervise_async(
    session: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    on_failure: OnFailure,
    initial_s: float,
    max_s: float,
    healthy_after_s: float = 10.0,
) -> None:
    """:func:`supervise` for a session coroutine on an asyncio loop (same schedule)."""

    async def sleep(seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def attempt() -> None:
        if stop.is_set():
            return
        started = time.monotonic()
        try:
            await session()
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started < healthy_after_s:
                raise
            on_failure(exc, 0.0)
            return
        if not stop.is_set() and time.monotonic() - started < healthy_after_s:
            raise SessionEnded(f"session ended after {time.monotonic() - started:.1f} s")

    while not stop.is_set():
        retrying = AsyncRetrying(
            wait=_waits(initial_s, max_s),
            stop=lambda _state: stop.is_set(),
            sleep=sleep,
            retry=retry_if_exception_type(Exception),
            before_sleep=_report(on_failure),
        )
        try:
            await retrying(attempt)
        except RetryError:
            return


class Worker:
    """One bounded background thread: a stop event, a daemon thread, a join with timeout."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, target: Callable[[], None]) -> None:
        """Start ``target`` in the thread (once; later calls do nothing)."""
        if self._thread is not None:
            return

        def guarded() -> None:
            try:
                target()
            except Exception:  # the thread must not die silently; the agent never sees it
                log.exception("%s: background thread failed", self.name)

        self._thread = threading.Thread(target=guarded, name=self.name, daemon=True)
        self._thread.start()

    def supervise(
        self, session: Callable[[], None], options: ReconnectOptions, *, on_failure: OnFailure
    ) -> None:
        """:func:`supervise` ``session`` until this worker is stopped, on ``options``' schedule."""
        supervise(
            session,
            stop=self.stop_event,
            on_failure=on_failure,
            initial_s=options.reconnect_initial_s,
            max_s=options.reconnect_max_s,
            healthy_after_s=options.healthy_after_s,
        )

    def stop(self, *, timeout: float = 2.0) -> bool:
        """Set the stop event and join; True if the thread has ended within ``timeout``."""
        self.stop_event.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s: background thread still running after %.1f s", self.name, timeout)
            return False
        return True


class ReconnectOptions(SourceOptions):
    """The restart schedule options shared by connection-based sources."""

    reconnect_initial_s: Annotated[float, Field(gt=0.0, le=60.0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 30.0
    healthy_after_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 10.0
