"""The restart schedule (tenacity's exponential backoff with jitter) and bounded workers."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from edge_agent.sources.supervisor import SessionEnded, Worker, supervise, supervise_async


def _failing(stop: threading.Event, failures: int) -> tuple[list[float], list[str]]:
    """Run a session that fails ``failures`` times, then stops; the reported delays."""
    delays: list[float] = []
    reasons: list[str] = []
    calls = 0

    def session() -> None:
        nonlocal calls
        calls += 1
        if calls > failures:
            stop.set()
            return
        raise ConnectionError(f"attempt {calls}")

    def on_failure(exc: BaseException, delay: float) -> None:
        delays.append(delay)
        reasons.append(str(exc))

    supervise(
        session, stop=stop, on_failure=on_failure, initial_s=0.001, max_s=0.004, healthy_after_s=60
    )
    return delays, reasons


def test_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    delays, reasons = _failing(threading.Event(), failures=6)
    assert reasons == [f"attempt {i}" for i in range(1, 7)]
    # wait = min(initial * 2**n + uniform(0, initial), max) for the n-th retry
    for n, delay in enumerate(delays):
        low = min(0.001 * 2**n, 0.004)
        assert low <= delay <= min(low + 0.001, 0.004)
    assert delays[-1] == 0.004


def test_a_session_that_returns_quickly_is_retried_as_ended() -> None:
    stop = threading.Event()
    reasons: list[BaseException] = []
    calls = 0

    def session() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()

    supervise(
        session,
        stop=stop,
        on_failure=lambda exc, _d: reasons.append(exc),
        initial_s=0.001,
        max_s=0.002,
        healthy_after_s=60,
    )
    assert calls == 3
    assert len(reasons) == 2 and all(isinstance(r, SessionEnded) for r in reasons)


def test_a_healthy_session_resets_the_schedule() -> None:
    stop = threading.Event()
    delays: list[float] = []
    calls = 0

    def session() -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            stop.set()
            return
        raise ConnectionError("lost after a long, healthy run")

    supervise(
        session,
        stop=stop,
        on_failure=lambda _e, delay: delays.append(delay),
        initial_s=5.0,  # would make this test slow if the schedule were used
        max_s=10.0,
        healthy_after_s=0.0,  # every session counts as healthy
    )
    assert delays == [0.0, 0.0, 0.0]


def test_stop_interrupts_the_wait() -> None:
    stop = threading.Event()

    def session() -> None:
        raise ConnectionError("down")

    thread = threading.Thread(
        target=supervise,
        args=(session,),
        kwargs={
            "stop": stop,
            "on_failure": lambda _e, _d: None,
            "initial_s": 60.0,
            "max_s": 60.0,
        },
    )
    thread.start()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_async_supervision_has_the_same_schedule() -> None:
    delays: list[float] = []

    async def run() -> int:
        stop = asyncio.Event()
        calls = 0

        async def session() -> None:
            nonlocal calls
            calls += 1
            if calls > 3:
                stop.set()
                return
            raise OSError("refused")

        await supervise_async(
            session,
            stop=stop,
            on_failure=lambda _e, d: delays.append(d),
            initial_s=0.001,
            max_s=0.01,
            healthy_after_s=60,
        )
        return calls

    assert asyncio.run(run()) == 4
    assert len(delays) == 3 and 0.001 <= delays[0] <= 0.002 and 0.004 <= delays[2] <= 0.005


def test_worker_logs_a_crash_and_joins(caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker("boom")

    def crash() -> None:
        raise RuntimeError("bug")

    with caplog.at_level(logging.ERROR, logger="edge_agent.sources.supervisor"):
        worker.start(crash)
        assert worker.stop(timeout=5)
    assert "boom: background thread failed" in caplog.text
    assert not worker.running
