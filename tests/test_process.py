"""What only the process backend can do: survive dying workers, kill hung tasks, carry
anything cloudpickle can send, recycle workers, and never leave a worker behind."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskfan
from taskfan import TaskError, TaskTimeout, WorkerCrashed

from .conftest import read_until, run_script, still_running, workers_alive

P = {"backend": "process", "workers": 2, "progress": False}


def exit_on_50(x: int) -> int:
    if x == 50:
        os._exit(3)
    return x


def segfault_on_50(x: int) -> int:
    if x == 50:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def sleep_on_50(x: int) -> int:
    if x == 50:
        time.sleep(1000)
    return x


@pytest.mark.parametrize(
    ("task", "detail"), [(exit_on_50, "exited with code 3"), (segfault_on_50, "signal SIGSEGV")]
)
def test_a_dying_worker_fails_only_its_task(task: Any, detail: str) -> None:
    it = taskfan.imap(task, range(100), errors="return", **P)
    got = list(it)
    assert [g for i, g in enumerate(got) if i != 50] == [i for i in range(100) if i != 50]
    assert isinstance(got[50], WorkerCrashed)
    assert detail in str(got[50])
    assert it.report.crashed == 1 and it.report.failed == 1 and it.report.ok == 99


@pytest.mark.timeout(60)
def test_a_worker_dying_in_a_large_call_of_tiny_tasks_fails_only_its_task() -> None:
    # Calls of 1,000 tiny items run without a mark per item once their speed is measured
    # (the third call on): the call is sent again, marked, to learn which item killed the
    # worker. That item runs twice; nothing else is lost.
    with taskfan.SafeCounter.make("process") as runs:

        def task(x: int) -> int:
            if x == 3500:
                runs.increment(x)
                os._exit(3)
            return x * x

        it = taskfan.imap(task, range(4000), chunksize=1000, errors="return", **P)
        got = list(it)
        assert runs.get(3500) == 2
    assert [g for i, g in enumerate(got) if i != 3500] == [i * i for i in range(4000) if i != 3500]
    assert isinstance(got[3500], WorkerCrashed) and "exited with code 3" in str(got[3500])
    assert (it.report.crashed, it.report.ok, it.report.retried) == (1, 3999, 0)


@pytest.mark.timeout(60)
def test_a_crash_that_does_not_recur_in_a_large_call_costs_no_task() -> None:
    with taskfan.SafeCounter.make("process") as runs:

        def task(x: int) -> int:
            if x == 3200 and runs.increment(x) == 1:
                os._exit(3)  # the first time only: the marked re-run gets through
            return x

        assert taskfan.map(task, range(4000), chunksize=1000, **P) == list(range(4000))
        assert runs.get(3200) == 2


def test_a_crash_on_the_first_attempt_is_retried() -> None:
    with taskfan.SafeCounter.make("process") as attempts:

        def task(x: int) -> int:
            if attempts.increment(x) == 1 and x == 50:
                os._exit(1)
            return x

        it = taskfan.imap(task, range(100), retries=1, backoff=0, **P)
        assert list(it) == list(range(100))
    assert it.report.ok == 100 and it.report.retried == 1


def test_a_task_that_always_crashes_fails_after_its_retries() -> None:
    runner = taskfan.Runner(retries=2, backoff=0, **P)
    runner.add("bad", exit_on_50, 50)
    runner.add("good", exit_on_50, 1)
    results = runner.run()
    outcome = results.outcomes["bad"]
    assert (outcome.status, outcome.attempts) == ("crashed", 3)
    assert isinstance(outcome.error, WorkerCrashed) and results["good"] == 1
    assert results.report.retried == 2


def test_a_hung_task_is_killed_at_its_timeout() -> None:
    started = time.monotonic()
    it = taskfan.imap(sleep_on_50, range(100), timeout=1, errors="return", **P)
    got = list(it)
    assert time.monotonic() - started < 30  # killed, not waited for (1000 s)
    assert isinstance(got[50], TaskTimeout)
    assert [g for i, g in enumerate(got) if i != 50] == [i for i in range(100) if i != 50]
    assert it.report.timed_out == 1 and it.report.ok == 99


def test_lambdas_and_closures_are_sent_with_cloudpickle() -> None:
    offset = 7
    assert taskfan.map(lambda x: x + offset, range(5), **P) == [7, 8, 9, 10, 11]


class LocalError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")  # pickles, but cannot be rebuilt from args


class HoldsALock(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unrebuildable(x: int) -> int:
    raise LocalError(x, x)


def raise_unpicklable(x: int) -> int:
    raise HoldsALock


def return_a_lock(x: int) -> Any:
    return threading.Lock() if x == 1 else x


def test_bad_payload_unpicklable_function_fails_at_once() -> None:
    lock = threading.Lock()
    ran = []

    def task(x: int) -> int:
        with lock:
            ran.append(x)
        return x

    with pytest.raises(TypeError, match=r"cannot send the function .* even with cloudpickle"):
        taskfan.map(task, range(10), **P)
    assert ran == []
    assert workers_alive() == []  # no worker was even started


def test_bad_payload_unpicklable_argument_fails_that_task_only() -> None:
    items = [1, threading.Lock(), 3]
    got = taskfan.map(str, items, errors="return", **P)
    assert got[0] == "1" and got[2] == "3"
    assert isinstance(got[1], TypeError)
    assert "cannot send this task's arguments" in str(got[1])


def test_bad_payload_unpicklable_result_fails_that_task_only() -> None:
    runner = taskfan.Runner(retries=3, **P)
    for i in range(3):
        runner.add(i, return_a_lock, i)
    results = runner.run()
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], TypeError)
    assert "result could not be sent back" in str(results[1])
    assert results.outcomes[1].attempts == 1  # not retried: it cannot work next time


@pytest.mark.parametrize(
    ("task", "type_name", "message"),
    [(raise_unrebuildable, "LocalError", "1-1"), (raise_unpicklable, "HoldsALock", "holds a lock")],
)
def test_bad_payload_exception_arrives_as_task_error(
    task: Any, type_name: str, message: str
) -> None:
    [error] = taskfan.map(task, [1], errors="return", **P)
    assert isinstance(error, TaskError)
    assert error.type_name == f"tests.test_process.{type_name}"
    assert error.message == message
    assert isinstance(error.__cause__, taskfan.TaskTraceback)
    assert task.__name__ in error.__cause__.text


def test_an_exception_keeps_its_type_and_worker_traceback() -> None:
    def fails(x: int) -> int:
        return {}[x]  # type: ignore[no-any-return]

    with pytest.raises(KeyError) as info:
        taskfan.map(fails, [5], **P)
    cause = info.value.__cause__
    assert isinstance(cause, taskfan.TaskTraceback)
    assert "in fails" in cause.text and "return {}[x]" in cause.text


def remember_pid(tag: str) -> None:
    os.environ["TASKFAN_TEST_INIT"] = f"{tag}:{os.getpid()}"


def read_init(_: int) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("TASKFAN_TEST_INIT")


def test_initializer_runs_once_in_each_worker() -> None:
    got = taskfan.map(
        read_init, range(200), initializer=remember_pid, initargs=("hi",), chunksize=1, **P
    )
    for pid, seen in got:
        assert seen == f"hi:{pid}"
    assert os.getpid() not in {pid for pid, _ in got}


def test_a_failing_initializer_fails_every_task_clearly() -> None:
    def broken() -> None:
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        taskfan.map(read_init, range(3), initializer=broken, **P)


def test_max_tasks_per_worker_recycles_workers() -> None:
    got = taskfan.map(read_init, range(40), max_tasks_per_worker=5, **P)
    per_pid: dict[int, int] = {}
    for pid, _ in got:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert len(got) == 40
    assert max(per_pid.values()) <= 5 and len(per_pid) >= 8


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def start_method(request: pytest.FixtureRequest) -> Iterator[str]:
    multiprocessing.set_start_method(request.param, force=True)
    yield str(request.param)
    multiprocessing.set_start_method(None, force=True)


def test_every_start_method_works(start_method: str) -> None:
    from taskfan._start import start_method as chosen

    assert chosen() == start_method
    offset = 100
    assert taskfan.map(lambda x: x + offset, range(50), **P) == list(range(100, 150))
    got = taskfan.map(exit_on_50, range(60), errors="return", **P)
    assert isinstance(got[50], WorkerCrashed) and got[:50] == list(range(50))
    assert taskfan.map(read_init, [0], initializer=remember_pid, initargs=("x",), **P)[0][1]


def test_default_start_method_is_fork_only_when_single_threaded() -> None:
    from taskfan._start import start_method as chosen

    assert multiprocessing.get_start_method(allow_none=True) is None
    assert chosen() == "fork"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert chosen() == "forkserver"  # forking with a second thread is not safe
    finally:
        stop.set()
        thread.join()


def test_breaking_out_of_imap_leaves_no_worker() -> None:
    for value in taskfan.imap(abs, range(10**6), **P):
        if value == 10:
            break
    assert workers_alive() == []


def test_an_abandoned_iterator_leaves_no_worker() -> None:
    it = taskfan.imap(abs, range(10**6), **P)
    assert next(it) == 0
    del it
    assert workers_alive() == []


def test_errors_raise_leaves_no_worker() -> None:
    with pytest.raises(ZeroDivisionError):
        taskfan.map(lambda x: 1 / (x - 500), range(10**5), **P)
    assert workers_alive() == []


ORPHANS = """
import os, time, taskfan

