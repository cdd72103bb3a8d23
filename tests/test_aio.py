"""``amap``, ``aimap`` and ``async with Parallelized``, under a real event loop.

Each test runs its coroutine with ``asyncio.run``: the loop is created and closed by
the test, so anything left pending on it would show (``asyncio.run`` cancels it, and
the autouse check in conftest.py finds any thread or process left behind).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

import taskfan
from taskfan import TaskTimeout

from .conftest import Gates

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_amap_runs_coroutines_on_the_callers_loop_in_order() -> None:
    async def main() -> tuple[list[int], set[int]]:
        loops: set[int] = set()

        async def task(x: int) -> int:
            loops.add(id(asyncio.get_running_loop()))
            await asyncio.sleep(0.001 * (x % 3))
            return x * x

        got = await taskfan.amap(task, range(50), workers=10)
        assert loops == {id(asyncio.get_running_loop())}
        return got, loops

    got, _ = run(main)
    assert got == [x * x for x in range(50)]


@pytest.mark.parametrize("errors", ["return", "skip", "raise"])
def test_amap_error_modes(errors: str) -> None:
    async def task(x: int) -> int:
        await asyncio.sleep(0)
        if x == 3:
            raise ValueError("three")
        return x

    async def main() -> Any:
        return await taskfan.amap(task, range(6), errors=errors)

    if errors == "raise":
        with pytest.raises(ValueError, match="three"):
            run(main)
        return
    got = run(main)
    if errors == "skip":
        assert got == [0, 1, 2, 4, 5]
    else:
        assert got[:3] + got[4:] == [0, 1, 2, 4, 5] and isinstance(got[3], ValueError)
        assert "raise ValueError" in got[3].__cause__.text  # the task's own traceback


def test_retries_then_success() -> None:
    tries: dict[int, int] = {}

    async def flaky(x: int) -> int:
        tries[x] = tries.get(x, 0) + 1
        await asyncio.sleep(0)
        if x % 4 == 0 and tries[x] == 1:
            raise ConnectionError(x)
        return x

    async def main() -> tuple[list[int], taskfan.Report]:
        it = taskfan.aimap(flaky, range(20), retries=2, backoff=0.01)
        got = [x async for x in it]
        return got, it.report

    got, report = run(main)
    assert got == list(range(20))
    assert report.retried == 5 and report.ok == 20 and report.failed == 0


def test_a_timeout_cancels_the_coroutine_and_its_finally_runs() -> None:
    cleaned: list[int] = []

    async def task(x: int) -> int:
        try:
            await asyncio.sleep(1000 if x == 2 else 0)
            return x
        finally:
            cleaned.append(x)

    async def main() -> list[Any]:
        return await taskfan.amap(task, range(4), timeout=0.2, errors="return")

    got = run(main)
    assert got[:2] + got[3:] == [0, 1, 3] and isinstance(got[2], TaskTimeout)
    assert sorted(cleaned) == [0, 1, 2, 3]
    assert "asyncio.sleep(1000" in got[2].__cause__.text  # where it was waiting


def test_aimap_pulls_an_async_iterable_only_as_the_window_allows() -> None:
    pulled = 0

    async def source() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    async def main() -> list[int]:
        taken = []
        async with taskfan.aimap(double, source(), window=20) as it:
            async for value in it:
                taken.append(value)
                if len(taken) == 5:
                    break
        return taken

    assert run(main) == [0, 2, 4, 6, 8]
    assert pulled <= 5 + 2 * 20 + 1  # the window, plus what the feed reads ahead of it


def test_amap_over_an_async_generator_that_fails_keeps_what_was_taken() -> None:
    async def source() -> AsyncIterator[int]:
        for i in range(5):
            yield i
        raise OSError("the input broke")

    async def main() -> list[int]:
        return await taskfan.amap(double, source())

    with pytest.raises(OSError, match="the input broke") as raised:
        run(main)
    assert "after 5 items" in str(raised.value.__notes__)


def test_unordered_aimap_yields_in_completion_order() -> None:
    async def main() -> list[int]:
        release = asyncio.Event()

        async def task(x: int) -> int:
            if x == 0:
                await release.wait()  # set once the others came back
            return x

        got = []
        async for value in taskfan.aimap(task, range(5), ordered=False, workers=5):
            got.append(value)
            if len(got) == 4:
                release.set()
        return got

    got = run(main)
    assert got[-1] == 0 and sorted(got) == [0, 1, 2, 3, 4]


def test_cancelling_the_awaiting_task_cancels_every_coroutine() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def stuck(x: int) -> int:
        started.append(x)
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> None:
        caller = asyncio.create_task(taskfan.amap(stuck, range(30), workers=10))
        while len(started) < 10:
            await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert pending == []

    run(main)
    assert sorted(cancelled) == sorted(started) and len(started) == 10


def test_breaking_out_of_aimap_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def task(x: int) -> int:
        if x == 0:
            return x
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def main() -> None:
        async for value in taskfan.aimap(task, range(6), workers=6, ordered=False):
            assert value == 0
            break
        for _ in range(10):  # the dropped iterator's cleanup runs on the next turns
            await asyncio.sleep(0)

    run(main)
    assert sorted(cancelled) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_plain_functions_run_on_a_backend_without_blocking_the_loop(backend: str) -> None:
    async def main() -> tuple[list[int], int]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.001)

        beat = asyncio.create_task(ticker())
        got = await taskfan.amap(_slow_square, range(6), backend=backend, workers=2)
        done = True
        await beat
        return got, ticks

    got, ticks = run(main)
    assert got == [x * x for x in range(6)]
    assert ticks >= 5  # the loop went on while the tasks ran (each takes 20 ms)


def _slow_square(x: int) -> int:
    threading.Event().wait(0.02)
    return x * x


def test_map_of_coroutines_inside_a_running_loop_points_to_amap() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"taskfan\.amap"):
            taskfan.map(double, [1, 2])

    run(main)


def test_amap_refuses_to_run_tasks_inline_on_the_loop() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="block the event loop"):
            await taskfan.amap(abs, [1], backend="serial")

    run(main)


def test_async_parallelized_yields_kwargs_result_error() -> None:
    async def task(a: int, b: int) -> int:
        await asyncio.sleep(0)
        if a == 2:
            raise KeyError(a)
        return a + b

    async def main() -> list[tuple[Any, Any, Any]]:
        seen = []
        async with taskfan.Parallelized(task, [{"a": i, "b": 10} for i in range(4)]) as p:
            async for kwargs, result, error in p:
                seen.append((kwargs["a"], result, type(error).__name__ if error else None))
        return seen

    assert sorted(run(main)) == [(0, 10, None), (1, 11, None), (2, None, "KeyError"), (3, 13, None)]


def test_the_sync_map_runs_coroutines_on_a_loop_of_its_own() -> None:
    got = taskfan.map(double, range(100), workers=20, progress=False)
    assert got == [2 * x for x in range(100)]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_cancelling_amap_of_plain_functions_releases_the_workers(
    backend: str, gates: Gates
) -> None:
    release = gates.new(backend)
    started = gates.new(backend)

    async def main() -> None:
        caller = asyncio.create_task(
            taskfan.amap(_wait_for, [(started, release)] * 4, backend=backend, workers=2)
        )
        while not started.is_set():  # a task is running in a worker
            await asyncio.sleep(0.001)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    run(main)
    # The autouse check (conftest.py) fails the test if a worker process is still alive;
    # the threads are released with the gates, when the test ends.


def _wait_for(events: tuple[Any, Any]) -> bool:
    started, release = events
    started.set()
    return bool(release.wait(60))


def test_amap_with_a_journal_reruns_only_what_failed(tmp_path: Any) -> None:
    journal = str(tmp_path / "run.db")
    ran: list[int] = []

    async def task(x: int) -> int:
        ran.append(x)
        await asyncio.sleep(0)
        if x == 3 and ran.count(3) == 1:
            raise ValueError("once")
        return x * 10

    async def main() -> tuple[list[Any], list[Any], taskfan.Report]:
        first = await taskfan.amap(task, range(6), journal=journal, errors="return")
        it = taskfan.aimap(task, range(6), journal=journal)
        second = [x async for x in it]
        return first, second, it.report

    first, second, report = run(main)
    assert first[:3] + first[4:] == [0, 10, 20, 40, 50] and isinstance(first[3], ValueError)
    assert second == [0, 10, 20, 30, 40, 50]
    assert sorted(ran) == [0, 1, 2, 3, 3, 4, 5]  # only the failed one ran again
    assert report.resumed == 5
