"""Process scenarios: tiny calls, CPU-bound tasks, a worker that dies, and Ctrl+C.

Every contender builds and tears down its own pool inside each timed run, as taskfan starts
its workers per call. The crash and Ctrl+C scenarios run each contender in a fresh session
of its own, so that a hang or a stray worker cannot hurt the benchmark process.

Module-level imports stay light on purpose: spawn-based pools (loky, joblib) import this
module in every worker to unpickle the task functions, and that import is on their clock.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._harness import Runner, Scenario, median_times

if TYPE_CHECKING:
    import psutil

WORKERS = 2
REPO = Path(__file__).resolve().parent.parent
HARD_TIMEOUT = 30.0  # seconds a subprocess contender may take before it is killed
CRASH_TASKS = 100
CRASH_ITEM = 50
CTRL_C_TASKS = 8

Mapper = Callable[[Callable[[Any], Any], Sequence[Any], int, int], list[Any]]


# Task functions: module level, so that every pool pickles them by reference.


def square(x: int) -> int:
    return x * x


def burn(seconds: float) -> float:
    """Pure-Python work holding the GIL for ``seconds`` of this process's own CPU time,
    whatever else the machine does: only processes run it in parallel."""
    end = time.process_time() + seconds
    spins = 0
    while time.process_time() < end:
        spins += 1
    return seconds


def square_or_die(x: int) -> int:
    if x == CRASH_ITEM:
        os._exit(1)  # no exception and no cleanup, as with a segfault or the OOM killer
    return x * x


def sleep_forever(marker: str) -> None:
    Path(marker).touch()  # the benchmark sends Ctrl+C only once tasks are really running
    time.sleep(1000)


# Contenders: each creates and tears down its own pool inside the call.


def _taskfan_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, _: int) -> list[Any]:
    import taskfan

    # taskfan sizes its chunks from measured durations: chunksize is the peers' knob only
    return taskfan.map(fn, items, backend="process", workers=workers, progress=False)


def _pool_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, _: int) -> list[Any]:
    # Pool.map's default chunksize already cuts the input into ~4 chunks per worker
    with multiprocessing.Pool(workers) as pool:
        return pool.map(fn, items)


def _executor_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, chunksize: int
) -> list[Any]:
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def _loky_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, chunksize: int
) -> list[Any]:
    import loky

    # Not get_reusable_executor: its workers outlive the call, so later runs would be free.
    with loky.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def _pebble_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, chunksize: int
) -> list[Any]:
    from pebble import ProcessPool

    with ProcessPool(max_workers=workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize).result())


def _joblib_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, _: int) -> list[Any]:
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    results = Parallel(n_jobs=workers, backend="loky")(delayed(fn)(x) for x in items)
    # joblib keeps its loky workers for the next call; shutting them down makes each run pay
    # for its own pool like everyone else. Not on failure or Ctrl+C: there joblib's own
    # behaviour is what is measured.
    get_reusable_executor(reuse=True).shutdown(wait=True)
    return list(results)


def _mpire_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, _: int) -> list[Any]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=workers) as pool:
        return pool.map(fn, items)


#: name -> (module that must import for the contender to run, its map)
CONTENDERS: dict[str, tuple[str, Mapper]] = {
    "taskfan": ("taskfan", _taskfan_map),
    "Pool.map": ("multiprocessing", _pool_map),
    "ProcessPoolExecutor.map": ("concurrent.futures", _executor_map),
    "loky": ("loky", _loky_map),
    "pebble": ("pebble", _pebble_map),
    "joblib": ("joblib", _joblib_map),
    "mpire": ("mpire", _mpire_map),
}


def _missing(name: str) -> str | None:
    """Why contender ``name`` cannot run here, or None when it can."""
    try:
        importlib.import_module(CONTENDERS[name][0])
    except ImportError:
        return "not installed"
    return None


def _runners(
    fn: Callable[[Any], Any], items: Sequence[Any], chunksize: int
) -> tuple[dict[str, Runner | None], dict[str, str]]:
    """A runner per contender (None when it cannot run), and notes saying why not."""
    runners: dict[str, Runner | None] = {}
    notes: dict[str, str] = {}
    for name, (_, mapper) in CONTENDERS.items():
        why = _missing(name)
        if why is not None:
            runners[name], notes[name] = None, why
        else:
            runners[name] = functools.partial(mapper, fn, items, WORKERS, chunksize)
    return runners, notes


def _checker(expected: list[Any]) -> Callable[[str, object], None]:
    def check(name: str, result: object) -> None:
        assert list(result) == expected, name  # type: ignore[call-overload]

    return check


# Timed scenarios, in the benchmark process.


def tiny_calls(repeats: int, n: int = 100_000) -> Scenario:
    """100,000 calls of x*x on 2 processes: per-call overhead and chunking."""
    items = range(n)
    # chunksize=1000 for the peers without automatic chunking: one message per call would
    # measure a misconfiguration rather than the library
    runners, notes = _runners(square, items, chunksize=1000)
    times = median_times(runners, repeats, _checker([square(x) for x in items]))
    return Scenario(
        f"{n:,} tiny calls, {WORKERS} processes, range input",
        "items/s",
        True,
        {k: (n / t if t else None) for k, t in times.items()},
        notes,
    )


def cpu_bound(repeats: int, tasks: int = 8, seconds: float = 0.25) -> Scenario:
    """8 pure-Python tasks of 0.25 s of CPU each on 2 processes: wall time, ideally 1.0 s."""
    items = [seconds] * tasks
    # chunksize=1: a chunk of 1000 would put all 8 slow tasks on one worker
    runners, notes = _runners(burn, items, chunksize=1)
    times = median_times(runners, repeats, _checker([seconds] * tasks))
    ideal = tasks * seconds / WORKERS
    return Scenario(
        f"{tasks} x {seconds} s CPU tasks, {WORKERS} processes (ideal {ideal:.1f} s)",
        "s",
        False,
        dict(times),
        notes,
    )


# Subprocess scenarios: each contender in a fresh session, killed whole when done.


_CHILD_CODE = (
    "import sys; from benchmarks.processes import child_main; sys.exit(child_main(sys.argv[1:]))"
)


def _spawn(
    args: list[str],
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    code: str = _CHILD_CODE,
    script: str | None = None,
) -> subprocess.Popen[bytes]:
    """Run ``child_main(args)`` (or ``code``, or the file ``script``) in a new session, so
    that killpg reaches all its processes."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, *([script] if script else ["-c", code]), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        # only signal.signal runs between fork and exec, so threads of ours cannot deadlock it
        preexec_fn=_restore_sigint,  # noqa: PLW1509
    )


