"""What the main program looks like changes nothing a user can see: read from stdin, from
-c, without a ``__main__`` guard, with logging never configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

THREADED = """
import threading, time, taskfan
threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # so: forkserver
METHOD
def double(x):
    return x * 2
print(taskfan.map(double, range(3), backend="process", workers=2), flush=True)
print(taskfan.map(lambda x: x + 1, range(3), backend="process", workers=2), flush=True)
"""


def _python(args: list[str], stdin: str | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=dict(os.environ, PYTHONWARNINGS="default"),
        check=False,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["stdin", "-c"])
@pytest.mark.parametrize(
    "method",
    ["", "import multiprocessing; multiprocessing.set_start_method('spawn')"],
    ids=["auto", "spawn"],
)
def test_a_program_without_a_file_runs_on_processes(how: str, method: str, tmp_path: Path) -> None:
    code = THREADED.replace("METHOD", method)
    done = (
        _python(["-", *[]], stdin=code, cwd=tmp_path)
        if how == "stdin"
        else _python(["-c", code], cwd=tmp_path)
    )
    assert done.stdout.splitlines() == ["[0, 2, 4]", "[1, 2, 3]"], done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


UNGUARDED = """
import threading, time, taskfan
threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # so: forkserver
def double(x):
    return x * 2
GUARD
    print(taskfan.map(double, range(3), backend="process", workers=2), flush=True)
"""


@pytest.mark.timeout(90)
def test_an_unguarded_script_is_told_once_that_its_top_level_runs_again(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(UNGUARDED.replace("GUARD", "for _ in range(2):"))
    done = _python([str(script)])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("RuntimeWarning") == 1, done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert f"{script}:7" in done.stderr  # the line that started the work


@pytest.mark.timeout(90)
def test_a_guarded_script_is_told_nothing(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(UNGUARDED.replace("GUARD", 'if __name__ == "__main__":'))
    done = _python([str(script)])
    assert done.stdout.splitlines() == ["[0, 2, 4]"], done.stderr
    assert "Warning" not in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_log_progress_is_seen_without_any_logging_setup(tmp_path: Path) -> None:
    code = (
        "import logging, taskfan\n"
        "taskfan.map(abs, range(5), progress='log', desc='sums')\n"
        "assert logging.getLogger('taskfan').handlers == []  # nothing left behind\n"
        "logging.getLogger('taskfan').info('after the run: not shown')\n"
    )
    done = _python(["-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sums: 5 tasks: 5 ok" in done.stderr
    assert "not shown" not in done.stderr
