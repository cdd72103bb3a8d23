"""Random workloads on the scripted backend, checked against what must always hold.

The scripted tests pin one case each. Here every seed draws a whole mixed workload:
fast and slow items, failures of two kinds, crashes, hangs cut off by a timeout, on 1 to
4 virtual workers, in order or not, with or without retries, chunking and cuts, and with
the thread backend's behaviour or the process backend's (a dead worker's chunk loses its
results). Whatever was drawn, the engine must hand back every task exactly once, each
with the outcome of its last run, never retry past ``retries``, keep input order when
asked, and count what it did in the report. A failing seed replays exactly: run it
alone with ``-k "seed and 123"``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from taskfan import Journal
from taskfan._errors import TaskfanError, TaskTimeout, WorkerCrashed

from . import scripted
from .scripted import (
    InputBroken,
    Step,
    attempts,
    crash,
    drive,
    ended,
    fail,
    give_back,
    hang,
    make_engine,
    ok,
    outcomes,
    table,
)

SEEDS = range(150)
#: durations are binary fractions, so instants compare exactly
DURATIONS = (0.0, 0.25, 0.5, 1.0, 3.0)


pytestmark = pytest.mark.usefixtures("each_driver")  # (see conftest)


def _steps(rng: random.Random, timeout: float | None) -> list[Step]:
    """The runs of one item: mostly quick successes, some slow ones, some failures."""
    steps = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        seconds = rng.choice(DURATIONS)
        if roll < 0.55:
            steps.append(ok(seconds))
        elif roll < 0.70:
            steps.append(fail(seconds, OSError))
        elif roll < 0.80:
            steps.append(fail(seconds, ValueError))
        elif roll < 0.88:
            steps.append(crash(seconds))
        elif roll < 0.91:
            steps.append(give_back(seconds))  # a backend bug the engine must survive
        elif timeout is not None:
            steps.append(hang())
        else:
            steps.append(ok(seconds))
    return steps


class Heavy(int):
    """A result that says it weighs a megabyte (the window weighs results with getsizeof)."""

    def __sizeof__(self) -> int:
        return 2**20


def _workload(
    seed: int, *, any_input: bool = False
) -> tuple[dict[int, list[Step]], dict[str, Any], dict[str, Any]]:
    """A workload drawn from ``seed``; ``any_input``: the input may also be a generator
    (no length), one that breaks partway."""
    rng = random.Random(seed)
    timeout = rng.choice([None, 2.0])
    n = rng.randint(1, 40)
    steps = {i: _steps(rng, timeout) for i in range(n)}
    process_like = rng.random() < 0.5
    engine_options: dict[str, Any] = {
        "workers": rng.randint(1, 4),
        "ordered": rng.random() < 0.5,
        "ties": rng.choice(["result", "timeout"]),
        "lose_results": process_like,
        "cut_notice": process_like,
        "chunk_seconds": rng.choice([None, 0.5, 1e6]),
        "seed": seed,
    }
    options: dict[str, Any] = {
        "errors": "return",
        "retries": rng.randint(0, 3),
        "backoff": rng.choice([0, 0.5, 4.0]),
    }
    if timeout is not None:
        options["timeout"] = timeout
    if rng.random() < 0.5:
        options["chunksize"] = rng.randint(1, 6)
    if rng.random() < 0.3:
        options["retry_on"] = (OSError,)
    if rng.random() < 0.3:
        options["window"] = rng.randint(1, 8)
    if rng.random() < 0.2:
        options["rate"] = rng.choice([2.0, 8.0])
    if rng.random() < 0.2:
        options["backoff_max"] = 1.0
    if rng.random() < 0.2:  # results that weigh: in order, the byte bound stops intake
        options["window_bytes"] = 3 * 2**20
        for i, runs in steps.items():
            steps[i] = [Step(s.seconds, s.kind, Heavy(i)) if s.kind == "value" else s for s in runs]
    if rng.random() < 0.15:  # the log observer asks the engine to wake it on time too
        options["progress"] = "log"
        options["progress_every"] = rng.choice([0.25, 1.0])
    if any_input and rng.random() < 0.3:
        engine_options["lazy"] = True
        if rng.random() < 0.4:
            engine_options["input_fails_after"] = rng.randint(0, n)
    return steps, engine_options, options


_STATUS = {
    "value": None,
    "raise": (OSError, ValueError),
    "crash": WorkerCrashed,
    "give_back": TaskfanError,  # handed back unrun, with no progress: it fails
}


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_mixed_workload_keeps_every_promise(seed: int) -> None:
    steps, engine_options, options = _workload(seed, any_input=True)
    breaks_at = engine_options.get("input_fails_after")
    engine, backend = make_engine(table(steps), range(len(steps)), **engine_options, **options)
    if breaks_at is None:
        pieces = drive(engine)
    else:
        # The tasks taken before the input broke all end and come back; then its error.
        pieces = []
        with pytest.raises(InputBroken):
            _drive_into(engine, pieces)
    n = len(steps) if breaks_at is None else min(breaks_at, len(steps))

    # Every task comes back exactly once, and in input order when asked.
    if engine_options["ordered"]:
        expected_seq = 0
        for _, piece in pieces:
            assert piece.seq == expected_seq, f"piece at {piece.seq}, {expected_seq} expected"
            expected_seq += len(piece.values)
    found, attempt_of = outcomes(pieces), attempts(pieces)
    assert sorted(found) == list(range(n)), "a task was lost"

    for item in range(n):
        _check_task(item, found[item], attempt_of[item], backend.runs_of(item), steps=steps,
                    options=options, process_like=engine_options["lose_results"])  # fmt: skip

    report = engine.report
    ok_count = sum(1 for v in found.values() if not isinstance(v, BaseException))
    assert (report.total, report.ok, report.failed, report.cancelled) == (
        n,
        ok_count,
        n - ok_count,
        0,
    )
    assert report.retried == sum(a - 1 for a in attempt_of.values())
    assert report.timed_out == sum(isinstance(v, TaskTimeout) for v in found.values())
    assert report.crashed == sum(isinstance(v, WorkerCrashed) for v in found.values())
    assert backend.closed is not None


def _check_task(
    item: int,
    outcome: Any,
    attempt: int,
    runs: list[Any],
    *,
    steps: dict[int, list[Step]],
    options: dict[str, Any],
    process_like: bool,
) -> None:
    """One task's outcome and attempts against the runs the fake recorded for it."""
    assert runs, f"task {item} came back without running"
    assert all(r.end is not None for r in runs), f"task {item} still runs at the end"
    last = runs[-1]
    # Its outcome is that of its last run.
    if last.outcome == "value":
        assert outcome == item
    elif last.outcome == "stopped":
        assert isinstance(outcome, TaskTimeout)
    else:
        assert isinstance(outcome, _STATUS[last.outcome]), (item, last, outcome)
    assert attempt <= options["retries"] + 1, f"task {item} retried too often"
    # Runs that failed count as attempts, except on processes, where a dead worker's
    # chunk mates run again on the same attempt, and a call handed back unrun: that
    # counts only when nothing in it had run (see test_engine_scripted).
    hard = sum(r.outcome not in ("value", "give_back") for r in runs)
    soft = sum(r.outcome == "give_back" for r in runs)
    succeeded = last.outcome == "value"
    if process_like:
        assert attempt <= hard + soft + succeeded
        return
    least = hard + succeeded + (last.outcome == "give_back")
    assert least <= attempt <= hard + soft + succeeded, (item, runs)
    # Each retry followed a failure that retry_on covers (a crash, a timeout always do).
    retried_types = options.get("retry_on", (Exception,))
    for run in runs[:-1]:
        error = steps[item][min(run.run, len(steps[item])) - 1].error
        if run.outcome == "raise":
            assert isinstance(error, type) and issubclass(error, retried_types), (
                f"task {item} was retried after {error.__name__}"
            )


