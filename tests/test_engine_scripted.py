"""The engine's edge cases, replayed exactly in virtual time on a scripted fake backend.

No thread, process or sleep: each test scripts how every run of every item goes
(tests/scripted.py) and asserts what the engine sent, where each item ran and when, and
the report's counts. The clock starts at 1000.0 and durations are binary fractions, so
instants compare exactly; only the rate's 0.1 s steps and the drawn backoff delays are
compared to within 1e-9.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from taskfan._errors import TaskfanError, TaskTimeout, WorkerCrashed
from taskfan.backends._base import SINGLE, Call, describe_failure

from .scripted import (
    EngineStuck,
    ScriptClock,
    ScriptedBackend,
    attempts,
    crash,
    drive,
    fail,
    give_back,
    hang,
    make_engine,
    ok,
    outcomes,
    table,
)

T0 = 1000.0


#: every test here runs on both drivers of the engine (see conftest.each_driver)
pytestmark = pytest.mark.usefixtures("each_driver")


#: a chunk time no test run reaches: no chunk is cut unless a test means it to be
NO_CUTS = 1e6


def counts(engine: Any) -> tuple[int, int, int, int, int, int, int]:
    r = engine.report
    return (r.total, r.ok, r.failed, r.timed_out, r.crashed, r.cancelled, r.retried)


# --- a crashed worker ---------------------------------------------------------------------


def test_a_crash_fails_its_item_once_and_requeues_the_rest_of_its_chunk_uncounted() -> None:
    script = table({1: [crash(2.0), ok(1.0)]}, default=ok(1.0))
    engine, backend = make_engine(
        script, range(8), workers=2, chunksize=4, retries=1, backoff=0, chunk_seconds=NO_CUTS
    )
    pieces = drive(engine)
    assert outcomes(pieces) == {i: i for i in range(8)}
    # What the engine sent: two chunks; after w1 died at 1003 (item 0 ended, item 1
    # crashed), items 2 and 3 went out again first, then item 1's retry.
    assert [(s.id, s.items, s.at) for s in backend.sent] == [
        (0, (0, 1, 2, 3), T0),
        (1, (4, 5, 6, 7), T0),
        (2, (2, 3), T0 + 3),
        (3, (1,), T0 + 3),
    ]
    assert backend.crashes == [(T0 + 3, "w1")]
    # w3 took w1's place at once; nothing that had ended ran twice.
    assert backend.ran_on() == {"w1": [0, 1], "w2": [4, 5, 6, 7, 1], "w3": [2, 3]}
    assert [(r.item, r.outcome, r.start, r.end) for r in backend.runs_of(1)] == [
        (1, "crash", T0 + 1, T0 + 3),
        (1, "value", T0 + 4, T0 + 5),
    ]
    assert all(len(backend.runs_of(i)) == 1 for i in (0, 2, 3, 4, 5, 6, 7))
    # Only the crashed item counted an attempt.
    assert attempts(pieces) == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}
    assert counts(engine) == (8, 8, 0, 0, 0, 0, 1)
    assert engine.report.elapsed == 5.0


def test_a_crashed_process_loses_its_chunks_results_and_they_run_again_uncounted() -> None:
    # The process backend's Done for a dead worker carries no values: item 0 ended in
    # the worker but its result died with it, so it runs again, on the same attempt.
    script = table({1: [crash(2.0), ok(1.0)]}, default=ok(1.0))
    engine, backend = make_engine(
        script,
        range(4),
        workers=1,
        chunksize=4,
        retries=1,
        backoff=0,
        chunk_seconds=NO_CUTS,
        lose_results=True,
    )
    pieces = drive(engine)
    assert outcomes(pieces) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert [s.items for s in backend.sent] == [(0, 1, 2, 3), (0,), (2, 3), (1,)]
    assert [r.outcome for r in backend.runs_of(0)] == ["value", "value"]
    assert [r.outcome for r in backend.runs_of(1)] == ["crash", "value"]
    assert attempts(pieces) == {0: 1, 1: 2, 2: 1, 3: 1}
    assert counts(engine) == (4, 4, 0, 0, 0, 0, 1)


def test_a_crash_with_no_retry_left_is_a_final_crashed_failure() -> None:
    script = table({1: crash(0.5, exitcode=-11)}, default=ok(1.0))
    engine, backend = make_engine(
        script, range(3), workers=1, chunksize=3, errors="return", chunk_seconds=NO_CUTS
    )
    pieces = drive(engine)
    found = outcomes(pieces)
    assert (found[0], found[2]) == (0, 2)
    assert isinstance(found[1], WorkerCrashed) and found[1].exitcode == -11
    [failure] = [p.failures[0] for _, p in pieces if p.failures]
    assert failure.status == "crashed"
    assert [s.items for s in backend.sent] == [(0, 1, 2), (2,)]
    assert backend.ran_on() == {"w1": [0, 1], "w2": [2]}
    assert counts(engine) == (3, 2, 1, 0, 1, 0, 0)


def test_a_crash_inside_a_batch_of_retries_keeps_every_task_in_its_place() -> None:
    # Items 0, 2 and 3 fail at once; their retries go out together as one call whose
    # tasks are not consecutive (0, 2, 3). Its worker dies on item 2: item 0 ended,
    # item 2 is retried once more, item 3 goes out again on its second attempt.
    script = table(
        {0: [fail(1.0), ok(1.0)], 2: [fail(1.0), crash(1.0), ok(1.0)], 3: [fail(1.0), ok(1.0)]},
        default=ok(1.0),
    )
    engine, backend = make_engine(
        script, range(5), workers=1, chunksize=4, retries=2, backoff=0, chunk_seconds=NO_CUTS
    )
    pieces = drive(engine)
    assert outcomes(pieces) == {i: i for i in range(5)}
    assert [p.seq for _, p in pieces] == sorted(p.seq for _, p in pieces)  # in order
    assert [s.items for s in backend.sent] == [(0, 1, 2, 3), (0, 2, 3), (4,), (3,), (2,)]
    assert [r.outcome for r in backend.runs_of(2)] == ["raise", "crash", "value"]
    assert [r.outcome for r in backend.runs_of(3)] == ["raise", "value"]
    assert attempts(pieces) == {0: 2, 1: 1, 2: 3, 3: 2, 4: 1}
    assert counts(engine) == (5, 5, 0, 0, 0, 0, 4)


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize("ties", ["result", "timeout"])
def test_a_result_at_the_instant_of_its_timeout_ends_the_task_exactly_once(
    ties: Any, retries: int
) -> None:
    # The result arrives at T0 + 2, the very instant the 2 s timeout ends. Either may
    # win (ties says which the backend reports first), never both.
    script = table({"x": [ok(2.0), ok(1.0)]})
    engine, backend = make_engine(
        script, ["x"], workers=1, timeout=2.0, retries=retries, backoff=0, errors="return",
        ties=ties,
    )  # fmt: skip
    pieces = drive(engine)
    [(_, piece)] = pieces
    [value] = piece.values
    if ties == "result":
        assert backend.stops == []
        assert (value, piece.failures) == ("x", None)
        assert [r.outcome for r in backend.runs] == ["value"]
        assert counts(engine) == (1, 1, 0, 0, 0, 0, 0)
        assert engine.report.elapsed == 2.0
    elif retries == 0:
        assert backend.stops == [(T0 + 2, 0, 0)]
        assert piece.failures is not None and isinstance(piece.failures[0].error, TaskTimeout)
        assert [r.outcome for r in backend.runs] == ["stopped"]  # its result never counted
        assert counts(engine) == (1, 0, 1, 1, 0, 0, 0)
        assert engine.report.elapsed == 2.0
    else:
        assert backend.stops == [(T0 + 2, 0, 0)]
        assert (value, piece.failures, piece.ran(0)[0].attempt) == ("x", None, 2)
        assert [(r.outcome, r.start) for r in backend.runs] == [
            ("stopped", T0),
            ("value", T0 + 2),
        ]
        assert counts(engine) == (1, 1, 0, 0, 0, 0, 1)
        assert engine.report.elapsed == 3.0


def test_a_timeout_fires_at_exactly_start_plus_timeout_on_each_attempt() -> None:
    # x starts 1.25 s into its chunk; both its runs hang; each stops 2.5 s after it began.
    script = table({"a": ok(0.75), "b": ok(0.5), "x": hang()})
    engine, backend = make_engine(
        script,
        ["a", "b", "x"],
        workers=1,
        chunksize=3,
        timeout=2.5,
        retries=1,
        backoff=1.0,
        errors="return",
    )
    pieces = drive(engine)
    first, second = backend.runs_of("x")
    assert first.start == T0 + 1.25
    retry_delay = random.Random(7).random() * 1.0  # the engine's one draw
    assert second.start == pytest.approx(first.start + 2.5 + retry_delay, abs=1e-9)
    retry = backend.sent[1]
    assert [(s.items, s.timed) for s in backend.sent] == [(("a", "b", "x"), True), (("x",), True)]
    assert backend.stops == [(first.start + 2.5, 0, 2), (second.start + 2.5, retry.id, 0)]
    found = outcomes(pieces)
    assert (found[0], found[1]) == ("a", "b") and isinstance(found[2], TaskTimeout)
    assert found[2].seconds == 2.5
    assert counts(engine) == (3, 2, 1, 1, 0, 0, 1)
    assert engine.report.elapsed == second.start + 2.5 - T0  # ends at the last timeout


def test_a_timeout_on_processes_reruns_the_items_before_it_on_the_same_attempt() -> None:
    script = table({"x": [hang(), ok(0.5)]}, default=ok(0.5))
    engine, backend = make_engine(
        script, ["a", "x", "b"], workers=1, chunksize=3, timeout=2.0, retries=1, backoff=0,
        lose_results=True,
    )  # fmt: skip
    pieces = drive(engine)
    assert outcomes(pieces) == {0: "a", 1: "x", 2: "b"}
    assert backend.stops == [(T0 + 2.5, 0, 1)]
    assert [s.items for s in backend.sent] == [("a", "x", "b"), ("a",), ("b",), ("x",)]
    assert attempts(pieces) == {0: 1, 1: 2, 2: 1}
    assert counts(engine) == (3, 3, 0, 0, 0, 0, 1)


def test_a_timeout_fires_at_start_plus_timeout_whatever_the_clock_reads() -> None:
    engine, backend = make_engine(
        table({"x": hang()}), ["x"], workers=1, timeout=0.3, errors="return",
        clock=ScriptClock(1000.1),
    )  # fmt: skip
    drive(engine)
    assert backend.stops == [(1000.1 + 0.3, 0, 0)]
    assert counts(engine) == (1, 0, 1, 1, 0, 0, 0)


# --- retries, backoff and the rate ---------------------------------------------------------


def test_backoff_draws_full_jitter_per_attempt_and_the_run_ends_with_the_last_retry() -> None:
    script = table({"a": [fail(0.5), fail(0.5), fail(0.5), fail(0.5), ok(0.5)]})
    clock = ScriptClock()
    engine, backend = make_engine(
        script, ["a"], workers=1, retries=4, backoff=1.0, backoff_max=3.0, clock=clock
    )
    pieces = drive(engine)
    runs = backend.runs_of("a")
    assert [r.outcome for r in runs] == ["raise"] * 4 + ["value"]
    gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
    caps = [1.0, 2.0, 3.0, 3.0]  # backoff * 2**(attempt-1), at most backoff_max
    rng = random.Random(7)
    assert gaps == pytest.approx([rng.random() * cap for cap in caps], abs=1e-9)
    assert all(0 <= gap <= cap for gap, cap in zip(gaps, caps, strict=True))
    assert [p.ran(0)[0].attempt for _, p in pieces] == [5]
    assert counts(engine) == (1, 1, 0, 0, 0, 0, 4)
    assert runs[-1].end == clock.now()  # nothing waited for after the last retry ended
    assert engine.report.elapsed == pytest.approx(runs[-1].end - T0, abs=1e-9)


def test_retries_of_many_tasks_start_within_their_jitter_bounds() -> None:
    # As many workers as tasks: a retry never waits for a worker, only for its delay.
    script = table({}, default=ok(0.25))

    def flaky(item: Any, run: int) -> Any:
        return fail(0.25) if run <= 3 else script(item, run)

    clock = ScriptClock()
    engine, backend = make_engine(
        flaky, range(12), workers=12, chunksize=1, retries=3, backoff=0.5, backoff_max=1.5,
        clock=clock,
    )  # fmt: skip
    pieces = drive(engine)
    caps = [0.5, 1.0, 1.5]
    for item in range(12):
        runs = backend.runs_of(item)
        assert [r.outcome for r in runs] == ["raise", "raise", "raise", "value"]
        for cap, (a, b) in zip(caps, itertools.pairwise(runs), strict=True):
            assert a.end is not None and 0 <= b.start - a.end <= cap
    assert attempts(pieces) == dict.fromkeys(range(12), 4)
    assert counts(engine) == (12, 12, 0, 0, 0, 0, 36)
    assert clock.now() == max(r.end for r in backend.runs if r.end is not None)


def test_a_rate_of_10_per_second_starts_30_tasks_exactly_0_1_s_apart() -> None:
    clock = ScriptClock()
    engine, backend = make_engine(
        table({}, default=ok(0.25)), range(30), workers=4, rate="10/s", clock=clock
    )
    pieces = drive(engine)
    assert outcomes(pieces) == {i: i for i in range(30)}
    starts = backend.starts()
    assert [r.item for r in backend.runs] == list(range(30))
    assert starts == pytest.approx([T0 + 0.1 * i for i in range(30)], abs=1e-9)
    assert [s.items for s in backend.sent] == [(i,) for i in range(30)]  # one task a call
    assert clock.now() == pytest.approx(T0 + 2.9 + 0.25, abs=1e-9)  # no slot after the last
    assert counts(engine) == (30, 30, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("window", [2, None], ids=["window=2", "auto window"])
def test_a_rate_limited_run_with_no_room_waits_for_a_task_instead_of_spinning(
    window: int | None,
) -> None:
    # Nothing may start for a while: with window=2, task 0 takes 100 s and holds its
    # place; with the automatic window (4 tasks for 1 worker), tasks 0-3 have failed and
    # wait out a backoff of up to 100 s. The engine used to wake at the rate slot that
    # had passed, with a 0 s wait each time until then: in real time, a core spent
    # spinning (1.0 s of CPU in 1.1 s for a thread map with rate=50, window=2 and one
    # 1 s task). It must wait for a task or a retry instead.
    if window is None:
        failing = {i: [fail(0.25, ValueError), ok(0.25)] for i in range(4)}
        script = table(failing, default=ok(0.25))
        options: dict[str, Any] = {"workers": 1, "retries": 1, "backoff": 100.0}
    else:
        script = table({0: ok(100.0)}, default=ok(0.25))
        options = {"workers": 2, "window": window}
    engine, backend = make_engine(script, range(40), rate="10/s", **options)
    pieces = drive(engine)  # the fake raises EngineStuck after 10,000 waits of 0 s
    assert outcomes(pieces) == {i: i for i in range(40)}
    idle_waits = [(at, timeout) for at, timeout in backend.waits if timeout == 0]
    assert len(idle_waits) <= 5, idle_waits[:10]


def test_a_rate_limited_rerun_hands_back_the_resumed_tasks_it_looked_ahead_to(
    tmp_path: Path,
) -> None:
    # Task 2 failed in the first run. Rerun with a rate limit, it is the only task to
    # run, and it ends before the next slot; looking for that slot's task, the engine
    # takes 3 and 4, resumed from the journal and so ended at once. It used to find
    # nothing in flight and raise "nothing to wait for (this is a bug)".
    journal = tmp_path / "run.db"
    first, _ = make_engine(
        table({2: fail(0.25, ValueError)}, default=ok(0.25)), range(5), journal=journal,
        errors="return",
    )  # fmt: skip
    drive(first)
    engine, backend = make_engine(
        table({}, default=ok(0.25)), range(5), journal=journal, rate="2/s"
    )
    assert outcomes(drive(engine)) == {i: i for i in range(5)}
    assert [r.item for r in backend.runs] == [2]
    assert engine.report.resumed == 4


# --- a slow item holding back its chunk ------------------------------------------------------


@pytest.mark.parametrize("cut_notice", [False, True], ids=["thread-like", "process-like"])
def test_a_slow_item_has_its_chunk_cut_and_the_rest_goes_to_the_idle_worker(
    cut_notice: bool,
) -> None:
    quick = 1 / 64
    script = table({9: ok(10.0)}, default=ok(quick))
    engine, backend = make_engine(script, range(12), workers=2, chunksize=4, cut_notice=cut_notice)
    pieces = drive(engine)
    assert outcomes(pieces) == {i: i for i in range(12)}
    # 0-3 and 4-7 end at T0 + 4/64; 8-11 go to w1 with 4/64 s expected. Once it has run
    # 0.05 s (the floor), its worker is stuck on 9: 10 and 11 go to w2, which is idle.
    began = T0 + 4 * quick
    cut_at = began + 0.05
    assert [(s.items, s.at) for s in backend.sent] == [
        ((0, 1, 2, 3), T0),
        ((4, 5, 6, 7), T0),
        ((8, 9, 10, 11), began),
        ((10,), cut_at),
        ((11,), cut_at),
    ]
    assert backend.cuts == [(cut_at, 2, 2)]  # call 2 runs no item from 2 on (10, 11)
    assert backend.ran_on() == {"w1": [0, 1, 2, 3, 8, 9], "w2": [4, 5, 6, 7, 10, 11]}
    assert backend.runs_of(10)[0].start == cut_at
    when = {p.seq: t for t, p in pieces}
    assert when[8] == cut_at  # settled at the cut, not with its slow neighbour
    assert when[9] == when[10] == T0 + 5 * quick + 10.0  # in order: 10 waited for 9
    assert attempts(pieces) == dict.fromkeys(range(12), 1)
    assert counts(engine) == (12, 12, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("process_like", [False, True], ids=["thread-like", "process-like"])
def test_a_cut_chunks_slow_item_can_still_time_out(process_like: bool) -> None:
    quick = 1 / 64
    script = table({9: hang()}, default=ok(quick))
    engine, backend = make_engine(
        script, range(12), workers=2, chunksize=4, timeout=5.0, errors="return",
        cut_notice=process_like, lose_results=process_like,
    )  # fmt: skip
    pieces = drive(engine)
    found = outcomes(pieces)
    assert isinstance(found.pop(9), TaskTimeout)
    assert found == {i: i for i in range(12) if i != 9}
    nine_began = T0 + 5 * quick
    assert backend.stops == [(nine_began + 5.0, 2, 1)]
    assert backend.ran_on() == {"w1": [0, 1, 2, 3, 8, 9], "w2": [4, 5, 6, 7, 10, 11]}
    assert counts(engine) == (12, 11, 1, 1, 0, 0, 0)


# --- order, fail-fast, and a backend that makes no progress ----------------------------------


@pytest.mark.parametrize("ordered", [True, False])
def test_results_come_in_input_order_while_later_tasks_end_first(ordered: bool) -> None:
    script = table({0: ok(3.0), 1: ok(2.0), 2: ok(1.0), 3: ok(0.5)})
    engine, backend = make_engine(script, range(4), workers=3, chunksize=1, ordered=ordered)
    pieces = drive(engine)
    ends = sorted((r.end, r.item) for r in backend.runs if r.end is not None)
    assert ends == [(T0 + 1, 2), (T0 + 1.5, 3), (T0 + 2, 1), (T0 + 3, 0)]
    yielded = [(t, p.seq, p.values) for t, p in pieces]
    if ordered:
        assert yielded == [(T0 + 3, 0, [0]), (T0 + 3, 1, [1]), (T0 + 3, 2, [2]), (T0 + 3, 3, [3])]
    else:
        assert yielded == [(T0 + 1, 2, [2]), (T0 + 1.5, 3, [3]), (T0 + 2, 1, [1]), (T0 + 3, 0, [0])]
    assert counts(engine) == (4, 4, 0, 0, 0, 0, 0)


def test_fail_fast_stops_at_the_first_final_failure_and_cancels_the_rest() -> None:
    script = table({3: fail(0.5, ValueError)}, default=ok(1.0))
    engine, backend = make_engine(
        script, range(10), workers=2, chunksize=1, fail_fast=True, errors="raise"
    )
    pieces = engine.run()
    assert [next(pieces).seq, next(pieces).seq] == [0, 1]  # they ended at T0 + 1
    with pytest.raises(ValueError, match="run 1 of 3"):
        next(pieces)
    assert backend.closed == (T0 + 1.5, True)  # cancelled at the failure
    # Taken from the input: the two first tasks, and four more (two calls per worker)
    # once the first had been measured; 6-9 were never taken.
    assert [(s.items, s.at) for s in backend.sent] == [
        ((0,), T0),
        ((1,), T0),
        ((2,), T0 + 1),
        ((3,), T0 + 1),
        ((4,), T0 + 1),
        ((5,), T0 + 1),
    ]
    assert [r.item for r in backend.runs if r.outcome == "running"] == [2, 4]  # abandoned
    r = engine.report
    assert r.ok + r.failed + r.cancelled == r.total
    assert counts(engine) == (6, 2, 1, 0, 0, 3, 0)


def test_fail_fast_keeps_a_result_that_came_back_with_the_failure() -> None:
    # Items 0 and 1 end at the same instant: 0 fails for good, 1 succeeds. Both Dones
    # come back from one wait, the failure first.
    script = table({0: fail(1.0, ValueError)}, default=ok(1.0))
    engine, backend = make_engine(script, range(2), workers=2, chunksize=1, fail_fast=True)
    with pytest.raises(ValueError, match="run 1 of 0"):
        drive(engine)
    assert [r.end for r in backend.runs] == [T0 + 1, T0 + 1]
    assert counts(engine) == (2, 1, 1, 0, 0, 0, 0)


def test_fail_fast_waits_for_the_retries_of_a_failure() -> None:
    script = table({3: [fail(0.5, ValueError), fail(0.5, ValueError)]}, default=ok(1.0))
    engine, backend = make_engine(
        script, range(4), workers=2, chunksize=1, fail_fast=True, retries=1, backoff=0
    )
    with pytest.raises(ValueError, match="run 2 of 3"):
        drive(engine)
    assert [r.outcome for r in backend.runs_of(3)] == ["raise", "raise"]
    r = engine.report
    assert r.ok + r.failed + r.cancelled == r.total == 4
    assert counts(engine) == (4, 3, 1, 0, 0, 0, 1)


def test_breaking_out_cancels_the_rest_and_keeps_what_had_ended() -> None:
    engine, backend = make_engine(table({}, default=ok(1.0)), range(10), workers=2, chunksize=1)
    pieces = engine.run()
    assert next(pieces).seq == 0
    pieces.close()  # a break: 1 ended with 0, 2-5 were sent, 6-9 never taken
    assert backend.closed == (T0 + 1, True)
    assert [p.seq for p in engine.leftover()] == [1]
    assert counts(engine) == (6, 2, 0, 0, 0, 4, 0)


def test_a_call_handed_back_without_progress_fails_instead_of_requeueing_forever() -> None:
    # Item 2 is always handed back unrun: the first time with items ended before it
    # (progress: the rest goes back to the queue), then first in its call (no progress:
    # it fails, counted as an attempt), on each retry again.
    script = table({2: give_back()}, default=ok(1.0))
    engine, backend = make_engine(
        script, range(6), workers=1, chunksize=4, retries=1, backoff=0, errors="return",
        chunk_seconds=NO_CUTS,
    )  # fmt: skip
    pieces = drive(engine)
    found = outcomes(pieces)
    assert isinstance(found.pop(2), TaskfanError)
    assert found == {0: 0, 1: 1, 3: 3, 4: 4, 5: 5}
    assert [s.items for s in backend.sent] == [(0, 1, 2, 3), (2, 3), (4, 5), (3,), (2,)]
    assert [r.outcome for r in backend.runs_of(2)] == ["give_back", "give_back", "give_back"]
    assert attempts(pieces)[2] == 2
    assert counts(engine) == (6, 5, 1, 0, 0, 0, 1)


def test_a_backend_that_never_runs_anything_ends_the_run_with_every_task_failed() -> None:
    engine, backend = make_engine(
        table({}, default=give_back()), range(3), workers=1, chunksize=3, errors="return",
        chunk_seconds=NO_CUTS,
    )  # fmt: skip
    pieces = drive(engine)
    assert all(isinstance(e, TaskfanError) for e in outcomes(pieces).values())
    assert [s.items for s in backend.sent] == [(0, 1, 2), (1, 2), (2,)]
    assert counts(engine) == (3, 0, 3, 0, 0, 0, 0)


# --- the fake itself ------------------------------------------------------------------------


def test_the_fake_backend_keeps_the_backend_contract() -> None:
    clock = ScriptClock()
    backend = ScriptedBackend(2, clock, table({"a": ok(1.0), "b": hang(), "c": crash(0.5)}))
    backend.submit(Call(0, None, SINGLE, ["a", "b"], timed=True))
    assert backend.wait(0.5) == [] and clock.now() == T0 + 0.5  # nothing ended: time passed
    assert backend.running() == [(0, 0, T0)]
    assert backend.started_calls() == [(0, T0)]
    assert backend.wait(5.0) == [] and clock.now() == T0 + 5.5  # a ended, b hangs
    assert backend.running() == [(0, 1, T0 + 1)]
    with pytest.raises(EngineStuck):
        backend.wait(None)  # b never ends by itself
    failure = describe_failure(TaskTimeout(4.5), "", "timeout")
    assert backend.stop(0, 1, failure) and not backend.stop(0, 1, failure)
    [done] = backend.wait(None)
    assert (done.call_id, done.values, done.stopped, done.worker) == (0, ["a"], (1, failure), "w1")
    backend.submit(Call(1, None, SINGLE, ["c", "a"]))  # w1 was replaced by w3
    [done] = backend.wait(None)
    assert clock.now() == T0 + 6.0
    assert (done.values, done.worker, done.stopped[1].status) == ([], "w3", "crashed")
    assert backend.ran_on() == {"w1": ["a", "b"], "w3": ["c"]}
    assert [r.outcome for r in backend.runs] == ["value", "stopped", "crash"]


# --- retried tasks fill their holes in order --------------------------------------------


def test_in_order_a_retried_task_fills_its_hole_and_its_piece_goes_out_whole() -> None:
    # One chunk of six: item 1 fails once and waits out its backoff. The chunk's other
    # results wait for it (in order they could not go out before it anyway), and the
    # piece goes out whole, at the retry's end, each task with its own attempt.
    script = table({1: [fail(1.0, ValueError), ok(1.0)]}, default=ok(1.0))
    engine, backend = make_engine(script, range(6), workers=1, chunksize=6, retries=1, backoff=10.0)
    pieces = drive(engine)
    assert len(pieces) == 1
    at, piece = pieces[0]
    assert (piece.seq, piece.values, piece.failures) == (0, list(range(6)), None)
    retry = backend.runs_of(1)[1]
    assert at == retry.end and retry.start > T0 + 6  # after the chunk and the backoff
    assert [piece.ran(i)[0].attempt for i in range(6)] == [1, 2, 1, 1, 1, 1]
    assert counts(engine) == (6, 6, 0, 0, 0, 0, 1)


def test_a_run_stopped_while_a_retry_waits_keeps_what_ended_around_it() -> None:
    # Chunks [0-2] and [3-5] end at T0+3; item 4 failed and waits 100 s for its retry.
    # Breaking out after the first piece keeps 3 and 5 (they ended), never 4.
    script = table({4: fail(1.0, ValueError)}, default=ok(1.0))
    engine, _ = make_engine(script, range(9), workers=2, chunksize=3, retries=1, backoff=100.0)
    run = engine.run()
    assert next(run).seq == 0
    run.close()
    kept = {p.seq + i: v for p in engine.leftover() for i, v in enumerate(p.values)}
    assert kept == {3: 3, 5: 5}
