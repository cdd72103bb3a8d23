"""The journal: finished keys come back without running, on every front and backend; a
killed run loses only what was in flight; a file that is not a journal is left alone."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import taskfan
from taskfan._journal import JournalError

from .conftest import Gates, read_until, run_script, still_running, workers_alive


def ran(log: Path) -> Counter[str]:
    """How many times each item's task ended, from the lines the tasks appended."""
    if not log.exists():
        return Counter()
    return Counter(log.read_text().split())


def task(log: str, failing: str, x: int) -> Any:
    """Append x to ``log`` (a task that ended); fail when ``failing`` lists x."""
    with open(log, "a") as out:
        out.write(f"{x}\n")
    if os.path.exists(failing) and str(x) in Path(failing).read_text().split():
        raise ValueError(f"item {x} is broken")
    return {"x": x, "square": x * x}


def setup(tmp_path: Path, failing: tuple[int, ...] = ()) -> tuple[Path, Path, Any]:
    """The ran-log, the file listing failing items, and the task that uses them."""
    log, flag = tmp_path / "ran.log", tmp_path / "failing.txt"
    flag.write_text(" ".join(map(str, failing)))
    return log, flag, functools.partial(task, str(log), str(flag))


def test_finished_keys_come_back_without_running(opts: dict[str, Any], tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path)
    journal = tmp_path / "run.db"
    first = taskfan.map(fn, range(50), journal=journal, **opts)
    it = taskfan.imap(fn, range(50), journal=str(journal), **opts)
    again = list(it)
    assert again == first == [{"x": x, "square": x * x} for x in range(50)]
    assert ran(log) == Counter({str(x): 1 for x in range(50)})
    report = it.report
    assert (report.total, report.ok, report.resumed) == (50, 50, 50)
    assert "50 resumed" in str(report)


def test_starmap_and_parallelized_resume_too(opts: dict[str, Any], tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path)
    journal = tmp_path / "run.db"
    assert taskfan.starmap(fn, [(1,), (2,)], journal=journal, **opts)[1]["x"] == 2
    again = taskfan.starmap(fn, [(1,), (2,), (3,)], journal=journal, **opts)
    assert [v["x"] for v in again] == [1, 2, 3]
    kwargs = [{"x": x} for x in range(4)]
    with taskfan.Parallelized(fn, kwargs, journal=tmp_path / "p.db", **opts) as run:
        assert sorted(r["x"] for _, r, _ in run) == [0, 1, 2, 3]
    with taskfan.Parallelized(fn, kwargs, journal=tmp_path / "p.db", **opts) as run:
        assert sorted(r["x"] for _, r, _ in run) == [0, 1, 2, 3]
        assert run.report.resumed == 4
    # starmap's second call ran only (3,); Parallelized's second run ran nothing
    assert ran(log) == Counter({"0": 1, "1": 2, "2": 2, "3": 2})


def test_rerun_failed_runs_only_the_failures(opts: dict[str, Any], tmp_path: Path) -> None:
    log, flag, fn = setup(tmp_path, failing=(3, 7))
    journal = tmp_path / "run.db"
    first = taskfan.map(fn, range(10), journal=journal, errors="return", **opts)
    assert [i for i, v in enumerate(first) if isinstance(v, ValueError)] == [3, 7]
    flag.write_text("")  # mended
    it = taskfan.imap(fn, range(10), journal=journal, **opts)  # rerun="failed" by default
    assert list(it) == [{"x": x, "square": x * x} for x in range(10)]
    assert it.report.resumed == 8
    assert ran(log) == Counter({str(x): 2 if x in (3, 7) else 1 for x in range(10)})


