"""Scheduler scenarios: a few slow tasks among instant ones, retries, and a cold first call.

- ``mixed``: mostly instant tasks with 10% slow ones, spread at random (fixed seed). A
  scheduler that sends the instant tasks in big chunks also sends the slow ones hidden
  among them to one worker, which then works while the others wait. The reference is
  ``ThreadPoolExecutor.map`` / ``ProcessPoolExecutor.map(chunksize=1)``: one task at a
  time, so the wall time is the ideal one plus dispatch.
- ``retries``: the same taskfan run with 1% of the tasks failing once (retries=2,
  backoff=0.05) and with none failing. Nothing else changes: same function, same items,
  same options; the failing run should take the no-failure time plus about the backoff.
- ``cold``: the first process call of a program that runs one extra thread, each
  measured in a fresh Python process (no fork server or worker is warm); and tiny calls
  on an input that is already a list (the existing tiny-calls rows stream a range).

As in processes.py, every contender builds and tears down its own pool inside each timed
run, and module-level imports stay light: spawn-based pools import this module in every
worker to unpickle the task functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import mmap
import os
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ._harness import Runner, Scenario, median_times
from .processes import CONTENDERS, HARD_TIMEOUT, WORKERS, _kill_all, _runners, _spawn, square

SEED = 20240611  # which tasks are slow, and which fail: the same in every run
FAIL_EVERY = 100  # 1% of the tasks fail once
RETRIES = 2
BACKOFF = 0.05


# Task functions: module level, so that every pool pickles them by reference.


def pause(x: float) -> float:
    """Sleep ``x`` seconds (an instant task when ``x`` is 0); ``x`` comes back."""
    if x:
        time.sleep(x)
    return x


def nap_1ms(x: int) -> int:
    time.sleep(0.001)
    return x


class Flaky(Exception):
    """What a task raises on the first attempt of a failing item."""


class FailOnce:
    """``task(x)``, except that every item in ``failing`` raises :class:`Flaky` on its
    first attempt and succeeds on the next. Attempts are kept in a set under a lock
    (threads only); ``reset()`` forgets them, before each run. With ``fail=False`` the
    same attempts are noted but nothing fails, so the run without failures pays the
    same bookkeeping (a lookup in the set, and the lock for 1% of the items) and the
    ratio is the retries' alone, as in :func:`square_fail_once`."""

    def __init__(
        self, task: Callable[[int], Any], failing: frozenset[int], fail: bool = True
    ) -> None:
        self.task = task
        self.failing = failing
        self.fail = fail
        self.tried: set[int] = set()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.tried.clear()

    def __call__(self, x: int) -> Any:
        value = self.task(x)  # the failed attempt did its work too, as a real one would
        if x in self.failing:
            with self._lock:
                first = x not in self.tried
                self.tried.add(x)
            if first and self.fail:
                raise Flaky(x)
        return value


def square_fail_once(flag_file: str, x: int, fail: bool = True) -> int:
    """x*x, except that every 100th item raises :class:`Flaky` on its first attempt.

    Worker processes share no memory, so each attempt is noted in a file of one byte per
    item, mapped into memory by every worker (a byte costs nothing next to the task; a
    marker file per attempt cost as much as the retries measured, and varied with the
    disk). A retry never runs at the same time as its first attempt, so reading and then
    setting the byte is safe. A fresh file per run resets it. With ``fail=False`` the same
    bytes are set but nothing fails, so the run without failures pays the same
    bookkeeping and the ratio is the retries'."""
    if x % FAIL_EVERY == 0:
        flags = _FLAGS.get(flag_file)
        if flags is None:
            flags = _FLAGS[flag_file] = _map_flags(flag_file)
        if not flags[x]:
            flags[x] = 1
            if fail:
                raise Flaky(x)
    return x * x


_FLAGS: dict[str, mmap.mmap] = {}


def _map_flags(path: str) -> mmap.mmap:
    with open(path, "r+b") as file:
        return mmap.mmap(file.fileno(), 0)


