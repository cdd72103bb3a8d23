"""amap and aimap over an async generator longer than what the engine can hold at once.

Run in a fresh interpreter with a time limit: the failure this guards against is the
event loop's thread spinning without ever yielding, which nothing inside the loop (a
timeout, a cancellation) could interrupt.
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
