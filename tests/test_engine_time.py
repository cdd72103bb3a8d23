"""Retry, backoff, rate and log timing, checked exactly in virtual time (a MockClock)."""

from __future__ import annotations

import itertools
import logging
import math
import random
from typing import Any

import pytest

from taskfan._clock import MockClock
from taskfan._engine import RETRY_COALESCE, Engine, Job
from taskfan._options import make_options, plan
from taskfan.backends._base import SINGLE


def run(fn: Any, items: list[Any], clock: MockClock, seed: int = 7, **options: Any) -> Engine:
    opts = make_options("test", {"backend": "serial", "progress": False, **options})
    engine = Engine(
        Job(fn, SINGLE, items, len(items)),
        opts,
        plan(opts, fn),
        clock=clock,
        rng=random.Random(seed),
    )
    for _ in engine.run():
        pass
    return engine


class Flaky:
    """Fails the first ``failures`` attempts of each item, recording when each started."""

    def __init__(self, clock: MockClock, failures: int, error: type[Exception] = OSError):
        self.clock, self.failures, self.error = clock, failures, error
        self.starts: dict[Any, list[float]] = {}

    def __call__(self, item: Any) -> Any:
        starts = self.starts.setdefault(item, [])
        starts.append(self.clock.now())
        if len(starts) <= self.failures:
            raise self.error(f"attempt {len(starts)} of {item}")
        return item


def test_backoff_doubles_with_full_jitter_capped_by_backoff_max() -> None:
    clock = MockClock()
    task = Flaky(clock, failures=5)
    engine = run(task, ["a"], clock, retries=5, backoff=1.0, backoff_max=6.0)
    starts = task.starts["a"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    caps = [1.0, 2.0, 4.0, 6.0, 6.0]
    rng = random.Random(7)
    assert gaps == pytest.approx([rng.uniform(0, cap) for cap in caps])
    assert all(0 <= gap <= cap for gap, cap in zip(gaps, caps, strict=True))
    assert engine.report.ok == 1 and engine.report.retried == 5


def test_retries_exhausted_fail_with_the_last_error() -> None:
    clock = MockClock()
    task = Flaky(clock, failures=10)
    opts = make_options(
        "test", {"backend": "serial", "progress": False, "retries": 2, "backoff": 0}
    )
    engine = Engine(Job(task, SINGLE, ["x"], 1), opts, plan(opts, task), clock=clock)
    pieces = list(engine.run())
    [piece] = pieces
    assert piece.ran(0)[0].attempt == 3
    assert piece.failures is not None and str(piece.failures[0].error) == "attempt 3 of x"
    assert (engine.report.failed, engine.report.retried) == (1, 2)
    assert clock.sleeps == []  # backoff=0 retries at once


def test_retry_on_limits_which_errors_are_retried() -> None:
    clock = MockClock()
    task = Flaky(clock, failures=1, error=KeyError)
    engine = run(task, ["k"], clock, retries=3, retry_on=(OSError,), errors="return")
    assert len(task.starts["k"]) == 1 and engine.report.failed == 1


def test_retries_due_together_go_out_together_none_late_none_a_slot_early() -> None:
    # 200 tasks fail at once, in one chunk; their delays are drawn in offset order, so
    # a generator seeded alike says when each falls due. The serial backend's slot is
    # RETRY_COALESCE (2 ms) wide: 200 delays within 10 ms end in at most 6 slots.
    clock = MockClock()
    task = Flaky(clock, failures=1)
    t0 = clock.now()
    n, backoff = 200, 0.01
    engine = run(task, list(range(n)), clock, retries=1, backoff=backoff, chunksize=n)
    rng = random.Random(7)
    due = [t0 + rng.random() * backoff for _ in range(n)]
    retried_at = [task.starts[x][1] for x in range(n)]
    assert all(at <= when for at, when in zip(retried_at, due, strict=True))  # none late
    early = [when - at for at, when in zip(retried_at, due, strict=True)]
    assert max(early) < RETRY_COALESCE  # none more than a slot early
    assert len(set(retried_at)) <= math.ceil(backoff / RETRY_COALESCE) + 1  # one call a slot
    assert min(retried_at) == pytest.approx(min(due))  # the first due starts right on time
    assert engine.report.ok == n and engine.report.retried == n


def test_rate_spaces_task_starts_evenly_without_burst() -> None:
    clock = MockClock()
    starts: list[float] = []

    def task(item: int) -> int:
        starts.append(clock.now())
        return item

    run(task, list(range(6)), clock, rate="120/min")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.5] * 5)


