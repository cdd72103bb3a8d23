"""The ``taskfan`` command line, through real subprocesses (``python -m taskfan``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import taskfan
from taskfan._journal import JournalError

from .conftest import still_running, workers_alive

TASKS = '''
import os, time

def _log(x):
    with open("ran.log", "a") as log:
        log.write(f"{x}\\n")

def add(a, b=0):
    _log(a)
    return a + b

def fail_on_three(x):
    _log(x)
    if x == 3:
        raise ValueError("three is not allowed")
    return x * 10

def greet(name, id=None):
    _log(name)
    return f"hello {name}"

def hold(x):
    """Ends at once for x < 5; later ones wait until the file "release" exists."""
    _log(x)
    if x >= 5 and not os.path.exists("release"):
        time.sleep(1000)
    return x
'''


def cli(
    tmp_path: Path, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m taskfan ARGS`` in ``tmp_path`` (where tasks.py is)."""
    (tmp_path / "tasks.py").write_text(TASKS)
    return subprocess.run(
        [sys.executable, "-m", "taskfan", *args],
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return sorted(log.read_text().split()) if log.exists() else []


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_run_happy_path(tmp_path: Path, backend: str) -> None:
    (tmp_path / "in.jsonl").write_text('{"a": 1, "b": 2}\n[3, 4]\n\n5\n')
    done = cli(tmp_path, "run", "tasks.py:add", "--input", "in.jsonl", "--backend", backend)
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert sorted((o["key"], o["status"], o["value"]) for o in out) == [
        (1, "ok", 3),
        (2, "ok", 7),
        (4, "ok", 5),  # keys are line numbers; the blank line 3 is no task
    ]
    assert all(set(o) == {"key", "status", "value", "error", "attempts", "duration"} for o in out)
    assert "3 tasks: 3 ok" in done.stderr


def test_failing_tasks_exit_1(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(f"{x}\n" for x in range(5)))
    out_file = tmp_path / "out.jsonl"
    done = cli(
        tmp_path, "run", "tasks.py:fail_on_three", "--input", "in.jsonl", "--output", "out.jsonl"
    )
    assert done.returncode == 1
    assert done.stdout == ""
    out = {o["key"]: o for o in lines(out_file.read_text())}
    assert out[4]["status"] == "failed"
    assert out[4]["error"] == "ValueError: three is not allowed"
    assert out[4]["value"] is None
    assert out[5]["value"] == 40
    assert "1 failed" in done.stderr
    assert "4 failed: ValueError: three is not allowed" in done.stderr


def test_malformed_json_names_the_line_and_runs_nothing(tmp_path: Path) -> None:
    rows = [json.dumps({"a": x}) for x in range(10)]
    rows[6] = '{"a": 6,'
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    done = cli(tmp_path, "run", "tasks.py:add", "--input", "in.jsonl")
    assert done.returncode == 2
    assert "in.jsonl:7: not valid JSON" in done.stderr
    assert done.stdout == ""
    assert ran(tmp_path) == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuchmodule:f", "no module named 'nosuchmodule'"),
        ("tasks:nope", "tasks has no 'nope'; its functions are: add, fail_on_three, greet"),
        ("missing.py:f", "TARGET file 'missing.py' does not exist"),
        ("tasks.py", "must be package.module:function or path/to/file.py:function"),
    ],
)
def test_an_unknown_target_says_what_was_not_found(
    tmp_path: Path, target: str, message: str
) -> None:
    done = cli(tmp_path, "run", target, stdin="1\n")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_input_errors_name_the_file_and_line(tmp_path: Path) -> None:
    done = cli(tmp_path, "run", "tasks:greet", "--key", "id", stdin='{"name": "a"}\n')
    assert done.returncode == 2
    assert "<stdin>:1: --key id: this line has no field 'id'" in done.stderr
    both = '{"name": "a", "id": 1}\n{"name": "b", "id": 1}\n'
    done = cli(tmp_path, "run", "tasks:greet", "--key", "id", stdin=both)
    assert done.returncode == 2
    assert "<stdin>:2: key 1 again (first on line 1)" in done.stderr
    done = cli(tmp_path, "run", "tasks:add", "--input", "nothere.jsonl")
    assert done.returncode == 2
    assert "cannot read the input file 'nothere.jsonl'" in done.stderr
    done = cli(tmp_path, "run", "tasks:add", "-j", "0", stdin="1\n")
    assert done.returncode == 2
    assert "expected an integer >= 1" in done.stderr
    done = cli(tmp_path, "run", "tasks:add", "--rerun", "all", stdin="1\n")
    assert done.returncode == 2
    assert "rerun= only means something with a journal" in done.stderr
    done = cli(tmp_path, "run", "tasks:add", "--backend", "dask", stdin="1\n")
    assert done.returncode == 2
    assert "backend='dask' is not available" in done.stderr
    assert ran(tmp_path) == []


def test_stdin_to_stdout(tmp_path: Path) -> None:
    done = cli(tmp_path, "run", "tasks:add", "-j", "2", stdin="1\n2\n3\n")
    assert done.returncode == 0, done.stderr
    assert sorted(o["value"] for o in lines(done.stdout)) == [1, 2, 3]
    assert ran(tmp_path) == ["1", "2", "3"]