def test_a_rate_limited_rerun_ends_with_the_resumed_tasks_after_the_last_failure(
    opts: dict[str, Any], tmp_path: Path
) -> None:
    # Item 7 failed; items 8 and 9 come after it in the journal. Rerun with a rate
    # limit, 7 runs at once and ends before the next rate slot: the engine then looked
    # ahead for the slot's task, took 8 and 9 (resumed, so settled at once) and, with
    # nothing left in flight, raised "nothing to wait for (this is a bug)" instead of
    # handing them back.
    log, flag, fn = setup(tmp_path, failing=(7,))
    journal = tmp_path / "run.db"
    taskfan.map(fn, range(10), journal=journal, errors="return", **opts)
    flag.write_text("")  # mended
    it = taskfan.imap(fn, range(10), journal=journal, rate=2, **opts)
    assert list(it) == [{"x": x, "square": x * x} for x in range(10)]
    assert it.report.resumed == 9
    assert ran(log) == Counter({str(x): 2 if x == 7 else 1 for x in range(10)})


def test_rerun_missing_keeps_the_failures(opts: dict[str, Any], tmp_path: Path) -> None:
    log, flag, fn = setup(tmp_path, failing=(2,))
    journal = tmp_path / "run.db"
    taskfan.map(fn, range(4), journal=journal, errors="return", **opts)
    flag.write_text("")
    again = taskfan.map(fn, range(6), journal=journal, errors="return", rerun="missing", **opts)
    assert isinstance(again[2], ValueError)
    assert "item 2 is broken" in str(again[2])
    assert again[5] == {"x": 5, "square": 25}
    assert ran(log) == Counter({str(x): 1 for x in range(6)})  # 4 and 5 were missing
    with pytest.raises(ValueError, match="item 2 is broken"):  # errors="raise": as recorded
        taskfan.map(fn, range(6), journal=journal, rerun="missing", **opts)


def test_rerun_all_runs_everything_again(opts: dict[str, Any], tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path)
    journal = tmp_path / "run.db"
    taskfan.map(fn, range(5), journal=journal, **opts)
    it = taskfan.imap(fn, range(5), journal=journal, rerun="all", **opts)
    assert len(list(it)) == 5
    assert it.report.resumed == 0
    assert ran(log) == Counter({str(x): 2 for x in range(5)})
    assert len(taskfan.Journal(journal).outcomes()) == 5


def test_runner_resumes_outcomes_as_they_were(backend: str, tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path, failing=(1,))
    journal = tmp_path / "run.db"
    opts: dict[str, Any] = {"backend": backend, "progress": False, "journal": journal}

    def runner(**extra: Any) -> taskfan.Results:
        r = taskfan.Runner(**opts, **extra)
        for x in range(3):
            r.add(("item", x), fn, x)
        return r.run()

    first = runner()
    again = runner(rerun="missing")
    assert list(again) == [("item", 0), ("item", 1), ("item", 2)]
    assert again.report.resumed == 3
    before, after = first.outcomes[("item", 1)], again.outcomes[("item", 1)]
    assert after.status == "failed"
    assert type(after.error) is ValueError
    assert after.traceback == before.traceback
    assert "item 1 is broken" in (after.traceback or "")
    assert after.error.__cause__ is not None  # the worker's traceback, as for a live one
    assert (after.attempts, after.worker) == (before.attempts, before.worker)
    assert after.started == pytest.approx(before.started)
    assert ran(log) == Counter({"0": 1, "1": 1, "2": 1})
    recorded = taskfan.Journal(journal).outcomes()
    assert recorded[("item", 0)].value == {"x": 0, "square": 0}


class Odd:
    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Odd) and other.n == self.n

    def __hash__(self) -> int:
        return self.n


VALUES = [
    1,
    -(2**70),
    2.5,
    math.inf,
    "text \u00e9 \ud800",
    None,
    True,
    [1, "a", None, [2.0]],
    {"a": {"b": [1, 2]}},
    (1, 2),
    {1: "int key"},
    b"bytes",
    Odd(3),
    {"nan": math.nan},
]


def identity(x: Any) -> Any:
    return x


