"""Thread scenarios of the core issue: tiny calls, sleeping I/O, memory over a generator."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool
from typing import Any

import taskfan

from ._harness import RSS_STATUS, Runner, Scenario, median_times


def square(x: int) -> int:
    return x * x


def nap(_: int) -> None:
    time.sleep(0.01)


def _joblib(fn: object, items: Sequence[Any], workers: int) -> Runner | None:
    try:
        from joblib import Parallel, delayed
    except ImportError:
        return None
    return lambda: Parallel(n_jobs=workers, backend="threading")(
        delayed(fn)(x)  # type: ignore[operator]
        for x in items
    )


def _mpire(fn: object, items: Sequence[Any], workers: int) -> Runner | None:
    try:
        from mpire import WorkerPool
    except ImportError:
        return None

    def run() -> object:
        with WorkerPool(n_jobs=workers, start_method="threading") as pool:
            return pool.map(fn, items)

    return run


def _threadpool(fn: object, items: Sequence[Any], workers: int) -> Runner:
    def run() -> object:
        with ThreadPool(workers) as pool:
            return pool.map(fn, items)  # type: ignore[arg-type]

    return run


def _executor(fn: object, items: Sequence[Any], workers: int) -> Runner:
    def run() -> object:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))  # type: ignore[arg-type]

    return run


def tiny_calls(repeats: int, n: int = 100_000, workers: int = 4) -> Scenario:
    """100,000 calls of x*x on 4 threads, each failure captured per item (taskfan)."""
    items = range(n)
    expected = [square(x) for x in items]

    def check(name: str, result: object) -> None:
        assert list(result) == expected, name  # type: ignore[call-overload]

    contenders: dict[str, Runner | None] = {
        "taskfan": lambda: taskfan.map(square, items, workers=workers, progress=False),
        "ThreadPool.map": _threadpool(square, items, workers),
        "ThreadPoolExecutor.map": _executor(square, items, workers),
        "joblib": _joblib(square, items, workers),
        "mpire": _mpire(square, items, workers),
    }
    times = median_times(contenders, repeats, check)
    return Scenario(
        f"{n:,} tiny calls, {workers} threads, range input",
        "items/s",
        True,
        {k: (n / t if t else None) for k, t in times.items()},
    )


def sleeping_io(repeats: int, n: int = 2000, workers: int = 100) -> Scenario:
    """2,000 calls of sleep(10 ms) on 100 threads: efficiency = ideal time / wall time."""
    items = range(n)
    ideal = n * 0.01 / workers
    contenders: dict[str, Runner | None] = {
        "taskfan": lambda: taskfan.map(nap, items, workers=workers, progress=False),
        "ThreadPool.map": _threadpool(nap, items, workers),
        "ThreadPoolExecutor.map": _executor(nap, items, workers),
        "joblib": _joblib(nap, items, workers),
        "mpire": _mpire(nap, items, workers),
    }
    times = median_times(contenders, repeats)
    return Scenario(
        f"{n:,} x sleep(10 ms), {workers} threads, range input",
        "efficiency",
        True,
        {k: (ideal / t if t else None) for k, t in times.items()},
    )


_MEMORY_PROBE = """
import sys, time

{rss_status}
def inc(x):
    return x + 1

n = int(sys.argv[2])
{setup}
for value in {iterate_warm}:  # warm up: imports, threads, caches
    pass
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS:")
gen = (i for i in range(n))
t0 = time.perf_counter()
total = 0
for value in {iterate}:
    total += value
elapsed = time.perf_counter() - t0
assert total == n * (n + 1) // 2, total
print(status("VmHWM:") - base, elapsed)
"""

_MEMORY_CONTENDERS = {
    "taskfan": ("import taskfan", "taskfan.imap(inc, {src}, workers=4, progress=False)"),
    "ThreadPool.imap": (
        "from multiprocessing.pool import ThreadPool; pool = ThreadPool(4)",
        "pool.imap(inc, {src}, chunksize=1000)",
    ),
    "ThreadPoolExecutor.map": (
        "from concurrent.futures import ThreadPoolExecutor; pool = ThreadPoolExecutor(4)",
        "pool.map(inc, {src})",
    ),
}


def memory(n: int = 2_000_000, skip: tuple[str, ...] = ()) -> Scenario:
    """Peak RSS growth while streaming a generator of n ints through each contender."""
    figures: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name, (setup, iterate) in _MEMORY_CONTENDERS.items():
        if name in skip:
            figures[name], notes[name] = None, "skipped"
            continue
        code = _MEMORY_PROBE.format(
            rss_status=RSS_STATUS,
            setup=setup,
            iterate=iterate.format(src="gen"),
            iterate_warm=iterate.format(src="range(1000)"),
        )
        out = subprocess.run(
            [sys.executable, "-c", code, name, str(n)], capture_output=True, text=True, check=True
        )
        grown, elapsed = (float(v) for v in out.stdout.split())
        figures[name] = grown
        notes[name] = f"{elapsed:.1f} s"
    return Scenario(f"imap over {n:,} ints (RSS growth)", "MB", False, figures, notes)
