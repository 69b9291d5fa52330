"""The agent's training worker: one long-lived thread, jobs in order, a clean exit."""

from __future__ import annotations

import os
import threading

import pytest

from edge_agent.job_worker import JobWorker, lower_thread_priority


def test_jobs_run_in_order_on_one_thread_that_outlives_them() -> None:
    worker = JobWorker("dev-train")
    ran: list[tuple[int, int]] = []
    done = threading.Event()
    def job(n: int) -> None:
        ran.append((n, threading.get_ident()))
        if n == 2:
            done.set()

    first = worker.run(lambda: job(1))
    second = worker.run(lambda: job(2))
    assert done.wait(5.0)
    assert first is second and first.is_alive()  # waiting for the next job, not gone
    assert [n for n, _ in ran] == [1, 2] and ran[0][1] == ran[1][1] == first.ident
    worker.close(timeout=5.0)
    assert not first.is_alive()


def test_a_closed_worker_starts_a_new_thread_for_the_next_job() -> None:
    worker = JobWorker("dev-train")
    done = threading.Event()
    old = worker.run(lambda: None)
    worker.close(timeout=5.0)
    assert not old.is_alive()
    new = worker.run(done.set)
    assert done.wait(5.0) and new is not old
    worker.close(timeout=5.0)
    assert not new.is_alive()


def test_close_lets_the_running_job_finish_first() -> None:
    worker = JobWorker("dev-train")
    release, finished = threading.Event(), threading.Event()

    def job() -> None:
        release.wait(5.0)
        finished.set()

    thread = worker.run(job)
    closer = threading.Thread(target=worker.close, kwargs={"timeout": 5.0})
    closer.start()
    release.set()
    closer.join(5.0)
    assert finished.is_set() and not thread.is_alive()


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priorities")
@pytest.mark.parametrize("nice", [0, 3, 40])
def test_the_worker_thread_runs_its_jobs_at_a_lower_priority(nice: int) -> None:
    base = _own_nice()
    seen: list[int] = []
    done = threading.Event()
    worker = JobWorker("dev-train", nice=nice)
    worker.run(lambda: (seen.append(_own_nice()), done.set()))
    assert done.wait(5.0)
    worker.close(timeout=5.0)
    assert seen == [min(19, base + nice)]  # capped at 19, the lowest priority
    assert _own_nice() == base  # the calling thread keeps its own


def test_lowering_the_priority_by_nothing_changes_nothing() -> None:
    assert lower_thread_priority(0) is None
