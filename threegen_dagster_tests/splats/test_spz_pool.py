"""spz_pool.Tasks: the pool and the calling thread share the codec's tasks; errors surface, and
nothing is left running once the context is left."""

from __future__ import annotations

import threading
import time

import pytest

from threegen_dagster.splats import spz_pool
from threegen_dagster.splats.spz_pool import Tasks

needs_pool = pytest.mark.skipif(spz_pool.WORKERS == 0, reason="one core: the caller runs every task itself")


def _occupy_the_pool(tasks: Tasks, gate: threading.Event, log: list[str]) -> None:
    """Submit one task per pool thread that holds it until ``gate`` opens; return once all started."""
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        assert gate.wait(timeout=30)
        log.append(f"held on {threading.current_thread().name}")

    for _ in range(spz_pool.WORKERS):
        tasks.submit(hold)
    for _ in range(spz_pool.WORKERS):
        assert started.acquire(timeout=30)


@needs_pool
def test_the_caller_runs_what_no_pool_thread_started_last_first() -> None:
    gate, log, caller = threading.Event(), [], threading.current_thread().name
    with Tasks() as tasks:
        _occupy_the_pool(tasks, gate, log)
        tasks.submit(gate.set)  # the last the caller runs: only then are the pool's threads released
        for i in range(4):
            tasks.submit(lambda i=i: log.append(f"{i} on {threading.current_thread().name}"))
        tasks.finish()
        assert len(log) == 4 + spz_pool.WORKERS  # finish waited for the pool's tasks too
    assert log[:4] == [f"{i} on {caller}" for i in (3, 2, 1, 0)]
    assert all(entry.startswith("held on spz_") for entry in log[4:])


@needs_pool
def test_a_task_error_is_raised_by_finish_after_the_running_tasks_end() -> None:
    started, done = threading.Event(), []

    def slow() -> None:
        started.set()
        time.sleep(0.2)
        done.append("slow")

    def fail() -> None:
        raise ValueError("bad block 7")

    with pytest.raises(ValueError, match="bad block 7"):
        with Tasks() as tasks:
            tasks.submit(slow)
            assert started.wait(timeout=30)  # on a pool thread: the caller leaves it running
            tasks.submit(fail)
            tasks.finish()
    assert done == ["slow"]  # finished before the error left the context, not after


@needs_pool
def test_tasks_not_started_when_the_caller_fails_never_run() -> None:
    gate, log = threading.Event(), []
    with pytest.raises(RuntimeError, match="truncated"):
        with Tasks() as tasks:
            _occupy_the_pool(tasks, gate, log)
            tasks.submit(lambda: log.append("late"))
            threading.Timer(0.5, gate.set).start()  # frees the pool while leaving the context waits
            raise RuntimeError("truncated input")
    assert len(log) == spz_pool.WORKERS  # the held tasks ended before the context was left
    time.sleep(0.2)
    assert "late" not in log
