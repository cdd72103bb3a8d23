"""amap and aimap over async inputs: longer than what the engine can hold at once, and
slower than the rate limit.

The first runs in a fresh interpreter with a time limit: the failure it guards against
is the event loop's thread spinning without ever yielding, which nothing inside the
loop (a timeout, a cancellation) could interrupt. The second counts the engine's steps:
its failure was a loop that did yield, but woke again at once, for nothing.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import asyncio, sys
import taskfan

async def inc(x):
    return x + 1

async def numbers(n):
    for i in range(n):
        yield i

async def main(n, workers):
    results = await taskfan.amap(inc, numbers(n), workers=workers, progress=False)
    assert results == list(range(1, n + 1))
    total = 0
    async for value in taskfan.aimap(inc, numbers(n), workers=workers, progress=False):
        total += value
    assert total == n * (n + 1) // 2
    print("ok")

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


@pytest.mark.parametrize(("n", "workers"), [(1000, 4), (200, 100)])
def test_an_async_generator_longer_than_the_workers_can_hold(n: int, workers: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(workers)],
        capture_output=True,
        text=True,
        check=False,
        timeout=8,  # it takes well under a second
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.timeout(30)
def test_an_async_input_slower_than_the_rate_is_waited_for_not_polled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each item arrives 500 loop turns after the one before; the rate slot (0.1 ms) has
    # passed by then. The engine used to take "input not ended" for work to start at
    # that slot and to wait 0 s, again and again, until the item came: a loop that
    # spun (1.0 s of CPU in 1.1 s for 5 items 0.2 s apart). It must sleep until the
    # input's notice instead: a few steps per item, whatever the input's pace.
    import asyncio

    import taskfan
    from taskfan._engine import Engine

    steps = 0
    step = Engine._astep

    async def counted(self: Engine, *args: object) -> None:
        nonlocal steps
        steps += 1
        await step(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "_astep", counted)

    async def slow_input() -> object:
        for i in range(5):
            for _ in range(500):
                await asyncio.sleep(0)
            yield i

    async def same(x: int) -> int:
        return x

    async def main() -> list[int]:
        return [r async for r in taskfan.aimap(same, slow_input(), rate=10_000, progress=False)]

    assert asyncio.run(main()) == list(range(5))
    assert steps <= 50, f"{steps} engine steps for 5 items"