def nap(x):
    print("worker", os.getpid(), flush=True)
    time.sleep(1000)

if __name__ == "__main__":
    taskfan.map(nap, range(4), backend="process", workers=2)
"""


def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    proc = run_script(ORPHANS, tmp_path)
    lines = read_until(proc, lambda line: line.startswith("worker"))
    first = int(lines[-1].split()[1])
    workers = psutil.Process(proc.pid).children()
    assert first in [w.pid for w in workers] and len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    alive = still_running(workers, timeout=1.0)
    assert not alive, f"workers still alive a second after the parent died: {alive}"


THREADED_ORPHANS = """
import os, threading, time, taskfan

def nap(x):
    print("worker", os.getpid(), flush=True)
    time.sleep(1000)

if __name__ == "__main__":
    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()  # a fork server
    taskfan.map(nap, range(4), backend="process", workers=2)
"""


def test_the_fork_server_and_its_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    proc = run_script(THREADED_ORPHANS, tmp_path)
    read_until(proc, lambda line: line.startswith("worker"))
    read_until(proc, lambda line: line.startswith("worker"))
    family = psutil.Process(proc.pid).children(recursive=True)
    # the fork server, and the two workers it forked
    assert len(family) == 3, [p.cmdline() for p in family]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    alive = still_running(family, timeout=5.0)
    assert not alive, f"still alive after the parent died: {alive}"


GLOBAL_STATE = """
import multiprocessing, os, sys, taskfan

