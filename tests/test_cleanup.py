"""Nothing a run started outlives it: a task's own subprocesses, the SafeCounter server,
and worker processes when Ctrl+C is pressed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import taskfan

from .conftest import read_until, run_script, still_running


def _start_sleep_then_hang(pid_file: str) -> None:
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    child.wait()


def _running(pid: int) -> bool:
    """Is ``pid`` still running after a few seconds' grace?"""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return False
    return bool(still_running([process], timeout=5.0))


def _wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


@pytest.mark.timeout(60)
def test_a_timeout_kills_the_subprocesses_of_its_task(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    got = taskfan.map(
        _start_sleep_then_hang,
        [str(pid_file)],
        backend="process",
        timeout=1.0,
        errors="return",
        progress=False,
    )
    assert isinstance(got[0], taskfan.TaskTimeout)
    sleeper = int(_wait_for_file(pid_file))
    assert not _running(sleeper), "the task's subprocess outlived it"


KILLED_PARENT = """
import subprocess, sys, time, taskfan
from pathlib import Path

def task(pid_file):
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(child.pid))
    child.wait()

if __name__ == "__main__":
    counter = taskfan.SafeCounter.make("process")
    print("ready", flush=True)
    taskfan.map(task, [PID_FILE], backend="process", progress=False)
"""


@pytest.mark.timeout(60)
def test_sigkill_of_the_caller_takes_workers_task_subprocesses_and_server(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "sleep.pid"
    proc = run_script(KILLED_PARENT.replace("PID_FILE", repr(str(pid_file))), tmp_path)
    read_until(proc, lambda line: line.startswith("ready"))
    sleeper = psutil.Process(int(_wait_for_file(pid_file)))
    descendants = psutil.Process(proc.pid).children(recursive=True)
    assert len(descendants) >= 3  # the server, a worker, its sleep (maybe a forkserver)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    alive = still_running([*descendants, sleeper], timeout=5.0)
    assert not alive, f"left running after the caller was killed: {alive}"


SERVER_ONLY = """
import os, taskfan
if __name__ == "__main__":
    counter = taskfan.SafeCounter.make("process")
    counter.increment("x")
    print("ready", os.path.dirname(counter._proxy._token.address), flush=True)
    import time
    time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_safecounter_server_ends_with_its_parent(tmp_path: Path, sig: int) -> None:
    proc = run_script(SERVER_ONLY, tmp_path)
    line = read_until(proc, lambda line: line.startswith("ready"))[-1]
    folder = line.split(" ", 1)[1].strip()
    server = psutil.Process(proc.pid).children(recursive=True)
    assert server
    proc.send_signal(sig)
    proc.communicate(timeout=10)
    assert not still_running(server, timeout=5.0)
    deadline = time.monotonic() + 5
    while os.path.exists(folder) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(folder), f"{folder} left behind"


TWICE = """
import os, time, taskfan

def stuck(i):
    os.write(1, f"stuck {os.getpid()}\\n".encode())  # one write: lines never interleave
    time.sleep(1000)

if __name__ == "__main__":
    taskfan.map(stuck, range(8), backend="process", workers=4, progress=False)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("gap", [0.0, 0.002, 0.01, 0.03])
def test_a_second_ctrl_c_during_cleanup_still_stops_every_worker(
    tmp_path: Path, gap: float
) -> None:
    proc = run_script(TWICE, tmp_path)
    seen: set[str] = set()

    def four_stuck(line: str) -> bool:
        if line.startswith("stuck"):
            seen.add(line.split()[1])
        return len(seen) == 4

    read_until(proc, four_stuck)
    workers = [psutil.Process(int(pid)) for pid in seen]
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert "KeyboardInterrupt" in err
    alive = still_running(workers, timeout=5.0)
    assert not alive, f"workers kept running after two Ctrl+C: {[p.pid for p in alive]}"
