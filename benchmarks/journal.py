"""Journal scenarios: what recording every task costs.

- ``rows``: 100,000 tiny calls with ``journal=`` on, as rows written per second of the
  whole call (the journal is complete when the call returns); the same call without a
  journal is the reference. Target: at least 200,000 rows/s.
- ``sleep``: 10,000 calls of ``time.sleep(0.001)`` on 32 threads, journal on and off,
  in the same process, interleaved; target: at most 1.1x the time without it.

Each timed run writes a fresh journal file (a resumed run would not run anything).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ._harness import Runner, Scenario, median_times

NO_JOURNAL = "taskfan, no journal"
ROWS_TARGET = 200_000
SLEEP_TARGET = 1.1


def square(x: int) -> int:
    return x * x


def nap_1ms(x: int) -> int:
    time.sleep(0.001)
    return x


def _journaled(
    fn: Callable[[int], Any], items: range, workers: int
) -> tuple[dict[str, Runner | None], Callable[[str, object], None], Callable[[], None]]:
    """Contenders with and without a journal, the check, and the cleanup."""
    import taskfan

    folder = tempfile.mkdtemp(prefix="taskfan-bench-journal-")
    numbers = itertools.count()
    paths: list[str] = []

    def with_journal() -> object:
        paths.append(os.path.join(folder, f"run-{next(numbers)}.db"))
        return taskfan.map(fn, items, workers=workers, progress=False, journal=paths[-1])

    def without() -> object:
        return taskfan.map(fn, items, workers=workers, progress=False)

    expected = [fn(x) for x in items] if fn is square else list(items)

    def check(name: str, result: object) -> None:
        assert result == expected, name
        if name == "taskfan":
            assert taskfan.Journal(paths[-1]).summary().counts["ok"] == len(items), name

    contenders: dict[str, Runner | None] = {"taskfan": with_journal, NO_JOURNAL: without}
    return contenders, check, lambda: shutil.rmtree(folder, ignore_errors=True)


def rows(repeats: int, n: int = 100_000, workers: int = 4) -> Scenario:
    """100,000 tiny calls on 4 threads with the journal on: rows recorded per second."""
    contenders, check, cleanup = _journaled(square, range(n), workers)
    try:
        times = median_times(contenders, repeats, check)
    finally:
        cleanup()
    figures = {k: (n / t if t else None) for k, t in times.items()}
    notes = {}
    ours = figures.get("taskfan")
    if ours:
        notes["taskfan"] = f"target >= {ROWS_TARGET:,} rows/s"
    return Scenario(
        f"{n:,} tiny calls, {workers} threads, journal on",
        "rows/s",
        True,
        figures,
        notes,
        reference=NO_JOURNAL,
    )


def sleep(repeats: int, n: int = 10_000, workers: int = 32) -> Scenario:
    """10,000 x sleep(1 ms) on 32 threads: the run's time with the journal on and off."""
    contenders, check, cleanup = _journaled(nap_1ms, range(n), workers)
    try:
        times = median_times(contenders, repeats, check)
    finally:
        cleanup()
    notes = {}
    ours, off = times.get("taskfan"), times.get(NO_JOURNAL)
    if ours and off:
        notes["taskfan"] = f"{ours / off:.2f}x without, target <= {SLEEP_TARGET}x"
    return Scenario(
        f"{n:,} x sleep(1 ms), {workers} threads, journal on",
        "s",
        False,
        dict(times),
        notes,
        reference=NO_JOURNAL,
    )
