"""asyncio scenarios of issue 8: sleeping coroutines, and memory over an async generator.

- ``sleep``: 2,000 coroutines of ``asyncio.sleep(10 ms)``, 100 at once. The figure is
  the efficiency (ideal time / wall time, ideal 0.2 s). Peers are asyncio's own ways to
  bound concurrency (``gather`` or a ``TaskGroup`` behind a ``Semaphore``) and aiometer.
  ``taskfan.amap`` and the blocking ``taskfan.map`` (backend auto: async, on a loop of
  its own in a thread) are timed in the same interleaved runs: two rows, same peers.
- ``many``: 100,000 coroutines of ``asyncio.sleep(1 ms)``, 1,000 at once: throughput,
  compared with ``gather`` behind a ``Semaphore(1000)``.
- ``memory``: ``aimap`` over an async generator of 1,000,000 items and a trivial
  coroutine: peak RSS growth, each contender in a fresh Python process.

Every async contender runs in its own ``asyncio.run`` (a new loop each run), so all pay
the same loop setup and teardown.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import taskfan

from ._harness import RSS_STATUS, Runner, Scenario, median_times

GATHER = "gather+Semaphore"
TASKGROUP = "TaskGroup+Semaphore"
AIOMETER = "aiometer"
#: a subprocess of the memory scenario that runs longer than this is killed
MEMORY_TIMEOUT = 60.0

AsyncFn = Callable[[int], Awaitable[Any]]


async def nap_10ms(x: int) -> int:
    await asyncio.sleep(0.01)
    return x


async def nap_1ms(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


def _amap(fn: AsyncFn, items: Sequence[int], workers: int) -> Runner:
    return lambda: asyncio.run(taskfan.amap(fn, items, workers=workers, progress=False))


def _map(fn: AsyncFn, items: Sequence[int], workers: int) -> Runner:
    return lambda: taskfan.map(fn, items, workers=workers, progress=False)


def _gather(fn: AsyncFn, items: Sequence[int], workers: int) -> Runner:
    async def main() -> list[Any]:
        limit = asyncio.Semaphore(workers)

        async def one(x: int) -> Any:
            async with limit:
                return await fn(x)

        return await asyncio.gather(*(one(x) for x in items))

    return lambda: asyncio.run(main())


def _taskgroup(fn: AsyncFn, items: Sequence[int], workers: int) -> Runner:
    async def main() -> list[Any]:
        limit = asyncio.Semaphore(workers)

        async def one(x: int) -> Any:
            async with limit:
                return await fn(x)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(x)) for x in items]
        return [task.result() for task in tasks]

    return lambda: asyncio.run(main())


def _aiometer(fn: AsyncFn, items: Sequence[int], workers: int) -> Runner | None:
    try:
        import aiometer
    except ImportError:
        return None

    async def main() -> list[Any]:
        jobs = [functools.partial(fn, x) for x in items]
        return await aiometer.run_all(jobs, max_at_once=workers)

    return lambda: asyncio.run(main())


def _checker(expected: list[int]) -> Callable[[str, object], None]:
    def check(name: str, result: object) -> None:
        assert list(result) == expected, name  # type: ignore[call-overload]

    return check


def sleeping(repeats: int, n: int = 2000, workers: int = 100) -> list[Scenario]:
    """Two rows, from the same interleaved runs: ``amap``, then ``map`` of a coroutine
    function, each against the same peers."""
    items = range(n)
    ideal = n * 0.01 / workers
    peers: dict[str, Runner | None] = {
        GATHER: _gather(nap_10ms, items, workers),
        TASKGROUP: _taskgroup(nap_10ms, items, workers),
        AIOMETER: _aiometer(nap_10ms, items, workers),
    }
    ours = {"amap": _amap(nap_10ms, items, workers), "map": _map(nap_10ms, items, workers)}
    times = median_times({**ours, **peers}, repeats, _checker(list(items)))
    efficiency = {k: (ideal / t if t else None) for k, t in times.items()}
    rows = []
    for front, how in (("amap", "await taskfan.amap"), ("map", "taskfan.map, backend auto")):
        figures = {"taskfan": efficiency[front], **{k: efficiency[k] for k in peers}}
        notes = _not_installed(peers)
        notes["taskfan"] = _sleep_target(figures)
        rows.append(
            Scenario(
                f"{n:,} x asyncio.sleep(10 ms), {workers} at once, {how} (ideal {ideal:.1f} s)",
                "efficiency",
                True,
                figures,
                notes,
            )
        )
    return rows


def _sleep_target(figures: dict[str, float | None]) -> str:
    ours, gather = figures["taskfan"], figures[GATHER]
    met = ours is not None and gather is not None and ours >= 0.85 and ours >= gather
    return f"target >= 85% and >= {GATHER}: {'met' if met else 'missed'}"


def many(repeats: int, n: int = 100_000, workers: int = 1000) -> Scenario:
    """100,000 x sleep(1 ms), 1,000 at once: throughput against gather+Semaphore."""
    items = range(n)
    peers: dict[str, Runner | None] = {
        GATHER: _gather(nap_1ms, items, workers),
        TASKGROUP: _taskgroup(nap_1ms, items, workers),
        AIOMETER: _aiometer(nap_1ms, items, workers),
    }
    contenders = {"taskfan": _amap(nap_1ms, items, workers), **peers}
    # Seconds per run: no warm-up run, the first timed run is checked off the clock.
    times = median_times(contenders, repeats, _checker(list(items)), warmup=False)
    figures = {k: (n / t if t else None) for k, t in times.items()}
    notes = _not_installed(peers)
    ours, gather = figures["taskfan"], figures[GATHER]
    if ours and gather:
        verdict = "met" if ours >= 0.9 * gather else "missed"
        notes["taskfan"] = f"{ours / gather:.2f}x {GATHER}, target >= 0.9x: {verdict}"
    return Scenario(
        f"{n:,} x asyncio.sleep(1 ms), {workers} at once, await taskfan.amap",
        "items/s",
        True,
        figures,
        notes,
        reference=GATHER,
    )


def _not_installed(contenders: dict[str, Runner | None]) -> dict[str, str]:
    return {k: "not installed" for k, run in contenders.items() if run is None}


_MEMORY_PROBE = """
import asyncio, sys, time