def test_retries_wait_while_other_items_keep_running() -> None:
    clock = MockClock()
    task = Flaky(clock, failures=1)
    t0 = clock.now()
    engine = run(task, ["a", "b", "c"], clock, retries=1, backoff=10.0, chunksize=1)
    # b and c ran at once; only the retries waited for their backoff.
    assert task.starts["b"][0] == task.starts["c"][0] == t0
    assert engine.report.ok == 3 and engine.report.retried == 3


def test_log_progress_emits_a_line_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = MockClock()

    def slow(item: int) -> int:
        clock.advance(1.0)
        return item

    with caplog.at_level(logging.INFO, logger="taskfan"):
        run(slow, list(range(12)), clock, progress="log", progress_every=5, desc="job", chunksize=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "taskfan"]
    assert any(line.startswith("job: ") and "/12 done" in line for line in lines)
    assert lines[-1].startswith("job: 12 tasks: 12 ok")
    assert 2 <= len(lines) - 1 <= 3  # about one line per 5 s of a 12 s run


@pytest.mark.parametrize("items", [[1], iter([1])], ids=["list", "iterator"])
def test_a_rate_adds_no_wait_after_the_last_task(items: Any) -> None:
    clock = MockClock()
    engine = Engine(
        Job(abs, SINGLE, items, None),
        make_options("test", {"backend": "serial", "progress": False, "rate": "1/min"}),
        plan(make_options("test", {"backend": "serial"}), abs),
        clock=clock,
    )
    assert [p.values for p in engine.run()] == [[1]]
    assert sum(clock.sleeps) == 0  # one task: nothing to space out


def test_a_rate_spaces_starts_and_stops_with_the_input() -> None:
    clock = MockClock()
    starts: list[float] = []

    def task(x: int) -> int:
        starts.append(clock.now())
        return x

    run(task, list(range(3)), clock, rate="2/s")
    assert [s - starts[0] for s in starts] == pytest.approx([0.0, 0.5, 1.0])
    assert sum(clock.sleeps) == pytest.approx(1.0)  # no slot waited for after the last


class FailsOnce:
    """Item 0 fails its first attempt; records the virtual time of every start."""

    def __init__(self, clock: MockClock, value: Any = None) -> None:
        self.clock, self.value = clock, value
        self.starts: list[tuple[int, float]] = []

    def __call__(self, x: int) -> Any:
        self.starts.append((x, self.clock.now()))
        if x == 0 and sum(1 for i, _ in self.starts if i == 0) == 1:
            raise OSError("first attempt of the head task")
        return x if self.value is None else self.value


def test_a_head_task_waiting_for_its_retry_stops_no_intake_of_small_results() -> None:
    # 100,000 tasks is more than the automatic window's count: a window that counted
    # the results waiting behind the head task would stop intake until its retry.
    clock = MockClock()
    task = FailsOnce(clock)
    n = 100_000
    engine = run(task, list(range(n)), clock, retries=1, backoff=10.0)
    retry_at = [t for x, t in task.starts if x == 0][1]
    assert retry_at > 1000.0  # it waited out a backoff (the clock starts at 1000)
    ran_before_retry = sum(1 for x, t in task.starts if x != 0 and t < retry_at)
    assert ran_before_retry == n - 1
    assert engine.report.ok == n


def test_a_head_task_waiting_for_its_retry_stops_intake_at_the_byte_bound() -> None:
    clock = MockClock()
    megabyte = b"x" * 1_000_000
    task = FailsOnce(clock, value=megabyte)
    engine = run(task, list(range(500)), clock, retries=1, backoff=10.0, window_bytes="20MB")
    retry_at = [t for x, t in task.starts if x == 0][1]
    ran_before_retry = sum(1 for x, t in task.starts if x != 0 and t < retry_at)
    assert 20 <= ran_before_retry <= 120  # up to the bound, plus what was on its way
    assert engine.report.ok == 500