def _new_flag_file(n: int) -> str:
    """A file of ``n`` zero bytes, in memory (/dev/shm) where the system has one."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="taskfan-bench-retries-", dir=folder)
    os.ftruncate(fd, n)
    os.close(fd)
    return path


def _slow_at_random(n: int, slow: int, seconds: float) -> list[float]:
    """``n`` task inputs for :func:`pause`: ``slow`` of them ``seconds``, the rest 0."""
    picked = set(random.Random(SEED).sample(range(n), slow))
    return [seconds if i in picked else 0.0 for i in range(n)]


def _same(expected: list[Any], *, ordered: bool = True) -> Callable[[str, object], None]:
    def check(name: str, result: object) -> None:
        got = list(result)  # type: ignore[call-overload]
        assert (got if ordered else sorted(got)) == expected, name

    return check


def _time_ratio(times: dict[str, float | None], name: str, reference: str) -> str | None:
    ours, ref = times.get(name), times.get(reference)
    return f"{ours / ref:.2f}x the time of {reference}" if ours and ref else None


# mixed: 10% slow tasks at random among instant ones


def mixed_threads(
    repeats: int, n: int = 400, slow: int = 40, seconds: float = 0.5, workers: int = 8
) -> Scenario:
    """400 tasks on 8 threads, 40 of them sleep(0.5 s) at random: ideally 2.5 s."""
    items = _slow_at_random(n, slow, seconds)
    what = f"{n} tasks, {slow} x sleep({seconds:g} s) at random, rest instant"
    return _mixed_threads(repeats, items, workers, what)


def mixed_tail(repeats: int, instant: int = 6, slow: int = 14, seconds: float = 1.0) -> Scenario:
    """6 instant tasks then 14 of sleep(1 s) on 4 threads: ideally 4 s (14 in rounds of 4)."""
    items = [0.0] * instant + [seconds] * slow
    return _mixed_threads(
        repeats,
        items,
        4,
        f"{instant} instant then {slow} x sleep({seconds:g} s)",
        peers=("ThreadPoolExecutor.map",),
    )


def _mixed_threads(
    repeats: int,
    items: list[float],
    workers: int,
    what: str,
    peers: tuple[str, ...] = ("ThreadPool.map", "ThreadPoolExecutor.map", "joblib", "mpire"),
) -> Scenario:
    import taskfan

    from .threads import _executor, _joblib, _mpire, _threadpool

    every: dict[str, Runner | None] = {
        "ThreadPool.map": _threadpool(pause, items, workers),
        "ThreadPoolExecutor.map": _executor(pause, items, workers),
        "joblib": _joblib(pause, items, workers),
        "mpire": _mpire(pause, items, workers),
    }
    contenders: dict[str, Runner | None] = {
        "taskfan": lambda: taskfan.map(
            pause, items, backend="thread", workers=workers, progress=False
        ),
        **{name: every[name] for name in peers},
    }
    times = median_times(contenders, repeats, _same(items), warmup=False)
    notes = {k: "not installed" for k, run in contenders.items() if run is None}
    return _mixed_scenario(
        f"{what}, {workers} threads",
        items,
        workers,
        times,
        notes,
        reference="ThreadPoolExecutor.map",
    )


def mixed_processes(repeats: int, n: int = 200, slow: int = 20, seconds: float = 0.25) -> Scenario:
    """200 tasks on 2 processes, 20 of them sleep(0.25 s) at random: ideally 2.5 s."""
    items = _slow_at_random(n, slow, seconds)
    # chunksize=1 for the executors (loky's and pebble's default too): one task at a time
    runners, notes = _runners(pause, items, chunksize=1)
    times = median_times(runners, repeats, _same(items), warmup=False)
    return _mixed_scenario(
        f"{n} tasks, {slow} x sleep({seconds:g} s) at random, rest instant, {WORKERS} processes",
        items,
        WORKERS,
        times,
        notes,
        reference="ProcessPoolExecutor.map",
    )


def _mixed_scenario(
    what: str,
    items: list[float],
    workers: int,
    times: dict[str, float | None],
    notes: dict[str, str],
    *,
    reference: str,
) -> Scenario:
    slow = sorted((x for x in items if x), reverse=True)
    # the slow tasks are alike: ceil(slow / workers) rounds of one
    ideal = math.ceil(len(slow) / workers) * slow[0] if slow else 0.0
    ratio = _time_ratio(times, "taskfan", reference)
    if ratio:
        notes["taskfan"] = ratio
    return Scenario(
        f"{what} (ideal {ideal:.1f} s)",
        "s",
        False,
        dict(times),
        notes,
        reference=reference,
    )


# retries: 1% of the tasks fail once


NO_FAILURES = "taskfan, no failures"


def retries_threads(
    repeats: int, n: int, workers: int, task: Callable[[int], Any], label: str
) -> Scenario:
    """``task`` over n items on threads: 1% (fixed seed) fail once, against none failing."""
    import taskfan

    items = list(range(n))
    failing = frozenset(random.Random(SEED).sample(items, n // FAIL_EVERY))
    flaky, steady = FailOnce(task, failing), FailOnce(task, failing, fail=False)

    def run(fn: FailOnce) -> Runner:
        def go() -> object:
            fn.reset()
            return taskfan.map(
                fn,
                items,
                backend="thread",
                workers=workers,
                retries=RETRIES,
                backoff=BACKOFF,
                progress=False,
            )

        return go

    expected = [task(x) for x in items]

    def check(name: str, result: object) -> None:
        _same(expected)(name, result)
        fn = flaky if name == "taskfan" else steady
        assert fn.tried == fn.failing, f"{name}: not every failing item was tried"

    times = median_times({"taskfan": run(flaky), NO_FAILURES: run(steady)}, repeats, check)
    return _retries_scenario(f"{n:,} {label} tasks, {workers} threads, map", len(failing), times)


def retries_processes(repeats: int, n: int = 200_000) -> Scenario:
    """200,000 tiny tasks on 2 processes, imap(ordered=False): every 100th fails once."""
    import taskfan

    items = list(range(n))
    files: list[str] = []

    def run(fail: bool) -> Runner:
        def go() -> object:
            flag_file = _new_flag_file(n)  # a fresh file: no item has failed yet
            files.append(flag_file)
            fn = functools.partial(square_fail_once, flag_file, fail=fail)
            results = taskfan.imap(
                fn,
                items,
                ordered=False,
                backend="process",
                workers=WORKERS,
                retries=RETRIES,
                backoff=BACKOFF,
                progress=False,
            )
            return list(results)

        return go

    expected = [square(x) for x in items]
    failing = n // FAIL_EVERY

    def check(name: str, result: object) -> None:
        _same(expected, ordered=False)(name, result)
        with open(files[-1], "rb") as file:
            tried = sum(file.read())
        assert tried == failing, f"{name}: {tried} of {failing} failing items were tried"

    try:
        times = median_times({"taskfan": run(True), NO_FAILURES: run(False)}, repeats, check)
    finally:
        for flag_file in files:
            with contextlib.suppress(OSError):
                os.remove(flag_file)
    return _retries_scenario(
        f"{n:,} tiny tasks, {WORKERS} processes, imap(ordered=False)", failing, times
    )


def _retries_scenario(what: str, failing: int, times: dict[str, float | None]) -> Scenario:
    notes = {"taskfan": "1% fail once"}
    ours, steady = times.get("taskfan"), times.get(NO_FAILURES)
    if ours and steady:
        target = 1.2 * steady + BACKOFF
        notes["taskfan"] += f"; {ours / steady:.2f}x no failures, target <= {target:.3f} s"
    return Scenario(
        f"{what}: {failing:,} fail once (retries={RETRIES}, backoff={BACKOFF})",
        "s",
        False,
        dict(times),
        notes,
        reference=NO_FAILURES,
    )


# cold: the first call in a fresh process that runs one extra thread

_COLD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cold_program.py")
_COLD_MAPS = ("taskfan", "Pool.map")


def cold_start(runs: int, n: int = 100_000) -> Scenario:
    """The first map of n tiny calls on 2 processes, each run in a fresh Python process.

    The program is a script, cold_program.py, as a user's would be: its task function is
    defined in it, and a forkserver preloads it. taskfan is byte-compiled first, as
    installing it does: with PYTHONDONTWRITEBYTECODE set and an editable install, every
    process would otherwise compile taskfan's source again, which no installed copy does.
    """
    _byte_compile("taskfan")
    times: dict[str, list[float]] = {name: [] for name in _COLD_MAPS}
    notes: dict[str, str] = {}
    for _ in range(runs):  # interleaved, as median_times does
        for name in _COLD_MAPS:
            elapsed, problem = _cold_one(name, n)
            if elapsed is not None:
                times[name].append(elapsed)
            if problem:
                notes[name] = problem
    figures = {k: (sorted(ts)[len(ts) // 2] if ts else None) for k, ts in times.items()}
    ratio = _time_ratio(figures, "taskfan", "Pool.map")
    if ratio and "taskfan" not in notes:
        notes["taskfan"] = ratio
    return Scenario(
        f"first map of {n:,} tiny calls, {WORKERS} processes, list input, fresh script "
        "process with 1 extra thread",
        "s",
        False,
        figures,
        notes,
    )


def _cold_one(name: str, n: int) -> tuple[float | None, str | None]:
    """Seconds of the first map in a fresh process, or None and what went wrong."""
    line, problem = _last_line([name, str(n), str(WORKERS)], HARD_TIMEOUT, script=_COLD_SCRIPT)
    return (None, problem) if line is None else (float(line), None)


def _last_line(
    args: list[str], timeout: float, *, code: str = "", script: str | None = None
) -> tuple[str | None, str | None]:
    """Run a child (the file ``script``, else ``code``: see processes._spawn) to its end:
    the last line it printed, or None and what went wrong (a hang, killed after
    ``timeout``; an exit code and its last error line)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = _spawn(args, out, err, code=code, script=script)
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_all(child)
            return None, f"hang (killed after {timeout:.0f} s)"
        _kill_all(child)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode(errors="replace").strip().splitlines()
        if child.returncode != 0 or not lines:
            last = err.read().decode(errors="replace").strip().splitlines()[-1:]
            return None, f"exit {child.returncode}: {' '.join(last)}"[:120]
    return lines[-1], None


