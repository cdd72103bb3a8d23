"""Regression tests for the ways a run used to go wrong: each runs on every backend."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import taskfan
from taskfan._engine import TaskRaisedStopIteration

from .conftest import backends_that


def _next_of_empty(x: int) -> int:
    if x == 1:
        return next(iter([]))  # type: ignore[no-any-return]
    return x


@pytest.mark.timeout(20)
def test_stopiteration_fails_only_its_task(opts: dict[str, Any]) -> None:
    got = taskfan.map(_next_of_empty, range(5), errors="return", **opts)
    assert got[:1] + got[2:] == [0, 2, 3, 4]
    assert type(got[1]) is StopIteration
    assert isinstance(got[1].__cause__, taskfan.TaskTraceback)
    assert "_next_of_empty" in got[1].__cause__.text


@pytest.mark.timeout(20)
def test_stopiteration_is_raised_as_itself_by_map(opts: dict[str, Any]) -> None:
    with pytest.raises(StopIteration) as caught:
        taskfan.map(lambda x: next(iter([])), range(3), **opts)
    assert type(caught.value) is StopIteration


@pytest.mark.timeout(20)
def test_stopiteration_does_not_silently_end_an_imap_loop(opts: dict[str, Any]) -> None:
    with pytest.raises(TaskRaisedStopIteration) as caught:
        for _ in taskfan.imap(_next_of_empty, range(5), **opts):
            pass
    assert isinstance(caught.value, RuntimeError)
    assert type(caught.value.__cause__) is StopIteration


@pytest.mark.timeout(20)
def test_stopasynciteration_fails_only_its_task(opts: dict[str, Any]) -> None:
    def task(x: int) -> int:
        if x == 2:
            raise StopAsyncIteration("done early")
        return x

    got = taskfan.map(task, range(4), errors="return", **opts)
    assert got[:2] + got[3:] == [0, 1, 3]
    assert type(got[2]) is StopAsyncIteration


class _Own(BaseException):
    pass


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit, _Own])
def test_a_task_raising_a_base_exception_is_returned_in_place(
    opts: dict[str, Any], kind: type[BaseException]
) -> None:
    def task(x: int) -> int:
        if x == 2:
            raise kind("the task's own")
        return x

    got = taskfan.map(task, range(4), errors="return", **opts)
    assert got[:2] + got[3:] == [0, 1, 3]
    assert type(got[2]) is kind


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
def test_workers_1_has_the_semantics_of_every_backend(kind: type[BaseException]) -> None:
    def task(x: int) -> int:
        if x == 1:
            raise kind("own")
        return x

    got = taskfan.map(task, range(3), workers=1, errors="return", progress=False)
    assert got[0] == 0 and got[2] == 2 and type(got[1]) is kind


class _BrokenInput:
    """Yields ``good`` items, then raises; counts what was taken."""

    def __init__(self, good: int) -> None:
        self.good, self.taken = good, 0

    def __iter__(self) -> Any:
        for i in range(self.good):
            self.taken += 1
            yield i
        raise OSError("input broke")


@pytest.mark.timeout(30)
def test_imap_yields_every_task_taken_before_the_input_failed(opts: dict[str, Any]) -> None:
    source = _BrokenInput(50)
    it = taskfan.imap(lambda x: x * 2, source, **opts)
    got: list[int] = []
    with pytest.raises(OSError, match="input broke"):
        got.extend(it)  # extend keeps what came before the error
    assert got == [x * 2 for x in range(50)]
    report = it.report
    assert (report.total, report.ok, report.failed, report.cancelled) == (50, 50, 0, 0)


@pytest.mark.timeout(30)
def test_map_says_how_many_tasks_ended_before_the_input_failed(opts: dict[str, Any]) -> None:
    source = _BrokenInput(20)
    with pytest.raises(OSError, match="input broke") as caught:
        taskfan.map(lambda x: x, source, **opts)
    assert any("20 items" in note and "20 ok" in note for note in caught.value.__notes__)


@pytest.mark.timeout(30)
def test_parallelized_yields_what_ended_then_raises_the_input_error(opts: dict[str, Any]) -> None:
    def jobs() -> Any:
        yield {"x": 1}
        yield {"x": 2}
        yield "not a mapping"

    seen: list[tuple[Any, ...]] = []
    run = taskfan.Parallelized(lambda x: x, jobs(), **opts)
    with run, pytest.raises(TypeError, match="item 2"):
        seen.extend((kwargs["x"], result, error) for kwargs, result, error in run)
    assert sorted(seen) == [(1, 1, None), (2, 2, None)]


def _cannot_rebuild() -> None:
    raise ValueError("cannot be rebuilt here")


class _PicklesButWillNotUnpickle:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_cannot_rebuild, ())


def _identity(x: Any) -> Any:
    return x


def _bad_result_at_777(x: int) -> Any:
    return _PicklesButWillNotUnpickle() if x == 777 else x


@pytest.mark.timeout(30)
def test_an_argument_that_cannot_be_rebuilt_fails_only_its_task() -> None:
    items: list[Any] = list(range(20))
    items[7] = _PicklesButWillNotUnpickle()
    got = taskfan.map(_identity, items, backend="process", workers=2, chunksize=8, errors="return")
    assert [g for i, g in enumerate(got) if i != 7] == [i for i in range(20) if i != 7]
    assert isinstance(got[7], ValueError) and "cannot be rebuilt" in str(got[7])


@pytest.mark.timeout(30)
def test_a_result_that_cannot_be_rebuilt_fails_only_its_task() -> None:
    got = taskfan.map(
        _bad_result_at_777, range(5000), backend="process", workers=2, errors="return"
    )
    failed = [i for i, g in enumerate(got) if isinstance(g, BaseException)]
    assert failed == [777]
    assert isinstance(got[777], TypeError) and "could not be rebuilt" in str(got[777])
    assert got[:777] + got[778:] == [i for i in range(5000) if i != 777]


async def _coroutine_function(x: int) -> int:
    return x


class _AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x


COROUTINE_FUNCTIONS = pytest.mark.parametrize(
    "fn",
    [_coroutine_function, functools.partial(_coroutine_function), _AsyncCallable()],
    ids=["async-def", "partial", "async-call"],
)


@COROUTINE_FUNCTIONS
@pytest.mark.parametrize("plain_backend", backends_that(lambda e: not e.coroutines))
def test_a_coroutine_function_is_refused_rather_than_left_unawaited(
    plain_backend: str, fn: Any
) -> None:
    with pytest.raises(TypeError, match=r"coroutine function .* backend='async'"):
        taskfan.map(fn, [1, 2], backend=plain_backend, progress=False)


@COROUTINE_FUNCTIONS
def test_auto_picks_async_for_a_coroutine_function(fn: Any) -> None:
    it = taskfan.imap(fn, [1, 2, 3], progress=False)
    assert list(it) == [1, 2, 3]
    assert it.report.ok == 3


@pytest.mark.timeout(30)
def test_the_traceback_kept_is_the_last_attempts(opts: dict[str, Any], backend: str) -> None:
    # Attempts that are retried drop their tracebacks (nobody reads them): the one that
    # fails for good still carries its own, in full.
    with taskfan.SafeCounter.make(backend) as attempts:

        def always_fails(x: int) -> int:
            raise ValueError(f"attempt {attempts.increment(x)} of {x}")

        got = taskfan.map(always_fails, [7], retries=2, backoff=0, errors="return", **opts)
    error = got[0]
    assert isinstance(error, ValueError) and str(error) == "attempt 3 of 7"
    assert isinstance(error.__cause__, taskfan.TaskTraceback)
    assert "always_fails" in error.__cause__.text and "attempt 3 of 7" in error.__cause__.text


def test_an_attempt_that_will_be_retried_sets_its_traceback_aside() -> None:
    from taskfan.backends._base import SINGLE, Call, Failure, run_items

    def task(x: int) -> int:
        if x == 1:
            raise ValueError("retried")
        if x == 2:
            raise KeyError("not retried")
        return x

    out: list[Any] = []
    errors: dict[int, Failure] = {}
    run_items(Call(0, task, SINGLE, [0, 1, 2], retried=(ValueError,)), out, errors)
    assert out == [0, None, None]
    assert errors[1].bare_error.__traceback__ is None and "not kept" in errors[1].traceback
    assert "task" in errors[2].traceback and 'raise KeyError("not retried")' in errors[2].traceback


class _Transient(Exception):
    """A user's own error to retry on (module level: it travels to worker processes)."""


