"""map, imap, starmap, Runner and Parallelized: the same behaviour on every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import taskfan
from taskfan import Outcome, Results, TaskTraceback
from taskfan._engine import AUTO_WINDOW_MAX

from .conftest import Gates


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x * 10


# --- map / starmap / imap ------------------------------------------------------------------


def test_map_returns_results_in_input_order(opts: dict[str, Any]) -> None:
    assert taskfan.map(square, range(1000), **opts) == [x * x for x in range(1000)]


def test_order_holds_when_tasks_end_out_of_order(
    opts: dict[str, Any], backend: str, parallel: bool, gates: Gates
) -> None:
    # Item 0 cannot end before the last item has: completion order is not input order.
    last_done = gates.new(backend)

    def task(x: int) -> int:
        if x == 0 and parallel:
            assert last_done.wait(10), "the last item never ran"
        if x == 19:
            last_done.set()
        return x

    assert taskfan.map(task, range(20), **opts) == list(range(20))


def test_starmap_spreads_argument_tuples(opts: dict[str, Any]) -> None:
    pairs = [(a, b) for a in range(10) for b in range(3)]
    assert taskfan.starmap(pow, pairs, **opts) == [a**b for a, b in pairs]


def test_empty_input_gives_empty_results(opts: dict[str, Any]) -> None:
    assert taskfan.map(square, [], **opts) == []
    assert list(taskfan.imap(square, iter([]), **opts)) == []


def test_imap_unordered_yields_every_result_once(opts: dict[str, Any]) -> None:
    got = list(taskfan.imap(square, range(500), ordered=False, **opts))
    assert sorted(got) == [x * x for x in range(500)]


# The two fronts that yield results as tasks finish, each as an iterator of results.
def imap_unordered(task: Callable[[int], int], n: int, opts: dict[str, Any]) -> Iterator[int]:
    return taskfan.imap(task, range(n), ordered=False, chunksize=1, **opts)


def parallelized(task: Callable[[int], int], n: int, opts: dict[str, Any]) -> Iterator[int]:
    with taskfan.Parallelized(task, [{"x": i} for i in range(n)], chunksize=1, **opts) as par:
        for _, result, error in par:
            if error is not None:
                raise error
            yield result


@pytest.mark.parametrize("front", [imap_unordered, parallelized], ids=lambda f: f.__name__)
def test_unordered_fronts_yield_in_completion_order(
    front: Callable[[Callable[[int], int], int, dict[str, Any]], Iterator[int]],
    opts: dict[str, Any],
    backend: str,
    parallel: bool,
    gates: Gates,
) -> None:
    if not parallel:
        pytest.skip("one task at a time: completion order is input order")
    release = gates.new(backend)

    def task(x: int) -> int:
        if x == 0:
            assert release.wait(10), "never released"
        return x

    results = front(task, 4, opts)
    first_three = [next(results) for _ in range(3)]  # while item 0 cannot end
    release.set()
    assert sorted(first_three) == [1, 2, 3]
    assert list(results) == [0]


def test_errors_raise_reraises_task_exception_with_worker_traceback(opts: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bad item 3") as info:
        taskfan.map(fail_on_three, range(10), **opts)
    cause = info.value.__cause__
    assert isinstance(cause, TaskTraceback)
    assert "fail_on_three" in cause.text
    assert 'raise ValueError(f"bad item {x}")' in cause.text


def test_errors_return_puts_exception_in_place(opts: dict[str, Any]) -> None:
    got = taskfan.map(fail_on_three, range(6), errors="return", **opts)
    assert got[:3] == [0, 10, 20] and got[4:] == [40, 50]
    assert isinstance(got[3], ValueError) and str(got[3]) == "bad item 3"
    assert isinstance(got[3].__cause__, TaskTraceback)


def test_errors_skip_leaves_failures_out(opts: dict[str, Any]) -> None:
    assert taskfan.map(fail_on_three, range(6), errors="skip", **opts) == [0, 10, 20, 40, 50]


def test_errors_raise_cancels_remaining_tasks(opts: dict[str, Any], backend: str) -> None:
    def task(x: int) -> int:
        if x == 0:
            raise KeyError("first")
        return x

    source = iter(range(10**7))
    it = taskfan.imap(task, source, **opts)
    with pytest.raises(KeyError):
        list(it)
    report = it.report
    assert report.failed == 1
    assert report.total < 10**6  # intake stopped at the failure
    assert report.cancelled == report.total - report.ok - report.failed
    assert next(source) == report.total  # nothing was pulled after the failure


def test_many_failures_in_one_chunk_each_end_on_their_own(opts: dict[str, Any]) -> None:
    def odd_fails(x: int) -> int:
        if x % 2:
            raise ValueError(x)
        return x

    got = taskfan.map(odd_fails, range(5000), errors="return", **opts)
    assert got[::2] == list(range(0, 5000, 2))
    assert all(
        isinstance(e, ValueError) and e.args == (i,)
        for i, e in zip(range(1, 5000, 2), got[1::2], strict=True)
    )


def test_imap_report_counts_outcomes(opts: dict[str, Any]) -> None:
    it = taskfan.imap(fail_on_three, range(10), errors="skip", **opts)
    assert len(list(it)) == 9
    report = it.report
    assert (report.total, report.ok, report.failed, report.cancelled) == (10, 9, 1, 0)
    assert "10 tasks: 9 ok, 1 failed" in str(report)


def test_a_failing_input_iterator_raises_its_own_error(opts: dict[str, Any]) -> None:
    def items() -> Any:
        yield 1
        raise OSError("input broke")

    with pytest.raises(OSError, match="input broke"):
        taskfan.map(square, items(), **opts)


def test_bad_items_argument_is_named() -> None:
    with pytest.raises(TypeError, match="items must be an iterable"):
        taskfan.map(square, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wrap a single string"):
        taskfan.map(square, "abc")
    with pytest.raises(TypeError, match="needs a callable"):
        taskfan.map(3, [1])  # type: ignore[arg-type]


# --- Runner ---------------------------------------------------------------------------------


def test_runner_returns_results_by_key_in_add_order(opts: dict[str, Any]) -> None:
    runner = taskfan.Runner(**opts)
    runner.add("sq", square, 7)
    runner.add("boom", fail_on_three, 3)
    runner.add(("kw", 1), dict, a=1, fn="not the runner's", key="mine")
    results = runner.run()
    assert isinstance(results, Results)
    assert list(results) == ["sq", "boom", ("kw", 1)]
    assert results["sq"] == 49
    assert isinstance(results["boom"], ValueError)
    assert results[("kw", 1)] == {"a": 1, "fn": "not the runner's", "key": "mine"}
    assert results.ok == {"sq": 49, ("kw", 1): {"a": 1, "fn": "not the runner's", "key": "mine"}}
    assert list(results.failed) == ["boom"]
    outcome = results.outcomes["boom"]
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.ok, outcome.attempts) == ("failed", False, 1)
    assert outcome.traceback is not None and "fail_on_three" in outcome.traceback
    assert results.outcomes["sq"].ok and results.outcomes["sq"].unwrap() == 49
    with pytest.raises(ValueError, match="bad item 3"):
        outcome.unwrap()
    assert (results.report.total, results.report.ok, results.report.failed) == (3, 2, 1)
    assert runner.report == results.report


def test_runner_raise_for_errors_groups_failures(opts: dict[str, Any]) -> None:
    runner = taskfan.Runner(**opts)
    for key in range(5):
        runner.add(key, fail_on_three, key if key != 1 else 3)
    results = runner.run()
    with pytest.raises(ExceptionGroup) as info:
        results.raise_for_errors()
    assert [str(e) for e in info.value.exceptions] == ["bad item 3", "bad item 3"]
    fine = taskfan.Runner(**opts)
    fine.add("a", square, 2)
    assert fine.run().raise_for_errors() is None


def test_runner_is_one_shot_and_rejects_duplicate_keys(opts: dict[str, Any]) -> None:
    runner = taskfan.Runner(**opts)
    runner.add("a", square, 1)
    with pytest.raises(ValueError, match="duplicate task key 'a'"):
        runner.add("a", square, 2)
    with pytest.raises(TypeError, match="not hashable"):
        runner.add(["list"], square, 2)
    runner.run()
    with pytest.raises(RuntimeError, match="one-shot"):
        runner.add("b", square, 3)
    with pytest.raises(RuntimeError, match="one-shot"):
        runner.run()


def test_runner_starts_tasks_in_the_order_added(backend: str) -> None:
    with taskfan.SafeCounter.make(backend) as counter:
        runner = taskfan.Runner(backend=backend, workers=1, progress=False)
        for i in range(50):
            runner.add(i, counter.increment, "started")
        results = runner.run()
    assert [results[i] for i in range(50)] == list(range(1, 51))


def test_runner_with_no_tasks_returns_empty_results(opts: dict[str, Any]) -> None:
    results = taskfan.Runner(**opts).run()
    assert results == {} and results.report.total == 0


def test_runner_rejects_options_that_do_not_apply() -> None:
    with pytest.raises(TypeError, match="raise_for_errors"):
        taskfan.Runner(errors="raise")


# --- Parallelized --------------------------------------------------------------------------


def test_parallelized_yields_kwargs_result_error(opts: dict[str, Any]) -> None:
    items = [{"x": i} for i in range(8)]
    with taskfan.Parallelized(fail_on_three, items, **opts) as par:
        triples = list(par)
    assert sorted(t[0]["x"] for t in triples) == list(range(8))
    for kwargs, result, error in triples:
        if kwargs["x"] == 3:
            assert result is None and isinstance(error, ValueError)
        else:
            assert result == kwargs["x"] * 10 and error is None
    assert par.report.ok == 7 and par.report.failed == 1


def test_parallelized_pbar_is_a_harmless_stand_in_when_progress_is_off(
    opts: dict[str, Any],
) -> None:
    with taskfan.Parallelized(square, [{"x": 2}], **opts) as par:
        par.pbar.set_postfix(anything=1)
        par.pbar.write("ignored")
        assert [r for _, r, _ in par] == [4]


def test_parallelized_names_a_bad_item(opts: dict[str, Any]) -> None:
    with (
        pytest.raises(TypeError, match="item 1 is a list"),
        taskfan.Parallelized(square, [{"x": 1}, [2]], **opts) as par,
    ):
        list(par)


def test_leaving_parallelized_early_cancels_the_rest(opts: dict[str, Any]) -> None:
    with taskfan.Parallelized(square, ({"x": i} for i in range(10**9)), **opts) as par:
        for _ in par:
            break
    # Only a window's worth of the endless input was ever pulled.
    assert par.report.total <= 2 * AUTO_WINDOW_MAX


def test_a_retry_after_the_input_ran_out_still_runs(opts: dict[str, Any], backend: str) -> None:
    # Once the input is exhausted idle workers may be let go; a retry that falls due
    # later (after its backoff) must still find a worker.
    with taskfan.SafeCounter.make(backend) as attempts:

        def flaky(x: int) -> int:
            if attempts.increment(x) == 1 and x == 99:
                raise ConnectionError("first try fails")
            return x

        runner = taskfan.Runner(retries=1, backoff=0.05, **opts)
        for i in range(100):
            runner.add(i, flaky, i)
        results = runner.run()
    assert dict(results) == {i: i for i in range(100)}
    assert results.outcomes[99].attempts == 2


def test_no_thread_is_left_when_the_call_returns(opts: dict[str, Any]) -> None:
    import threading

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("taskfan")]

    assert taskfan.map(square, range(5000), **opts) == [x * x for x in range(5000)]
    assert ours() == []  # checked at once: nothing joined after the call returned
    many = {**opts, "workers": 32 if opts["workers"] > 1 else 1}
    taskfan.map(square, range(100), **many)
    assert ours() == []