STATE = {}

def init(tag):
    STATE["tag"] = tag + ":" + str(os.getpid())

def task(x):
    return STATE.get("tag"), os.getpid()

if __name__ == "__main__":
    if sys.argv[1] != "default":
        multiprocessing.set_start_method(sys.argv[1])
    got = taskfan.map(task, range(50), backend="process", workers=2, initializer=init,
                      initargs=("set",), chunksize=1)
    print("ok" if all(tag == f"set:{pid}" for tag, pid in got) else f"lost: {got[:3]}")
"""


@pytest.mark.parametrize("method", ["default", "spawn", "forkserver"])
def test_a_scripts_globals_are_the_workers_own(method: str, tmp_path: Path) -> None:
    # A function of the main script must see what the initializer stored in the
    # script's globals, not a copy taken when the function was pickled.
    script = tmp_path / "job.py"
    script.write_text(GLOBAL_STATE)
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


class SlowToPickle:
    """A result that takes 1.5 s to pickle: longer than the timeout of the task."""

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        time.sleep(1.5)
        return (int, (42,))


def make_slow_result(_: int) -> SlowToPickle:
    return SlowToPickle()


def test_sending_a_result_back_is_not_part_of_the_timeout() -> None:
    assert taskfan.map(make_slow_result, [0], timeout=1, **P) == [42]


def die_at_start() -> None:
    os._exit(5)


def test_workers_that_die_at_start_end_the_run_instead_of_respawning() -> None:
    with pytest.raises(WorkerCrashed, match="keep dying before they can run a task"):
        taskfan.map(abs, range(10), initializer=die_at_start, **P)


def test_a_forkserver_start_leaves_the_default_start_method_unset() -> None:
    # Starting a forkserver worker makes multiprocessing fix its default start method;
    # read back, it looked like the user's choice of fork, and later workers were forked
    # from a multi-threaded process.
    from taskfan._start import start_method as chosen

    release = threading.Event()
    helper = threading.Thread(target=release.wait, args=(30,), name="helper")
    helper.start()
    try:
        assert chosen() == "forkserver"
        got = taskfan.map(abs, [-1, -2, -3, -4], backend="process", workers=2, chunksize=1)
        assert got == [1, 2, 3, 4]
        assert multiprocessing.get_start_method(allow_none=True) is None
        assert chosen() == "forkserver"
    finally:
        release.set()
        helper.join()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_first_call_imports_nothing_it_does_not_use(backend: str) -> None:
    # A program's first call pays for every import on its way, before its first worker
    # starts: dataclasses (which brings inspect), ast and difflib cost about a third of
    # it, and a call of a plain function needs none of them (see taskfan._plain).
    code = (
        "import sys, taskfan\n"
        f"assert taskfan.map(abs, [-1, -2, -3], backend={backend!r}, workers=2) == [1, 2, 3]\n"
        "heavy = ('dataclasses', 'inspect', 'ast', 'difflib')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


SERVER_SCRIPT = """
import os, sys, threading
import taskfan

