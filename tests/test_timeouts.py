"""A task running longer than ``timeout`` ends as TaskTimeout; the others are unaffected."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import taskfan
from taskfan import TaskTimeout

from .conftest import Gates, backends_that


@pytest.fixture(params=backends_that(lambda e: e.timeouts))
def timed_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_timed_out_task_fails_alone(timed_backend: str, gates: Gates) -> None:
    hang = gates.new(timed_backend)

    def task(x: int) -> int:
        if x == 5:
            hang.wait(60)  # released when the test ends
        return x

    got = taskfan.map(
        task,
        range(20),
        backend=timed_backend,
        workers=4,
        timeout=0.5,
        errors="return",
        progress=False,
    )
    assert isinstance(got[5], TaskTimeout) and isinstance(got[5], TimeoutError)
    assert got[:5] + got[6:] == [x for x in range(20) if x != 5]
    cause = got[5].__cause__  # where was it stuck?
    assert isinstance(cause, taskfan.TaskTraceback)
    assert "in task" in cause.text
    assert "test_timeouts.py" in cause.text
    assert "test_timed_out_task_fails_alone" not in cause.text  # only the task's frames


def test_timeout_applies_per_item_inside_a_chunk(timed_backend: str, gates: Gates) -> None:
    hang = gates.new(timed_backend)

    def task(x: int) -> int:
        if x == 3:
            hang.wait(60)
        return x

    it = taskfan.imap(
        task,
        range(8),
        backend=timed_backend,
        workers=1,
        timeout=0.5,
        chunksize=8,
        errors="return",
        progress=False,
    )
    got = list(it)
    assert isinstance(got[3], TaskTimeout)
    assert [g for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert it.report.timed_out == 1 and it.report.failed == 1 and it.report.ok == 7


def test_timed_out_task_is_retried(timed_backend: str, gates: Gates) -> None:
    hang = gates.new(timed_backend)
    with taskfan.SafeCounter.make(timed_backend) as attempts:  # its server stops whatever happens

        def task(x: int) -> int:
            if attempts.increment(x) == 1 and x == 1:
                hang.wait(60)
            return x

        runner = taskfan.Runner(
            backend=timed_backend, workers=2, timeout=0.5, retries=1, backoff=0, progress=False
        )
        for i in range(3):
            runner.add(i, task, i)
        results = runner.run()
    assert dict(results) == {0: 0, 1: 1, 2: 2}
    assert results.outcomes[1].attempts == 2 and results.report.retried == 1


def test_timeout_with_one_worker_runs_on_a_thread(gates: Gates) -> None:
    hang = gates.new()
    main = threading.get_ident()

    def task(x: int) -> Any:
        if x:
            hang.wait(60)
        return threading.get_ident()

    got = taskfan.map(task, [0, 1], workers=1, timeout=0.3, errors="return", progress=False)
    assert got[0] != main and isinstance(got[1], TaskTimeout)