{rss_status}
async def inc(x):
    return x + 1

async def numbers(n):
    for i in range(n):
        yield i

{setup}

async def main(n):
    await run(numbers(1000))  # warm up: imports, caches
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS:")
    t0 = time.perf_counter()
    total = await run(numbers(n))
    elapsed = time.perf_counter() - t0
    assert total == n * (n + 1) // 2, total
    print(status("VmHWM:") - base, elapsed)

asyncio.run(main(int(sys.argv[2])))
"""

_TASKFAN = """
import taskfan

async def run(source):
    total = 0
    async for value in taskfan.aimap(inc, source, workers=100, progress=False):
        total += value
    return total
"""

# The bounded way to stream an async source by hand: a queue and 100 worker tasks.
_QUEUE = """
async def run(source):
    queue = asyncio.Queue(200)
    total = 0

    async def worker():
        nonlocal total
        while (x := await queue.get()) is not None:
            total += await inc(x)

    workers = [asyncio.create_task(worker()) for _ in range(100)]
    async for x in source:
        await queue.put(x)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    return total
"""

# The naive way: a task for every item at once, 100 of them running at a time.
_GATHER_ALL = """
async def run(source):
    limit = asyncio.Semaphore(100)

    async def one(x):
        async with limit:
            return await inc(x)

    return sum(await asyncio.gather(*[one(x) async for x in source]))
"""

_MEMORY_CONTENDERS = {
    "taskfan": _TASKFAN,
    "Queue + 100 tasks": _QUEUE,
    GATHER: _GATHER_ALL,
}


def memory(n: int = 1_000_000, skip: tuple[str, ...] = ()) -> Scenario:
    """Peak RSS growth while streaming an async generator of n ints through each."""
    figures: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name, setup in _MEMORY_CONTENDERS.items():
        figures[name] = None
        if name in skip:
            notes[name] = "skipped"
            continue
        code = _MEMORY_PROBE.format(rss_status=RSS_STATUS, setup=setup)
        try:
            out = subprocess.run(
                [sys.executable, "-c", code, name, str(n)],
                capture_output=True,
                text=True,
                check=False,
                timeout=MEMORY_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            notes[name] = f"hang (killed after {MEMORY_TIMEOUT:.0f} s)"
            continue
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            notes[name] = f"failed: {last[:80]}"
            continue
        grown, elapsed = (float(v) for v in out.stdout.split())
        figures[name] = grown
        notes[name] = f"{elapsed:.1f} s"
    if figures["taskfan"] is not None:
        verdict = "met" if figures["taskfan"] <= 50 else "missed"
        notes["taskfan"] += f"; target <= 50 MB: {verdict}"
    return Scenario(
        f"aimap over an async generator of {n:,} ints (RSS growth)", "MB", False, figures, notes
    )