@pytest.mark.timeout(30)
def test_retry_on_retries_only_its_errors(opts: dict[str, Any], backend: str) -> None:
    # A backend marks an attempt that failed with a retry_on error, and the engine
    # retries on that mark alone: anything else must fail at its first attempt.
    with taskfan.SafeCounter.make(backend) as attempts:

        def task(x: int) -> int:
            n = attempts.increment(x)
            if x % 2 == 0 and n == 1:
                raise _Transient(f"first attempt of {x}")
            if x == 3:
                raise KeyError("not retried")
            return x

        it = taskfan.imap(
            task, range(6), retries=2, retry_on=_Transient, backoff=0, errors="return", **opts
        )
        got = list(it)
        tries = [attempts.get(x) for x in range(6)]
    assert got[:3] == [0, 1, 2] and got[4:] == [4, 5]
    assert isinstance(got[3], KeyError)
    assert tries == [2, 1, 2, 1, 2, 1]
    assert (it.report.ok, it.report.failed, it.report.retried) == (5, 1, 3)


@pytest.mark.timeout(30)
def test_out_of_order_each_retried_task_comes_back_once(opts: dict[str, Any], backend: str) -> None:
    # Out of order, a chunk goes on at once with gaps where its retried tasks were; they
    # come back later, each exactly once, and a task that fails for good once too.
    with taskfan.SafeCounter.make(backend) as attempts:

        def task(x: int) -> int:
            if x == 7:
                raise KeyError("always")
            if x % 10 == 3 and attempts.increment(x) == 1:
                raise ValueError("once")
            return x

        it = taskfan.imap(
            task, range(100), ordered=False, retries=1, backoff=0, errors="return", **opts
        )
        got = list(it)
    assert len(got) == 100
    assert sorted(g for g in got if isinstance(g, int)) == [x for x in range(100) if x != 7]
    assert [type(g) for g in got if not isinstance(g, int)] == [KeyError]
    assert (it.report.ok, it.report.failed, it.report.retried) == (99, 1, 11)