def _restore_sigint() -> None:
    # A shell may start us with SIGINT ignored and the child would inherit that; Python
    # installs its KeyboardInterrupt handler only over the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(proc: psutil.Process) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid``: orphaned workers stay in it after re-parenting."""
    import psutil

    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and _alive(proc):
                members.append(proc)
    return members


def _kill_all(child: subprocess.Popen[bytes], extra: Iterable[psutil.Process] = ()) -> int:
    """SIGKILL the child, its group, its session and ``extra``; how many besides the child
    were still alive."""
    import psutil

    others = [*_session(child.pid), *extra]
    left = {p.pid: p for p in others if p.pid != child.pid and _alive(p)}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    for proc in left.values():  # in case a library moved its workers to a group of their own
        with contextlib.suppress(psutil.Error):
            proc.kill()
    child.wait()
    psutil.wait_procs(list(left.values()), timeout=5)
    return len(left)


def _settle(sid: int, grace: float = 1.0) -> None:
    """Give helpers on their way out (loky's resource tracker takes ~0.2 s) time to go."""
    deadline = time.monotonic() + grace
    while _session(sid) and time.monotonic() < deadline:
        time.sleep(0.05)


def child_main(argv: list[str]) -> int:
    """Entry point of the subprocess contenders: ``crash NAME`` or ``ctrl_c NAME DIR``."""
    kind, name, *rest = argv
    if kind == "crash":
        _crash_child(name)
    elif kind == "ctrl_c":
        markers = [str(Path(rest[0]) / f"task-{i}") for i in range(CTRL_C_TASKS)]
        CONTENDERS[name][1](sleep_forever, markers, WORKERS, 1)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    return 0