def _drive_into(engine: Any, pieces: list[Any]) -> None:
    """:func:`drive`, keeping in ``pieces`` what came before an exception."""
    if scripted.driver == "blocking":
        for piece in engine.run():
            pieces.append((engine.clock.now(), piece))
        return

    async def on_a_loop() -> None:
        run = engine.arun()
        try:
            async for piece in run:
                pieces.append((engine.clock.now(), piece))
        finally:
            await run.aclose()

    asyncio.run(on_a_loop())


def _take(engine: Any, count: int | None) -> list[Any]:
    """The first ``count`` pieces (all with None), with the driver in use, then stop."""
    if scripted.driver == "blocking":
        run = engine.run()
        try:
            return list(itertools.islice(run, count))
        finally:
            run.close()

    async def on_a_loop() -> list[Any]:
        run = engine.arun()
        taken: list[Any] = []
        try:
            async for piece in run:
                if count is not None and len(taken) >= count:
                    break
                taken.append(piece)
        finally:
            await run.aclose()
        return taken

    return asyncio.run(on_a_loop())


@pytest.mark.parametrize("seed", range(0, 300, 3))
def test_a_random_workload_that_stops_at_its_first_failure_keeps_the_counts(seed: int) -> None:
    steps, engine_options, options = _workload(seed)
    options["errors"] = "raise"
    engine, backend = make_engine(
        table(steps), range(len(steps)), fail_fast=True, **engine_options, **options
    )
    pieces: list[Any] = []
    try:
        pieces.extend(_take(engine, None))
    except (OSError, ValueError, WorkerCrashed, TaskTimeout, TaskfanError) as error:
        raised: BaseException | None = error
    else:
        raised = None
    found = ended(pieces)
    # What was handed back before the failure is values, each its last run's.
    for position, value in found.items():
        assert value == position and backend.runs_of(position)[-1].outcome == "value"
    report = engine.report
    assert report.ok + report.failed + report.cancelled == report.total
    assert report.total == engine.tally.pulled
    if raised is None:
        assert sorted(found) == list(range(len(steps)))
        assert report.failed == report.cancelled == 0
    else:
        assert report.failed >= 1, "a failure stopped the run but none is counted"
        assert backend.closed is not None and backend.closed[1], "the rest was not cancelled"


