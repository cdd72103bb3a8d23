"""Random mixed workloads on the real backends, checked against what must always hold.

``test_engine_random`` draws thousands of workloads in virtual time; here a few per
backend run for real: threads, processes (with workers that die), coroutines. Each task
looks up what its run is to do (the runs of a task are counted in a SafeCounter): return
at once or after a few milliseconds, raise one of two errors, kill its worker process,
or outlast the timeout. Whatever was drawn, every task comes back exactly once with the
outcome of its last run, retries stay within ``retries`` where every run is an attempt,
and the report counts what happened.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import pytest

import taskfan
from taskfan import TaskTimeout, WorkerCrashed
from taskfan.backends._registry import REGISTRY

SEEDS = range(6)
#: Seeds run on the process backend with taskfan's fork server too. Fewer: each worker it
#: forks imports this test module again (pytest with it: about 0.1 s), and seed 4
#: recycles a worker every two tasks.
SERVER_SEEDS = range(3)


def _skip_extra_server_seeds(request: pytest.FixtureRequest, seed: int) -> None:
    if request.node.callspec.params.get("backend") == "process-server" and seed not in SERVER_SEEDS:
        pytest.skip("the fork server runs the first seeds only (see SERVER_SEEDS)")


LATE = 0.6  # seconds a late run takes: well past TIMEOUT
TIMEOUT = 0.2

Step = tuple[str, Any]


def _plan(seed: int, backend: str) -> tuple[dict[int, list[Step]], dict[str, Any]]:
    rng = random.Random(seed)
    entry = REGISTRY[backend]
    timeouts = entry.timeouts and rng.random() < 0.5
    many = rng.random() < 0.2  # enough tiny tasks for the process backend's unmarked calls
    n = rng.randint(300, 600) if many else rng.randint(1, 40)
    plan: dict[int, list[Step]] = {}
    for x in range(n):
        steps: list[Step] = []
        for _ in range(rng.randint(1, 3)):
            roll = rng.random() * (4 if many else 1)  # mostly instant when many
            if roll < 0.45 or roll >= 1:
                steps.append(("ok", 0.0))
            elif roll < 0.55:
                steps.append(("ok", rng.choice([0.002, 0.01, 0.03])))
            elif roll < 0.70:
                steps.append(("raise", OSError))
            elif roll < 0.82:
                steps.append(("raise", ValueError))
            elif roll < 0.90 and not entry.in_process:
                steps.append(("crash", 3))
            elif timeouts and not many:
                steps.append(("late", LATE))
            else:
                steps.append(("ok", 0.0))
        plan[x] = steps
    options: dict[str, Any] = {
        "errors": "return",
        "retries": rng.randint(0, 2),
        "backoff": rng.choice([0, 0.01]),
        "progress": False,
        "backend": backend,
        "workers": rng.randint(1, 4) if entry.many_workers else 1,
    }
    if timeouts:
        options["timeout"] = TIMEOUT
    if rng.random() < 0.4:
        options["chunksize"] = rng.randint(1, 8)
    if rng.random() < 0.3:
        options["retry_on"] = OSError
    if rng.random() < 0.3:
        options["window"] = rng.randint(1, 8)
    if rng.random() < 0.2:
        options["rate"] = 400.0
    if "max_tasks_per_worker" in entry.own_options and rng.random() < 0.4:
        options["max_tasks_per_worker"] = rng.randint(1, 5)
    if rng.random() < 0.4:
        options["ordered"] = False
    return plan, options


def _step(plan: dict[int, list[Step]], x: int, run: int) -> Step:
    steps = plan[x]
    return steps[min(run, len(steps)) - 1]


def _task(plan: dict[int, list[Step]], attempts: Any, coroutines: bool) -> Any:
    def task(x: int) -> int:
        kind, arg = _step(plan, x, attempts.increment(x))
        if kind == "raise":
            raise arg(f"run of {x}")
        if kind == "crash":
            os._exit(arg)
        if arg:
            time.sleep(arg)
        return x

    async def atask(x: int) -> int:
        kind, arg = _step(plan, x, attempts.increment(x))
        if kind == "raise":
            raise arg(f"run of {x}")
        if arg:
            await asyncio.sleep(arg)
        return x

    return atask if coroutines else task


async def _gather(fn: Any, n: int, ordered: bool, options: dict[str, Any]) -> list[Any]:
    return [r async for r in taskfan.aimap(fn, range(n), ordered=ordered, **options)]


def _kind(error: BaseException) -> type[BaseException]:
    for kind in (TaskTimeout, WorkerCrashed, ValueError, OSError):  # TaskTimeout is an OSError
        if isinstance(error, kind):
            return kind
    return type(error)


def _expected(step: Step) -> type[BaseException] | None:
    kind, arg = step
    return {"ok": None, "raise": arg, "crash": WorkerCrashed, "late": TaskTimeout}[kind]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_mixed_workload_on_a_real_backend(
    backend: str, seed: int, request: pytest.FixtureRequest
) -> None:
    _skip_extra_server_seeds(request, seed)
    plan, options = _plan(seed, backend)
    n = len(plan)
    coroutines = REGISTRY[backend].coroutines
    with taskfan.SafeCounter.make(backend) as attempts:
        fn = _task(plan, attempts, coroutines)
        ordered = options.pop("ordered", True)
        if coroutines:
            got = asyncio.run(_gather(fn, n, ordered, options))
            report = None
        else:
            it = taskfan.imap(fn, range(n), ordered=ordered, **options)
            got = list(it)
            report = it.report
        runs = {x: attempts.get(x) for x in range(n)}
    assert len(got) == n
    if not ordered:
        # Results come as tasks end: the same outcomes, in some order.
        wanted = Counter(_expected(_step(plan, x, runs[x])) or x for x in range(n))
        assert Counter(v if not isinstance(v, BaseException) else _kind(v) for v in got) == (wanted)
    # Task by task, where positions are known: the outcome of its last run.
    for x, outcome in enumerate(got if ordered else []):
        assert runs[x] >= 1, f"task {x} came back without running"
        wanted = _expected(_step(plan, x, runs[x]))  # its last run's outcome
        if wanted is None:
            assert outcome == x, (x, outcome, plan[x], runs[x])
        else:
            assert _kind(outcome) is wanted, (x, outcome, plan[x], runs[x])
        if REGISTRY[backend].in_process:
            # Every run is an attempt (a process backend may run a dead worker's chunk
            # mates again, uncounted).
            assert runs[x] <= options["retries"] + 1, (x, plan[x], runs[x])
    if report is not None:
        ok = sum(not isinstance(v, BaseException) for v in got)
        assert (report.total, report.ok, report.failed, report.cancelled) == (n, ok, n - ok, 0)
        kinds = Counter(type(v) for v in got if isinstance(v, BaseException))
        assert report.timed_out == kinds[TaskTimeout]
        assert report.crashed == kinds[WorkerCrashed]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_workload_left_early_on_a_real_backend(
    backend: str, seed: int, request: pytest.FixtureRequest
) -> None:
    _skip_extra_server_seeds(request, seed)
    # A break after a few results cancels the rest: the counts add up, and nothing is
    # left running (the autouse fixture checks threads and processes after each test).
    plan, options = _plan(seed, backend)
    n = len(plan)
    keep = random.Random(seed).randint(1, max(1, n // 2))
    coroutines = REGISTRY[backend].coroutines
    ordered = options.pop("ordered", True)
    with taskfan.SafeCounter.make(backend) as attempts:
        fn = _task(plan, attempts, coroutines)
        if coroutines:
            got, report = asyncio.run(_first(fn, n, keep, ordered, options))
        else:
            with taskfan.imap(fn, range(n), ordered=ordered, **options) as it:
                got = [value for value, _ in zip(it, range(keep), strict=False)]
            report = it.report
    assert len(got) == min(keep, n)
    if ordered:
        for x, outcome in enumerate(got):
            assert outcome == x or isinstance(outcome, BaseException)
    assert report.ok + report.failed + report.cancelled == report.total
    assert report.ok + report.failed >= len(got)


async def _first(
    fn: Any, n: int, keep: int, ordered: bool, options: dict[str, Any]
) -> tuple[list[Any], Any]:
    got: list[Any] = []
    run = taskfan.aimap(fn, range(n), ordered=ordered, **options)
    try:
        async for value in run:
            got.append(value)
            if len(got) >= keep:
                break
    finally:
        await run.aclose()
    return got, run.report


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("front", ["Runner", "Parallelized"])
def test_a_random_workload_through_the_keyed_fronts(
    backend: str, seed: int, front: str, request: pytest.FixtureRequest
) -> None:
    _skip_extra_server_seeds(request, seed)
    # The same workloads through Runner (keyed tasks, Results) and Parallelized
    # (kwargs, result, error in completion order): each task's outcome once, its last
    # run's. (Coroutines have their own front tests: these use plain functions.)
    if REGISTRY[backend].coroutines:
        pytest.skip("plain functions only")
    plan, options = _plan(seed, backend)
    options.pop("ordered", None)
    options.pop("errors")  # neither front takes it: failures come back with the results
    n = len(plan)
    got: dict[int, Any] = {}
    with taskfan.SafeCounter.make(backend) as attempts:
        fn = _task(plan, attempts, coroutines=False)
        if front == "Runner":
            runner = taskfan.Runner(**options)
            for x in range(n):
                runner.add(f"task {x}", fn, x)
            for key, outcome in runner.run().items():
                got[int(key.split()[1])] = outcome
        else:
            with taskfan.Parallelized(fn, [{"x": x} for x in range(n)], **options) as run:
                for kwargs, result, error in run:
                    assert kwargs["x"] not in got, f"task {kwargs['x']} came back twice"
                    got[kwargs["x"]] = result if error is None else error
        runs = {x: attempts.get(x) for x in range(n)}
    assert sorted(got) == list(range(n)), "a task was lost"
    for x, outcome in got.items():
        wanted = _expected(_step(plan, x, runs[x]))
        if wanted is None:
            assert outcome == x, (x, outcome, plan[x], runs[x])
        else:
            assert _kind(outcome) is wanted, (x, outcome, plan[x], runs[x])