def _byte_compile(package: str) -> None:
    """Write the bytecode of ``package`` where an import finds it (as pip install does)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(folder, quiet=1)


def tiny_calls_list(repeats: int, n: int) -> Scenario:
    """n calls of x*x on 2 processes, the input a list built before the clock starts.

    Run in a fresh process of its own (``list_main``), as a script that only maps would
    run them: the benchmark process has threads by now (a peer's monitor thread), so
    taskfan would start its workers with the fork server there while Pool forks anyway,
    and each of its workers would import the benchmark package again as its main module.
    """
    line, problem = _last_line([str(repeats), str(n)], LIST_TIMEOUT, code=_LIST_CODE)
    if line is None:
        raise RuntimeError(f"the list-input row of {n:,} calls: {problem}")
    times = json.loads(line)
    return Scenario(
        f"{n:,} tiny calls, {WORKERS} processes, list input, fresh process",
        "items/s",
        True,
        {k: (n / t if t else None) for k, t in times.items()},
    )


LIST_TIMEOUT = 600
_LIST_CODE = (
    "import sys; from benchmarks.scheduler import list_main; sys.exit(list_main(sys.argv[1:]))"
)


def list_main(argv: list[str]) -> int:
    """In a fresh process: time the list-input row, print its times as JSON."""
    repeats, n = int(argv[0]), int(argv[1])
    items = list(range(n))
    runners: dict[str, Runner | None] = {
        # chunksize=1000 for ProcessPoolExecutor, as in the range-input row; taskfan sizes
        # its chunks itself and Pool.map cuts the list into ~4 chunks per worker
        name: functools.partial(CONTENDERS[name][1], square, items, WORKERS, 1000)
        for name in ("taskfan", "Pool.map", "ProcessPoolExecutor.map")
    }
    times = median_times(runners, repeats, _same([square(x) for x in items]))
    print(json.dumps(times), flush=True)
    return 0