@pytest.mark.parametrize("seed", range(1, 300, 3))
def test_a_random_workload_left_early_keeps_what_ended_and_counts_the_rest(seed: int) -> None:
    steps, engine_options, options = _workload(seed)
    engine_options["ordered"] = True
    engine, backend = make_engine(table(steps), range(len(steps)), **engine_options, **options)
    taken = _take(engine, random.Random(seed).randint(1, 3))  # then a break out of the loop
    kept = ended(taken + engine.leftover())
    assert set(ended(taken)).isdisjoint(ended(engine.leftover()))
    for position, outcome in kept.items():
        last = backend.runs_of(position)[-1]
        assert last.end is not None
        if last.outcome == "value":
            assert outcome == position
    report = engine.report
    assert report.ok + report.failed + report.cancelled == report.total == engine.tally.pulled
    assert report.ok + report.failed >= len(kept)
    assert backend.closed is not None


_JOURNAL_STATUS = {"value": "ok", "raise": "failed", "give_back": "failed", "crash": "crashed"}


@pytest.mark.parametrize("seed", range(2, 300, 6))
def test_a_random_workload_with_a_journal_records_every_task_as_itended(
    seed: int, tmp_path: Path
) -> None:
    steps, engine_options, options = _workload(seed)
    journal = tmp_path / "run.db"
    engine, backend = make_engine(
        table(steps), range(len(steps)), journal=journal, **engine_options, **options
    )
    pieces = drive(engine)
    found, attempt_of = outcomes(pieces), attempts(pieces)
    assert sorted(found) == list(range(len(steps)))
    recorded = Journal(journal).outcomes()
    assert sorted(recorded) == sorted(found), "the journal and the run disagree on the tasks"
    for position, outcome in recorded.items():
        last = backend.runs_of(position)[-1]
        status = "timeout" if last.outcome == "stopped" else _JOURNAL_STATUS[last.outcome]
        assert outcome.status == status, (position, outcome, last)
        assert outcome.attempts == attempt_of[position], (position, outcome)
        if status == "ok":
            assert outcome.value == position


@pytest.mark.parametrize("seed", range(4, 300, 6))
def test_a_random_workload_resumed_from_its_journal_runs_only_what_rerun_says(
    seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    steps, engine_options, options = _workload(seed)
    n = len(steps)
    journal = tmp_path / "run.db"
    # The first run: to its end, or left after a piece or two (tasks left unrecorded).
    first, _ = make_engine(table(steps), range(n), journal=journal, **engine_options, **options)
    _take(first, rng.choice([None, 1, 2]))
    before = Journal(journal).outcomes()
    # The second: other steps for every item, and a rerun policy.
    rerun = rng.choice(["failed", "missing", "all"])
    again = {i: _steps(rng, options.get("timeout")) for i in range(n)}
    second_options = {**engine_options, "seed": seed + 1}
    engine, backend = make_engine(
        table(again), range(n), journal=journal, rerun=rerun, **second_options, **options
    )
    found = outcomes(drive(engine))
    assert sorted(found) == list(range(n))
    kept = {
        key
        for key, outcome in before.items()
        if rerun == "missing" or (rerun == "failed" and outcome.status == "ok")
    }
    for position in range(n):
        runs = backend.runs_of(position)
        if position in kept:
            assert not runs, f"task {position} ran again with rerun={rerun!r}"
            if before[position].status == "ok":
                assert found[position] == position
            else:
                assert isinstance(found[position], BaseException)
        else:
            assert runs, f"task {position} was not run again with rerun={rerun!r}"
            last = runs[-1]
            if last.outcome == "value":
                assert found[position] == position
            else:
                assert isinstance(found[position], BaseException)
    assert engine.report.resumed == len(kept)
    after = Journal(journal).outcomes()
    assert sorted(after) == list(range(n))
    for position, outcome in after.items():
        assert (outcome.status == "ok") == (found[position] == position), (position, outcome)