def test_values_come_back_equal_and_of_the_same_type(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    first = taskfan.map(identity, VALUES, journal=journal, workers=2, progress=False)
    it = taskfan.imap(identity, VALUES, journal=journal, workers=2, progress=False)
    again = list(it)
    assert it.report.resumed == len(VALUES)
    for a, b in zip(first, again, strict=True):
        if isinstance(a, dict) and "nan" in a:
            assert math.isnan(b["nan"])
            continue
        assert a == b and type(a) is type(b), (a, b)


def test_a_value_that_cannot_be_stored_runs_again(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    made = []

    def make(x: int) -> Any:
        made.append(x)
        return threading.Lock() if x == 1 else x

    taskfan.map(make, range(3), journal=journal, progress=False)
    taskfan.map(make, range(3), journal=journal, progress=False)
    assert sorted(made) == [0, 1, 1, 2]


def test_key_follows_the_item_when_the_input_changes(opts: dict[str, Any], tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path)
    journal = tmp_path / "run.db"

    def by_id(x: int) -> str:
        return f"id-{x}"

    taskfan.map(fn, [1, 2, 3], journal=journal, key=by_id, **opts)
    again = taskfan.map(fn, [0, 3, 2, 1, 4], journal=journal, key=by_id, **opts)
    assert [v["x"] for v in again] == [0, 3, 2, 1, 4]
    assert ran(log) == Counter({"0": 1, "1": 1, "2": 1, "3": 1, "4": 1})
    assert set(taskfan.Journal(journal).outcomes()) == {f"id-{x}" for x in range(5)}


def test_key_on_a_lazy_input(opts: dict[str, Any], tmp_path: Path) -> None:
    log, _, fn = setup(tmp_path)
    journal = tmp_path / "run.db"
    taskfan.map(fn, iter(range(20)), journal=journal, key=lambda x: ("k", x), **opts)
    it = taskfan.imap(fn, iter(range(30)), journal=journal, key=lambda x: ("k", x), **opts)
    assert [v["x"] for v in it] == list(range(30))
    assert it.report.resumed == 20
    assert ran(log) == Counter({str(x): 1 for x in range(30)})


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (lambda x: {"a": x}, r"item 0: task key \{'a': 1\} \(dict\) cannot be stored"),
        (lambda x: object() if x == 2 else x, "item 1: task key <object object"),
        (lambda x: math.nan if x == 2 else x, "item 1: task key nan"),
    ],
    ids=["dict", "object", "nan"],
)
def test_a_bad_key_fails_before_any_task_runs(key: Any, message: str, tmp_path: Path) -> None:
    done: list[int] = []
    with pytest.raises(TypeError, match=message):
        taskfan.map(done.append, [1, 2, 3], journal=tmp_path / "run.db", key=key)
    assert done == []
    assert not (tmp_path / "run.db").exists()


def test_a_duplicate_key_is_an_error_naming_it(tmp_path: Path) -> None:
    done: list[int] = []
    with pytest.raises(ValueError, match=r"duplicate task key 'same' \(items 0 and 1\)"):
        taskfan.map(done.append, [1, 2], journal=tmp_path / "run.db", key=lambda x: "same")
    assert done == []
    with pytest.raises(ValueError, match="duplicate task key 'b'"):  # lazy: found on intake
        taskfan.map(
            done.append, iter("abcb"), journal=tmp_path / "lazy.db", key=str, progress=False
        )


def test_runner_keys_must_be_json(tmp_path: Path) -> None:
    runner = taskfan.Runner(journal=tmp_path / "run.db")
    runner.add(frozenset({1}), print, "never")
    with pytest.raises(TypeError, match=r"task key frozenset\(\{1\}\) \(frozenset\)"):
        runner.run()