def test_dry_run_lists_and_runs_nothing(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"name": n, "id": n}) + "\n" for n in "abc")
    (tmp_path / "in.jsonl").write_text(rows)
    args = ["run", "tasks:greet", "--input", "in.jsonl", "--key", "id", "--journal", "j.db"]
    done = cli(tmp_path, *args, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert [(o["key"], o["action"]) for o in lines(done.stdout)] == [
        ("a", "run"),
        ("b", "run"),
        ("c", "run"),
    ]
    assert lines(done.stdout)[0]["kwargs"] == {"name": "a", "id": "a"}
    assert "3 of 3 tasks would run" in done.stderr
    assert ran(tmp_path) == []
    assert not (tmp_path / "j.db").exists()

    (tmp_path / "part.jsonl").write_text(rows.splitlines()[0] + "\n")
    assert cli(tmp_path, *args[:2], "--input", "part.jsonl", *args[4:]).returncode == 0
    done = cli(tmp_path, *args, "--dry-run")
    assert [o["action"] for o in lines(done.stdout)] == ["resume", "run", "run"]
    assert ran(tmp_path) == ["a"]


def test_resumed_keys_are_in_the_output(tmp_path: Path) -> None:
    rows = [json.dumps({"name": n, "id": n}) for n in "abcd"]
    (tmp_path / "first.jsonl").write_text("\n".join(rows[:2]) + "\n")
    (tmp_path / "all.jsonl").write_text("\n".join(rows) + "\n")
    common = ["run", "tasks:greet", "--key", "id", "--journal", "j.db"]
    assert cli(tmp_path, *common, "--input", "first.jsonl").returncode == 0
    done = cli(tmp_path, *common, "--input", "all.jsonl")
    assert done.returncode == 0, done.stderr
    assert sorted(o["key"] for o in lines(done.stdout)) == ["a", "b", "c", "d"]
    assert "2 resumed" in done.stderr
    assert ran(tmp_path) == ["a", "b", "c", "d"]  # each ran once

    status = cli(tmp_path, "status", "j.db")
    assert status.returncode == 0
    assert "4 tasks recorded (4 ok)" in status.stdout
    assert "function: tasks.greet" in status.stdout
    results = cli(tmp_path, "results", "j.db", "--status", "ok")
    assert sorted(o["value"] for o in lines(results.stdout)) == [f"hello {n}" for n in "abcd"]


def test_status_of_failures_and_of_no_journal(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(f"{x}\n" for x in range(5)))
    cli(tmp_path, "run", "tasks:fail_on_three", "--input", "in.jsonl", "--journal", "j.db")
    status = cli(tmp_path, "status", "j.db")
    assert status.returncode == 0
    assert "(4 ok, 1 failed)" in status.stdout
    assert "4: ValueError: three is not allowed" in status.stdout
    failed = cli(tmp_path, "results", "j.db", "--status", "failed")
    assert [o["key"] for o in lines(failed.stdout)] == [4]
    (tmp_path / "notes.txt").write_text("not a journal")
    for name, message in (("nothere.db", "no journal at"), ("notes.txt", "not a taskfan journal")):
        done = cli(tmp_path, "status", name)
        assert done.returncode == 2
        assert message in done.stderr


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_ctrl_c_exits_130_and_the_rerun_completes(tmp_path: Path, backend: str) -> None:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "in.jsonl").write_text("".join(f"{x}\n" for x in range(8)))
    args = ["-m", "taskfan", "run", "tasks:hold", "--input", "in.jsonl", "--journal", "j.db"]
    args += ["--backend", backend]
    proc = subprocess.Popen(
        [sys.executable, *args, "-j", "8"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 - only async-signal-safe work in it
    )
    got: list[dict[str, Any]] = []
    five = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(json.loads(line))
            if len(got) == 5:
                five.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert five.wait(30), "the first five tasks never came out"
    deadline = time.monotonic() + 30
    while _recorded(tmp_path / "j.db") < 5:  # the writer thread runs: Ctrl+C finds it there
        assert time.monotonic() < deadline, "the journal never got the first five tasks"
        time.sleep(0.01)
    while len(_ran(tmp_path)) < 8:  # tasks 5, 6 and 7 hold: Ctrl+C must find them started
        assert time.monotonic() < deadline, f"only {_ran(tmp_path)} started"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    reader.join(10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sorted(o["key"] for o in got) == [1, 2, 3, 4, 5]  # inputs 0..4, on lines 1..5
    kept = taskfan.Journal(tmp_path / "j.db").outcomes()
    assert sorted(kept) == [1, 2, 3, 4, 5]  # what ended was written, and nothing else
    assert not still_running(workers_alive(), timeout=10)

    (tmp_path / "release").write_text("")
    done = subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(o["key"] for o in lines(done.stdout)) == list(range(1, 9))
    assert "5 resumed" in done.stderr
    runs = (tmp_path / "ran.log").read_text().split()
    assert sorted(runs) == ["0", "1", "2", "3", "4", "5", "5", "6", "6", "7", "7"]


def _ran(folder: Path) -> list[str]:
    log = folder / "ran.log"
    return log.read_text().split() if log.exists() else []


def _recorded(journal: Path) -> int:
    try:
        return taskfan.Journal(journal).summary().total
    except JournalError:
        return 0  # not created yet


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_runs_as_intended(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taskfan", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "taskfan demo ran as intended; its files are in" in done.stdout
    assert "Traceback (most recent call last)" in done.stdout
    assert "199 resumed" in done.stderr
    assert "%|" in done.stderr  # the progress bar


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    done = cli(tmp_path)
    assert done.returncode == 2
    assert "usage: taskfan" in done.stderr
    assert "run" in done.stderr and "status" in done.stderr