# Crash resilience: how many of the 99 healthy tasks still come back as values.


def _crash_taskfan(items: range) -> Iterable[object]:
    import taskfan

    return taskfan.map(
        square_or_die, items, backend="process", workers=WORKERS, progress=False, errors="return"
    )


def _crash_pool(items: range) -> Iterable[object]:
    with multiprocessing.Pool(WORKERS) as pool:
        return pool.map(square_or_die, items)  # never returns: cpython#96062


def _crash_executor(items: range) -> Iterable[object]:
    return _per_future(ProcessPoolExecutor(WORKERS), items)


def _crash_loky(items: range) -> Iterable[object]:
    import loky

    return _per_future(loky.ProcessPoolExecutor(WORKERS), items)


def _per_future(pool: Executor, items: range) -> Iterator[object]:
    with pool:
        futures = [pool.submit(square_or_die, x) for x in items]
        for future in futures:
            try:
                yield future.result()
            except Exception as error:
                yield error


def _crash_pebble(items: range) -> Iterator[object]:
    from pebble import ProcessPool

    with ProcessPool(max_workers=WORKERS) as pool:
        # chunksize=1 (pebble's default): a dead worker then costs one task, not its chunk
        results = pool.map(square_or_die, items).result()
        while True:
            try:
                yield next(results)
            except StopIteration:
                return
            except Exception as error:
                yield error


def _crash_joblib(items: range) -> Iterable[object]:
    from joblib import Parallel, delayed

    return Parallel(n_jobs=WORKERS, backend="loky")(delayed(square_or_die)(x) for x in items)


def _crash_mpire(items: range) -> Iterable[object]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS) as pool:
        return pool.map(square_or_die, items)


_CRASH_RUNS: dict[str, Callable[[range], Iterable[object]]] = {
    "taskfan": _crash_taskfan,
    "Pool.map": _crash_pool,
    "ProcessPoolExecutor.map": _crash_executor,
    "loky": _crash_loky,
    "pebble": _crash_pebble,
    "joblib": _crash_joblib,
    "mpire": _crash_mpire,
}


def _say(*words: str) -> None:
    # flushed line by line: a contender that hangs is killed, and what it printed must stay
    print(*words, flush=True)


def _crash_child(name: str) -> None:
    try:
        for x, outcome in enumerate(_CRASH_RUNS[name](range(CRASH_TASKS))):
            if isinstance(outcome, BaseException):
                _say("error", type(outcome).__name__)
            else:
                _say("value" if outcome == square(x) else "wrong")
    except Exception as error:
        _say("raised", type(error).__name__)
    _say("end")


def _each_contender(
    measure: Callable[[str], tuple[float | None, str | None]],
) -> tuple[dict[str, float | None], dict[str, str]]:
    """``measure(name)`` for every contender that can run here: figures and notes."""
    figures: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name in CONTENDERS:
        why = _missing(name)
        figure, note = (None, why) if why is not None else measure(name)
        figures[name] = figure
        if note:
            notes[name] = note
    return figures, notes


def crash_resilience() -> Scenario:
    """100 tasks on 2 processes, task 50 kills its worker: results that still come back."""
    figures, notes = _each_contender(_crash_one)
    return Scenario(
        f"os._exit in 1 of {CRASH_TASKS} tasks, {WORKERS} processes: values back",
        "results",
        True,
        figures,
        notes,
    )


