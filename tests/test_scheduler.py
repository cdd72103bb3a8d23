"""The scheduler on the workloads users have: slow tasks among fast ones, retries, large
results. Each behaviour is pinned by synchronisation (gates and counters), not timing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import taskfan

from .conftest import Gates

N = 60
BLOCKED = 5


def _shared_counter(backend: str) -> taskfan.SafeCounter:
    return taskfan.SafeCounter.make(backend)


@pytest.mark.timeout(60)
def test_no_work_waits_behind_a_blocked_task(backend: str, parallel: bool, gates: Gates) -> None:
    # Tiny tasks travel in chunks; task 5 blocks until every other task has run. If the
    # tasks after it in its chunk waited for it, it would wait out its 30 s bound.
    if not parallel:
        pytest.skip("one worker: everything waits behind a blocked task")
    release = gates.new(backend)
    with _shared_counter(backend) as done:

        def task(x: int) -> Any:
            if x == BLOCKED:
                return release.wait(30)  # True only if the others released it
            if done.increment("ran") == N - 1:
                release.set()
            return x

        got = taskfan.map(task, range(N), backend=backend, workers=2, progress=False)
    assert got[BLOCKED] is True, "tasks queued behind the blocked one never ran"
    assert got[:BLOCKED] + got[BLOCKED + 1 :] == [x for x in range(N) if x != BLOCKED]


@pytest.mark.timeout(60)
def test_results_do_not_wait_for_a_slow_chunk_mate(
    backend: str, parallel: bool, gates: Gates
) -> None:
    # The consumer releases task 5 only once it holds every result before it: finished
    # results must reach it while their chunk mate still runs.
    if not parallel:
        pytest.skip("one worker: nothing else runs while a task is blocked")
    release = gates.new(backend)

    def task(x: int) -> Any:
        return release.wait(30) if x == BLOCKED else x

    it = taskfan.imap(task, range(N), backend=backend, workers=2, ordered=False, progress=False)
    seen: dict[int, Any] = {}
    with it:
        for position, value in enumerate(it):
            seen[value if value is not True else BLOCKED] = (position, value)
            if all(x in seen for x in range(BLOCKED)) and not release.is_set():
                release.set()
    assert seen[BLOCKED][1] is True, "results before the blocked task waited for it"
    assert sorted(seen) == list(range(N))


class _Heavy:
    """A result that says it weighs 100 MB (``sys.getsizeof`` asks ``__sizeof__``)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __sizeof__(self) -> int:
        return 100 * 2**20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("front", ["map", "amap"])
def test_map_takes_tasks_behind_a_slow_head_whatever_its_results_weigh(
    backend: str, parallel: bool, gates: Gates, front: str
) -> None:
    # map holds every result until it returns, so holding results back to keep their
    # order bounds no memory: the weight of the results behind a slow head task (three
    # of these pass the default window_bytes) must not stop intake. Task 0 ends only
    # once every other task has run. (imap keeps its bound: see test_engine_time.)
    if not parallel:
        pytest.skip("one worker: everything waits behind a blocked task")
    import time

    n = 200
    release = gates.new(backend)
    with _shared_counter(backend) as done:

        def task(x: int) -> Any:
            if x == 0:
                return release.wait(30)  # True only if the others released it
            time.sleep(0.002)  # not tiny: tasks are taken a few at a time
            if done.increment("ran") == n - 1:
                release.set()
            return _Heavy(x)

        options = {"backend": backend, "workers": 2, "progress": False}
        if front == "map":
            got = taskfan.map(task, range(n), **options)
        else:
            got = asyncio.run(taskfan.amap(task, range(n), **options))
    assert got[0] is True, "tasks behind the head were not taken until it ended"
    assert [g.x for g in got[1:]] == list(range(1, n))


def _chaos(x: int) -> int:
    """Mostly instant; some slow, some too slow (timeouts), some fail, some kill their
    worker process: chunks are cut, recalled, timed out and crashed all at once."""
    import multiprocessing
    import os
    import random
    import time

    r = random.Random(x).random()
    if r < 0.05:
        time.sleep(0.08)  # slow: its chunk gets cut
    if r > 0.995:
        raise ValueError(x)
    if 0.5 < r < 0.51:
        time.sleep(3)  # past the timeout
    if 0.7 < r < 0.71 and multiprocessing.current_process().name != "MainProcess":
        os._exit(3)
    return x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ordered", [True, False])
def test_every_task_ends_exactly_once_when_chunks_are_cut(
    backend: str, parallel: bool, ordered: bool
) -> None:
    if not parallel:
        pytest.skip("no chunk is cut inline")
    n = 600
    it = taskfan.imap(
        _chaos,
        list(range(n)),
        backend=backend,
        workers=3,
        timeout=0.5,
        errors="return",
        ordered=ordered,
        progress=False,
    )
    got = list(it)
    values = sorted(g for g in got if isinstance(g, int))
    assert len(got) == n and len(values) == len(set(values))
    report = it.report
    assert (report.total, report.ok + report.failed, report.cancelled) == (n, n, 0)
    assert report.ok == len(values) and report.timed_out >= 1
    if ordered:
        assert [g for g in got if isinstance(g, int)] == values