def test_a_different_function_is_warned_about(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    taskfan.map(identity, range(3), journal=journal)
    with pytest.warns(UserWarning, match=r"holds outcomes of .*identity, and this run calls .*abs"):
        assert taskfan.map(abs, range(3), journal=journal) == [0, 1, 2]


def test_keys_that_match_nothing_are_warned_about(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    taskfan.map(identity, range(3), journal=journal, key=str)
    with pytest.warns(UserWarning, match="none of the 3 keys of this run were in the journal"):
        taskfan.map(identity, range(3), journal=journal)


def test_a_file_that_is_not_a_journal_is_left_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("my precious notes\n" * 20)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path, message in ((text, "not a taskfan journal"), (other, "not a taskfan journal")):
        before = path.read_bytes()
        with pytest.raises(JournalError, match=f"{path.name}.*{message}.*left untouched"):
            taskfan.map(identity, [1], journal=path)
        with pytest.raises(JournalError, match=message):
            taskfan.Journal(path)
        assert path.read_bytes() == before
        assert not Path(f"{path}-wal").exists()


def test_a_corrupt_journal_is_a_clear_error(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    taskfan.map(identity, range(2000), journal=journal, key=lambda x: f"key {x:05}" * 4)
    data = bytearray(journal.read_bytes())
    page = 4096
    data[page:] = b"\xde\xad" * ((len(data) - page) // 2)  # every page but the first
    journal.write_bytes(bytes(data))
    ran_: list[int] = []
    with pytest.raises(JournalError, match=r"run.db' cannot be read .*corrupt.*left as it is"):
        taskfan.map(ran_.append, range(3), journal=journal)
    assert ran_ == []
    assert journal.read_bytes() == bytes(data)


def test_journal_reads_while_a_run_writes(tmp_path: Path, gates: Gates) -> None:
    journal = tmp_path / "run.db"
    gate = gates.new()

    def wait(x: int) -> int:
        if x >= 5:
            gate.wait(20)
        return x

    it = taskfan.imap(wait, range(10), journal=journal, workers=10, progress=False)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    summary = taskfan.Journal(journal).summary()  # the run holds the journal now
    assert summary.counts["ok"] <= 5
    gate.set()
    assert list(it) == [5, 6, 7, 8, 9]
    summary = taskfan.Journal(journal).summary()
    assert summary.counts == {"ok": 10, "failed": 0, "timeout": 0, "crashed": 0}
    assert summary.runs == 1
    assert "10 tasks recorded (10 ok)" in str(summary)


def test_two_runs_on_one_journal_in_one_process(tmp_path: Path, gates: Gates) -> None:
    journal = tmp_path / "run.db"
    gate, started = gates.new(), threading.Event()

    def hold(x: int) -> bool:
        started.set()  # the run has its journal open before any task starts
        return bool(gate.wait(20))

    it = taskfan.imap(hold, range(2), journal=journal, progress=False)
    runs = threading.Thread(target=list, args=(it,), name="first run")
    runs.start()
    try:
        assert started.wait(20)
        done: list[int] = []
        with pytest.raises(JournalError, match=r"run.db' is being written by another run"):
            taskfan.map(done.append, [1], journal=journal)
        assert done == []
    finally:
        gate.set()
        runs.join()


HOLDER = """
import sys, taskfan, time, pathlib
def hold(x):
    print("holding", flush=True)
    release = pathlib.Path(sys.argv[0]).with_name("release")
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return x
if __name__ == "__main__":
    taskfan.map(hold, [1], journal=JOURNAL, backend="thread", workers=2)
    print("done", flush=True)
"""


def test_a_second_process_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    proc = run_script(HOLDER.replace("JOURNAL", repr(str(journal))), tmp_path)
    try:
        read_until(proc, lambda line: line.startswith("holding"))
        with pytest.raises(JournalError, match=r"run.db' is being written by process \d+ on"):
            taskfan.map(identity, [1], journal=journal)
        (tmp_path / "release").write_text("")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "done" in out
    finally:
        proc.kill()
        proc.communicate()
    assert taskfan.map(identity, [1], journal=journal, rerun="all") == [1]  # free again


KILLED = """
import os, sys, time, taskfan
LOG = sys.argv[1]
def work(x):
    time.sleep(0.002)
    with open(LOG, "a") as out:
        out.write(f"{x}\\n")
    return x * 3
if __name__ == "__main__":
    print("pid", os.getpid(), flush=True)
    result = taskfan.map(work, range(N), journal=JOURNAL, backend=BACKEND, workers=4,
                         progress=False)
    assert result == [x * 3 for x in range(N)]
    print("complete", flush=True)
"""


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_sigkill_midway_loses_only_what_was_in_flight(backend: str, tmp_path: Path) -> None:
    journal, log, n = tmp_path / "run.db", tmp_path / "ran.log", 3000
    code = (
        KILLED.replace("JOURNAL", repr(str(journal)))
        .replace("BACKEND", repr(backend))
        .replace("N", str(n))
        .replace("sys.argv[1]", repr(str(log)))
    )
    proc = run_script(code, tmp_path)
    read_until(proc, lambda line: line.startswith("pid"))
    deadline = time.monotonic() + 30
    while _recorded(journal) < n // 3:  # midway: a third of the tasks are in the journal
        assert time.monotonic() < deadline, "the run never got a third of the way"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not still_running(workers_alive(), timeout=10)
    kept = set(map(str, taskfan.Journal(journal).outcomes()))
    ran_before = ran(log)
    assert n // 3 <= len(kept) < n, "killed before the end"
    assert kept <= set(ran_before)

    second = run_script(code, tmp_path)  # the same run again, on the same journal
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "complete" in out

    final = taskfan.Journal(journal).outcomes()
    assert sorted(final) == list(range(n))  # every key exactly once
    assert all(o.ok and o.value == 3 * k for k, o in final.items())
    total = ran(log)
    assert set(total) == {str(x) for x in range(n)}
    twice = {k for k, c in total.items() if c > 1}
    assert all(c <= 2 for c in total.values())
    assert not twice & kept, "a task recorded as finished ran again"
    assert twice == set(ran_before) - kept  # lost: those ended but not yet committed
    print(f"{backend}: {len(kept)} recorded at the kill, {len(twice)} ran twice")
    assert len(twice) <= 200, f"{len(twice)} tasks ran twice: more than one batch lost"


def _recorded(journal: Path) -> int:
    try:
        return taskfan.Journal(journal).summary().total
    except JournalError:
        return 0  # not created yet


def test_journal_summary_and_outcomes_by_status(tmp_path: Path) -> None:
    journal = tmp_path / "run.db"
    _, _, fn = setup(tmp_path, failing=(1, 2))
    taskfan.map(fn, range(4), journal=journal, errors="return", progress=False)
    j = taskfan.Journal(journal)
    assert sorted(j.outcomes(status="failed")) == [1, 2]
    summary = j.summary()
    assert summary.failed == {1: "ValueError: item 1 is broken", 2: "ValueError: item 2 is broken"}
    assert summary.functions == ("tests.test_journal.task",)
    assert json.loads(json.dumps(summary.counts)) == {
        "ok": 2,
        "failed": 2,
        "timeout": 0,
        "crashed": 0,
    }
    with pytest.raises(ValueError, match="status must be one of"):
        j.outcomes(status="broken")
    with pytest.raises(JournalError, match=r"no journal at .*nothing\.db"):
        taskfan.Journal(tmp_path / "nothing.db")


def once_then_ok(log: str, x: int) -> int:
    """x*x; every third item fails on its first attempt (its lines in ``log`` count them)."""
    with open(log, "a") as out:
        out.write(f"{x}\n")
    if x % 3 == 0 and Path(log).read_text().split().count(str(x)) == 1:
        raise ValueError(f"first attempt of {x}")
    return x * x


def test_a_task_that_ends_on_a_retry_is_journaled(opts: dict[str, Any], tmp_path: Path) -> None:
    # In order, retried tasks that end well fill their places in their first piece
    # directly (Engine._settle_all): the journal must record them all the same.
    journal = tmp_path / "run.db"
    fn = functools.partial(once_then_ok, str(tmp_path / "ran.log"))
    got = taskfan.map(fn, range(30), journal=journal, retries=1, backoff=0, **opts)
    assert got == [x * x for x in range(30)]
    outcomes = taskfan.Journal(journal).outcomes()
    assert sorted(outcomes) == list(range(30))
    assert {o.status for o in outcomes.values()} == {"ok"}
    assert {x for x, o in outcomes.items() if o.attempts == 2} == set(range(0, 30, 3))
