"""Shared fixtures: every behaviour test runs once per backend through ``backend``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskfan.backends._registry import REGISTRY, Registration

from . import scripted

# Every backend that can run here: a backend is tested by every behaviour test the
# moment it is registered.
BACKENDS = [entry.name for entry in REGISTRY.values() if entry.missing is None]
HERE = Path(__file__).parent


def backends_that(can: Callable[[Registration], bool]) -> list[str]:
    """The usable backends that ``can`` says yes to (``lambda e: e.timeouts``...)."""
    return [name for name in BACKENDS if can(REGISTRY[name])]


# The process backend runs each behaviour test twice: its workers forked from the test
# process (single-threaded: the default), and forked by taskfan's own fork server (the
# default of a program with threads, and every `forkserver` start).
BACKEND_RUNS = [*BACKENDS, *(["process-server"] if "process" in BACKENDS else [])]


@pytest.fixture(params=BACKEND_RUNS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of the backend under test."""
    name = str(request.param)
    if name != "process-server":
        yield name
        return
    import multiprocessing

    multiprocessing.set_start_method("forkserver", force=True)
    try:
        yield "process"
    finally:
        multiprocessing.set_start_method(None, force=True)


@pytest.fixture(params=scripted.DRIVERS)
def each_driver(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run a scripted-engine test on both drivers of the engine: the same policy, the
    same virtual instants, whether it blocks or awaits (``pytestmark`` of such modules)."""
    scripted.driver = request.param
    yield
    scripted.driver = "blocking"


@pytest.fixture
def opts(backend: str) -> dict[str, Any]:
    """Options that run a call on ``backend`` with several workers where it has them."""
    workers = 4 if REGISTRY[backend].many_workers else 1
    return {"backend": backend, "workers": workers, "progress": False}


@pytest.fixture
def parallel(backend: str) -> bool:
    """True when tasks of the backend under test can run at the same time."""
    return REGISTRY[backend].many_workers


class Gates:
    """Events for tasks to wait on; every one is released when the test ends.

    Tasks that must not end until the test says so wait on a gate (with a bound, so a
    broken test fails instead of hanging); nothing is left blocked afterwards. For the
    process backend a gate is a Manager event, which workers reach through its proxy.
    """

    def __init__(self) -> None:
        self._events: list[Any] = []
        self._manager: Any = None

    def new(self, backend: str = "thread") -> Any:
        if not REGISTRY[backend].in_process:
            if self._manager is None:
                import multiprocessing

                self._manager = multiprocessing.Manager()
            event = self._manager.Event()
        else:
            event = threading.Event()
        self._events.append(event)
        return event

    def close(self) -> None:
        for event in self._events:
            event.set()
        self._events = []
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None


@pytest.fixture
def gates() -> Iterator[Gates]:
    g = Gates()
    yield g
    g.close()


def _infrastructure(process: psutil.Process) -> bool:
    """The long-lived helpers that live as long as the program (multiprocessing's fork
    server and resource tracker, taskfan's fork server), not workers. Only those started
    by this process: a worker forked by a server has its command line too."""
    try:
        cmdline = " ".join(process.cmdline())
        parent = process.ppid()
    except psutil.Error:
        return True
    helpers = ("multiprocessing.forkserver", "multiprocessing.resource_tracker", _SERVER)
    return parent == os.getpid() and any(name in cmdline for name in helpers)


_SERVER = "from taskfan.backends._server import serve"


def _taskfan_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskfan")]


def workers_alive() -> list[psutil.Process]:
    """Child processes of this test process, but for multiprocessing's own helpers."""
    return [p for p in psutil.Process().children(recursive=True) if not _infrastructure(p)]


def still_running(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` that have not exited within ``timeout`` seconds.

    A zombie has exited (its parent is gone and nothing reaped it yet), so it counts as
    ended, though psutil sees it as running.
    """
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if _status(p) != psutil.STATUS_ZOMBIE]


def _status(process: psutil.Process) -> str:
    try:
        return str(process.status())
    except psutil.NoSuchProcess:
        return psutil.STATUS_DEAD


@pytest.fixture(autouse=True)
def nothing_left_behind(gates: Gates) -> Iterator[None]:
    """After each test: no taskfan thread and no child process may be left alive."""
    before = set(_taskfan_threads())
    yield
    gates.close()
    deadline = time.monotonic() + 10
    for thread in _taskfan_threads():
        if thread not in before:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [t.name for t in _taskfan_threads() if t not in before and t.is_alive()]
    assert not left, f"threads left behind: {left}"
    alive = still_running(workers_alive(), timeout=max(0.0, deadline - time.monotonic()))
    assert not alive, f"child processes left behind: {[p.pid for p in alive]}"


def run_script(code: str, tmp_path: Path) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter in its own session, SIGINT at its default,
    with the start method this test process has set, if any.

    A shell may start us with SIGINT ignored; children inherit that, and Python then
    installs no KeyboardInterrupt handler, so the child resets it first.
    """
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    if method is not None:  # (the "process-server" run of the backend fixture)
        code = f"import multiprocessing\nmultiprocessing.set_start_method({method!r}, True)\n{code}"
    script = tmp_path / "script.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - only async-signal-safe work in it
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(
    proc: subprocess.Popen[str], predicate: Callable[[str], bool], timeout: float = 20.0
) -> list[str]:
    """Lines of ``proc``'s stdout up to the first one that satisfies ``predicate``."""
    assert proc.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if predicate(line):
                found.set()
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not found.wait(timeout):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(
            f"child never printed the expected line; stdout={lines} stderr={err[-2000:]}"
        )
    return lines