if __name__ == "__mp_main__":  # imported again, where the workers come from
    with open(os.environ["IMPORTS_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")

seen = []
spawn = os.posix_spawn

def spy(*args, **kwargs):
    seen.append(sorted(m for m in ("multiprocessing", "taskfan._engine") if m in sys.modules))
    return spawn(*args, **kwargs)

os.posix_spawn = spy

HEAVY = ("multiprocessing.connection", "multiprocessing.forkserver", "dataclasses",
         "traceback", "inspect", "cloudpickle", "taskfan.backends._base", "taskfan._outcome",
         "taskfan._engine")

def loaded(x):
    return os.getpid(), sorted(name for name in HEAVY if name in sys.modules)

if __name__ == "__main__":
    release = threading.Event()
    helper = threading.Thread(target=release.wait)  # a second thread: a fork server
    helper.start()
    fn = (lambda x: loaded(x)) if sys.argv[1] == "lambda" else loaded
    got = taskfan.map(fn, range(6), backend="process", workers=2, chunksize=1,
                      max_tasks_per_worker=1)
    release.set()
    helper.join()
    print("workers:", len({pid for pid, _ in got}))
    print("pids:", *sorted({pid for pid, _ in got}))
    print("spawned-with:", *seen[0])
    print("worker-had:", *got[0][1])
"""


def _run_server_script(tmp_path: Path, kind: str) -> tuple[dict[str, list[str]], list[str]]:
    """Run SERVER_SCRIPT: what it printed, by label, and the pids that imported it again."""
    script = tmp_path / "script.py"
    script.write_text(SERVER_SCRIPT)
    log = tmp_path / "imports.log"
    env = dict(os.environ, IMPORTS_LOG=str(log))
    out = subprocess.run(
        [sys.executable, str(script), kind],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    said = {line.split(":")[0]: line.split()[1:] for line in out.stdout.splitlines()}
    return said, log.read_text().split()


@pytest.mark.parametrize("kind", ["function", "lambda"])
def test_the_fork_server_imports_neither_the_main_script_nor_multiprocessing(
    kind: str, tmp_path: Path
) -> None:
    # Workers come from taskfan's own fork server in a program with threads. It boots
    # while the first call imports the engine and multiprocessing (it imports neither
    # multiprocessing's fork server nor its pipes: its boot is most of the first call),
    # and cloudpickle only for work sent by value. Each worker (6 here, one per task)
    # imports the main script once; the server never does: a script's top level may
    # start a thread, and the server must stay single-threaded to fork safely.
    said, imported = _run_server_script(tmp_path, kind)
    assert said["workers"] == ["6"], said
    assert said["spawned-with"] == [], said
    assert sorted(imported) == sorted(said["pids"]), (imported, said)
    had = said["worker-had"]
    if kind == "function":
        assert had == [], had
    else:
        assert "cloudpickle" in had and "multiprocessing.connection" not in had, had
        assert "taskfan._engine" not in had and "taskfan.backends._base" not in had, had


def test_a_worker_sends_only_a_mark_for_an_attempt_that_is_retried() -> None:
    from taskfan.backends._worker import SET_ASIDE, _record

    retried = ValueError("retried")
    try:
        raise retried
    except ValueError as error:
        record = _record(error, retried=(ValueError,))
    # Only the mark travels: the parent retries on it alone, and keeps no exception.
    assert record == (None, "", "", SET_ASIDE, True)
    try:
        raise KeyError("kept")
    except KeyError as error:
        kept = _record(error, retried=(ValueError,))
    assert kept[3] != SET_ASIDE and kept[1] == "builtins.KeyError"


class _ReadLate:
    """A result that, rebuilt in the parent, waits there until ``marker`` exists."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_rebuilt_once_marked, (self.marker,))


def _rebuilt_once_marked(marker: str) -> bool:
    # Waits for a condition (the next call ran in the worker), with a deadline: on
    # failure it gives up and says so, instead of hanging the parent.
    deadline = time.monotonic() + 10.0
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.path.exists(marker)


def _first_late_then_mark(item: tuple[str, str, bytes]) -> Any:
    kind, marker, _ = item
    if kind == "late":
        return _ReadLate(marker)
    if kind == "mark":
        Path(marker).touch()
    return kind


@pytest.mark.timeout(30)
def test_a_worker_gets_its_next_call_before_its_reply_is_read(tmp_path: Path) -> None:
    # Reading a large reply takes as long as running a chunk: the worker must have its
    # next call meanwhile. The third item is too large to be sent ahead to a busy worker,
    # so it waits in the parent until the second's reply comes back; rebuilding that
    # reply then waits until the third task has run.
    marker = str(tmp_path / "next-call-ran")
    items = [("first", marker, b""), ("late", marker, b""), ("mark", marker, b"x" * 200_000)]
    got = taskfan.map(_first_late_then_mark, items, **{**P, "workers": 1, "chunksize": 1})
    assert got == ["first", True, "mark"]


def _nap_and_echo(x: int) -> int:
    time.sleep(0.02)
    return x


@pytest.mark.timeout(60)
def test_a_run_goes_on_when_the_fork_server_is_killed() -> None:
    # The fork server reports its workers' ends. Killed, it reports nothing more: the
    # workers it forked are then killed as crashed (their running tasks fail, the others
    # run again elsewhere), and the next worker comes from a fresh server.
    from taskfan.backends import _server

    multiprocessing.set_start_method("forkserver", force=True)
    try:
        it = taskfan.imap(_nap_and_echo, range(60), errors="return", chunksize=1, **P)
        got = []
        first = None
        for value in it:
            got.append(value)
            if len(got) == 10:
                assert _server._server is not None
                first = _server._server.pid
                os.kill(first, signal.SIGKILL)
        assert len(got) == 60
        lost = [i for i, v in enumerate(got) if isinstance(v, BaseException)]
        assert all(isinstance(got[i], WorkerCrashed) for i in lost) and len(lost) <= 4, got
        assert [v for v in got if not isinstance(v, BaseException)] == [
            i for i in range(60) if i not in lost
        ]
        assert taskfan.map(abs, [-1, -2], **P) == [1, 2]
        assert _server._server is not None and _server._server.pid != first
    finally:
        multiprocessing.set_start_method(None, force=True)


def _identity(_: int) -> tuple[str, bytes]:
    import multiprocessing as mp  # first imported here, in a fork server's worker

    return mp.current_process().name, bytes(mp.current_process().authkey)


def test_a_fork_server_worker_has_the_programs_identity_in_multiprocessing() -> None:
    # As multiprocessing's own children: its authentication key (a Manager's proxies are
    # refused without it) and a name of its own, though it imports multiprocessing late.
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        got = taskfan.map(_identity, range(2), chunksize=1, **P)
    finally:
        multiprocessing.set_start_method(None, force=True)
    key = bytes(multiprocessing.current_process().authkey)
    assert all(authkey == key for _, authkey in got), got
    assert all(name.startswith("taskfan-process-") for name, _ in got), got


@pytest.mark.timeout(60)
def test_calls_from_several_threads_share_the_fork_server() -> None:
    # Each call starts its workers through the one server, over one socket: requests
    # from threads at once must not interleave there.
    multiprocessing.set_start_method("forkserver", force=True)
    start = threading.Barrier(4)
    got: dict[int, list[int]] = {}

    def call(k: int) -> None:
        start.wait(timeout=10)
        got[k] = taskfan.map(abs, range(-k * 10, 0), chunksize=1, max_tasks_per_worker=2, **P)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(1, 5)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=50)
    finally:
        multiprocessing.set_start_method(None, force=True)
    assert got == {k: [abs(x) for x in range(-k * 10, 0)] for k in range(1, 5)}