def _crash_one(name: str) -> tuple[float | None, str | None]:
    with tempfile.TemporaryFile() as out:
        child = _spawn(["crash", name], out, subprocess.DEVNULL)
        try:
            child.wait(timeout=HARD_TIMEOUT)
            hung = False
            _settle(child.pid)
        except subprocess.TimeoutExpired:
            hung = True
        stray = _kill_all(child)
        out.seek(0)
        lines = out.read().decode(errors="replace").splitlines()
    return _crash_summary([line.split() for line in lines if line.strip()], hung, stray)


def _crash_summary(lines: list[list[str]], hung: bool, stray: int) -> tuple[float, str]:
    """Values counted, and a note saying what happened to the rest."""
    kinds = Counter(words[0] for words in lines)
    what: list[str] = []
    if hung:
        what.append(f"hang (killed after {HARD_TIMEOUT:.0f} s)")
    # join the rest of a line rather than index it: a library may print to stdout too
    what += [f"raised {' '.join(words[1:])}" for words in lines if words[0] == "raised"]
    errors = Counter(" ".join(words[1:]) for words in lines if words[0] == "error")
    what += [f"{count} x {error}" for error, count in errors.items()]
    if kinds["wrong"]:
        what.append(f"{kinds['wrong']} wrong values")
    if not hung and not kinds["end"]:
        what.append("child died")
    if stray and not hung:  # a hung pool's workers are expected to be there
        what.append(f"{stray} {_plural(stray, 'process', 'processes')} left")
    return float(kinds["value"]), ", ".join(what) or "no failure seen"


# Ctrl+C: seconds from SIGINT to the exit of the whole program, and workers left behind.


def ctrl_c_exit() -> Scenario:
    """Ctrl+C while 2 processes sleep in tasks: time until the program is gone."""
    figures, notes = _each_contender(_ctrl_c_one)
    return Scenario(
        f"Ctrl+C during {CTRL_C_TASKS} x sleep(1000), {WORKERS} processes: time to exit",
        "s",
        False,
        figures,
        notes,
    )


def _ctrl_c_one(name: str) -> tuple[float | None, str | None]:
    with tempfile.TemporaryDirectory() as markers:
        child = _spawn(["ctrl_c", name, markers], subprocess.DEVNULL, subprocess.DEVNULL)
        workers: list[psutil.Process] = []
        try:
            if not _wait_started(child, Path(markers)):
                early = child.poll() is not None
                return None, "exited before tasks started" if early else "tasks never started"
            workers = _descendants(child.pid)
            return _interrupt(child, workers)
        finally:
            _kill_all(child, workers)


def _wait_started(child: subprocess.Popen[bytes], markers: Path) -> bool:
    """Wait until every worker runs a task (or, after the deadline, at least one does)."""
    deadline = time.monotonic() + HARD_TIMEOUT
    while time.monotonic() < deadline and child.poll() is None:
        if len(list(markers.iterdir())) >= WORKERS:
            # Let the parent settle into its wait for results, where a user's Ctrl+C finds it
            time.sleep(0.2)
            return True
        time.sleep(0.05)
    return child.poll() is None and any(markers.iterdir())


def _descendants(pid: int) -> list[psutil.Process]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _interrupt(
    child: subprocess.Popen[bytes], workers: list[psutil.Process]
) -> tuple[float, str | None]:
    """SIGINT the child's group as a terminal's Ctrl+C does; seconds to exit, and a note."""
    t0 = time.perf_counter()
    os.killpg(child.pid, signal.SIGINT)
    try:
        child.wait(timeout=HARD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return HARD_TIMEOUT, f">= {HARD_TIMEOUT:.0f} s, killed"
    elapsed = time.perf_counter() - t0
    time.sleep(1.0)  # a worker on its way out gets a second before it counts as left behind
    left = sum(_alive(p) for p in workers)
    return elapsed, (f"{left} {_plural(left, 'worker', 'workers')} left" if left else None)


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many