def _has_preloaded(extra_dir: str) -> tuple[bool, bool, str]:
    return "colorsys" in sys.modules, extra_dir in sys.path, os.getcwd()


def test_the_fork_server_keeps_the_programs_preload_path_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # multiprocessing.set_forkserver_preload is honoured by taskfan's server (imported
    # there once, before any fork); each worker gets the program's sys.path and working
    # directory as they are when it starts, not as they were when the server started.
    import colorsys  # noqa: F401 - (already in this process: the question is the worker)
    from multiprocessing import forkserver

    from taskfan.backends import _server

    _server.shut_down()  # a preload list counts for a server started after it
    multiprocessing.set_start_method("forkserver", force=True)
    multiprocessing.set_forkserver_preload(["colorsys"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        got = taskfan.map(_has_preloaded, [str(tmp_path)] * 2, chunksize=1, **P)
    finally:
        forkserver._forkserver._preload_modules = []
        multiprocessing.set_start_method(None, force=True)
        _server.shut_down()  # (the next test's server: without this preload)
    assert got == [(True, True, str(tmp_path))] * 2


def _nested_call(_: int) -> tuple[int, list[int]]:
    from taskfan.backends import _server

    # This worker was forked from the test process, server object and socket included.
    multiprocessing.set_start_method("forkserver", force=True)
    got = taskfan.map(abs, [-1, -2, -3], chunksize=1, **P)
    assert _server._server is not None
    return _server._server.owner, got


def test_a_forked_worker_starts_a_fork_server_of_its_own() -> None:
    # A process forked after the fork server started inherits the object and its
    # socket: requests from both ends would interleave there. It starts its own.
    from taskfan.backends import _server

    multiprocessing.set_start_method("forkserver", force=True)
    try:
        assert taskfan.map(abs, [-1], **P) == [1]  # the server runs: this process's
    finally:
        multiprocessing.set_start_method(None, force=True)
    assert _server._server is not None and _server._server.owner == os.getpid()
    assert start_method_is_fork()
    ((owner, got),) = taskfan.map(_nested_call, [0], **{**P, "workers": 1})
    assert got == [1, 2, 3] and owner not in (os.getpid(), None)
    assert taskfan.map(abs, [-4], **{**P, "backend": "process"}) == [4]  # ours still works


def start_method_is_fork() -> bool:
    from taskfan._start import start_method

    return start_method() == "fork"


PRELOAD_SCRIPT = """
import sys

if __name__ == "__mp_main__":  # a worker, importing this script again after its fork
    print("worker-found", "statistics" in sys.modules, "helper" in sys.modules, flush=True)

import statistics, threading, helper, taskfan

if __name__ == "__main__":
    release = threading.Event()
    helper_thread = threading.Thread(target=release.wait)  # a second thread: a fork server
    helper_thread.start()
    assert taskfan.map(abs, [-1, -2], backend="process", workers=2, chunksize=1) == [1, 2]
    release.set()
    helper_thread.join()
"""


def test_the_fork_server_imports_the_standard_library_the_program_uses(tmp_path: Path) -> None:
    # A worker finds in the server what the program had imported from the standard
    # library (statistics here), as a forked worker would; never the program's own
    # modules (helper), which it imports itself, as they may start threads or open files.
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    script = tmp_path / "script.py"
    script.write_text(PRELOAD_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["worker-found", "True", "False"] * 2, out.stdout


# --- a list given to map travels by place to forked workers ---------------------------------


class WherePickled:
    """Rebuilt with the pid of the process that pickled it."""

    def __init__(self, value: int, pickled_by: int | None = None) -> None:
        self.value, self.pickled_by = value, pickled_by

    def __reduce__(self) -> tuple[Any, ...]:
        return (WherePickled, (self.value, os.getpid()))


def where_pickled(item: WherePickled) -> tuple[int, int | None, int]:
    return item.value, item.pickled_by, os.getpid()


def test_a_list_given_to_map_is_pickled_by_the_forked_workers(start_method: str) -> None:
    # Forked workers have the list already: each pickles its own part, and the parent,
    # which every worker waits on, neither pickles nor touches the items. Other workers
    # get the items pickled by the parent.
    items = [WherePickled(i) for i in range(300)]
    got = taskfan.map(where_pickled, items, **P)
    assert [value for value, _, _ in got] == list(range(300))
    if start_method == "fork":
        assert all(by == worker for _, by, worker in got)
    else:
        assert all(by == os.getpid() for _, by, _ in got)
    # imap lets its caller run between results (and change the list): never by place
    assert all(by == os.getpid() for _, by, _ in taskfan.imap(where_pickled, items, **P))


class Rounded:
    """Pickling keeps only the whole part."""

    def __init__(self, x: float) -> None:
        self.x = x

    def __reduce__(self) -> tuple[Any, ...]:
        return (Rounded, (int(self.x),))


def read_x(item: Rounded) -> float:
    return item.x


def kind_and_value(item: Any) -> tuple[str, Any]:
    return type(item).__name__, item


def call_it(fn: Any) -> Any:
    return fn()


def test_items_read_by_place_are_what_pickling_makes_of_them() -> None:
    # as if they had come through the pipe: altered by their own pickling, plain values
    # of every kind unchanged, lambdas sent by value, unpicklable ones failing alone
    assert taskfan.map(read_x, [Rounded(i + 0.5) for i in range(100)], **P) == list(range(100))
    mixed = [1, "a", 2.5, b"x", None, True, 10**30, (1, 2), [3], {"k": 4}] * 30
    assert taskfan.map(kind_and_value, mixed, **P) == [(type(x).__name__, x) for x in mixed]
    assert taskfan.map(call_it, [lambda i=i: i * 2 for i in range(50)], **P) == [
        i * 2 for i in range(50)
    ]
    items: list[Any] = list(range(2000))
    items[1500] = threading.Lock()
    got = taskfan.map(str, items, errors="return", **P)
    assert isinstance(got[1500], TypeError)
    assert "cannot send this task's arguments" in str(got[1500])
    assert got[:1500] + got[1501:] == [str(i) for i in range(2000) if i != 1500]


def test_workers_started_otherwise_mid_run_get_the_items_themselves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first workers are forked; once the program has threads, the workers that
    # replace them are not, have no copy of the list, and are sent the items.
    from taskfan.backends import _process

    starts: list[str] = []

    def fork_then_spawn() -> str:
        starts.append("fork" if len(starts) < 3 else "spawn")
        return starts[-1]

    monkeypatch.setattr(_process, "start_method", fork_then_spawn)
    items = [WherePickled(i) for i in range(40)]
    got = taskfan.map(where_pickled, items, max_tasks_per_worker=10, chunksize=5, **P)
    assert [value for value, _, _ in got] == list(range(40))
    spawned = {pid for _, by, pid in got if by == os.getpid()}
    forked = {pid for _, by, pid in got if by == pid}
    assert spawned and forked and not spawned & forked
    assert len(spawned | forked) == len({pid for _, _, pid in got})


def test_a_part_reads_like_the_slice_it_stands_for() -> None:
    from taskfan.backends._base import Part

    data = list(range(10))
    part = Part(data, 2, 8)
    assert len(part) == 6 and list(part) == data[2:8]
    assert part[0] == 2 and part[-1] == 7
    assert list(part[1:3]) == data[3:5] and list(part[::2]) == data[2:8:2]
    assert len(Part(data, 8, 20)) == 2  # clipped at the end of its input
    with pytest.raises(IndexError):
        part[6]
