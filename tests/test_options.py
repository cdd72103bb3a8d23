"""Bad options fail at once, before any task runs, naming the option and what it accepts."""

from __future__ import annotations

from typing import Any

import pytest

import taskfan
from taskfan._options import make_options, parse_rate

BAD = [
    ({"workers": 0}, ValueError, "workers must be an integer >= 1"),
    ({"workers": 2.5}, ValueError, "workers must be an integer >= 1"),
    ({"workers": True}, ValueError, "workers must be an integer >= 1"),
    ({"backend": "gpu"}, ValueError, "backend must be one of 'auto', 'serial', 'thread'"),
    ({"rate": "fast"}, ValueError, "rate must be .* 'N/s', 'N/min' or 'N/h'"),
    ({"rate": 0}, ValueError, "rate must be"),
    ({"rate": "-3/s"}, ValueError, "rate must be"),
    ({"retries": -1}, ValueError, "retries must be an integer >= 0"),
    ({"retry_on": "ValueError"}, ValueError, "retry_on must be an exception type"),
    ({"timeout": 0}, ValueError, "timeout must be a number of seconds > 0"),
    ({"timeout": "5"}, ValueError, "timeout must be a number of seconds"),
    ({"backoff": -1}, ValueError, "backoff must be a number of seconds >= 0"),
    ({"errors": "ignore"}, ValueError, "errors must be one of 'raise', 'return', 'skip'"),
    ({"progress": "yes"}, ValueError, "progress must be None, True, False or 'log'"),
    ({"chunksize": 0}, ValueError, "chunksize must be 'auto' or an integer >= 1"),
    ({"window": -5}, ValueError, "window must be 'auto' or an integer >= 1"),
    ({"initializer": 5}, ValueError, "initializer must be a callable"),
    ({"initargs": (1,)}, ValueError, "initargs= was given without initializer="),
    ({"backend": "serial", "workers": 4}, ValueError, "backend='serial' runs one task"),
    ({"backend": "serial", "timeout": 1}, ValueError, "timeout= cannot stop a task"),
    ({"backend": "thread", "max_tasks_per_worker": 5}, ValueError, "needs backend='process'"),
    ({"address": "tcp://x:1"}, ValueError, "address= is the dask scheduler"),
    ({"wokers": 4}, TypeError, r"unknown option wokers=; did you mean workers=\?"),
    ({"journal": 5}, ValueError, "journal must be a file path"),
    ({"journal": "  "}, ValueError, "journal must be a file path"),
    ({"journal": "j.db", "rerun": "some"}, ValueError, "rerun must be one of 'failed', 'missing'"),
    ({"journal": "j.db", "key": "id"}, ValueError, "key must be a function of an item"),
    ({"rerun": "all"}, ValueError, "rerun= only means something with a journal"),
    ({"key": len}, ValueError, "key= only means something with a journal"),
    ({"backend": "dask"}, NotImplementedError, "backend='dask' is not available"),
]


@pytest.mark.parametrize(("given", "kind", "message"), BAD)
def test_bad_option_fails_before_any_task_runs(
    given: dict[str, Any], kind: type[Exception], message: str
) -> None:
    ran: list[int] = []
    for front in (taskfan.map, taskfan.imap):
        with pytest.raises(kind, match=message):
            front(ran.append, [1, 2, 3], **given)
    assert ran == []


def test_runner_and_parallelized_validate_at_construction() -> None:
    with pytest.raises(ValueError, match="workers must be"):
        taskfan.Runner(workers=-1)
    with pytest.raises(ValueError, match="workers must be"):
        taskfan.Parallelized(print, [], workers=-1)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("10/s", 10.0),
        ("120/min", 2.0),
        ("3600/h", 1.0),
        (" 2.5 / sec ", 2.5),
        ("30/minute", 0.5),
        ("7200/hours", 2.0),
    ],
)
def test_rate_forms(text: Any, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


def test_options_are_frozen() -> None:
    options = make_options("map", {"workers": 3})
    with pytest.raises(AttributeError):
        options.workers = 4  # type: ignore[misc]


def test_workers_one_runs_inline_in_the_calling_thread() -> None:
    import threading

    main = threading.get_ident()
    assert taskfan.map(lambda _: threading.get_ident(), range(5), workers=1) == [main] * 5
    assert (
        taskfan.map(lambda _: threading.get_ident(), range(5), backend="thread", workers=1)
        == [main] * 5
    )
    others = taskfan.map(lambda _: threading.get_ident(), range(5), workers=1, timeout=30)
    assert main not in others  # a timeout needs a thread that can be abandoned


@pytest.mark.parametrize("rate", ["5/ms", "5/m", "5/day", "5/", "fast"])
def test_a_rate_unit_it_does_not_know_is_refused(rate: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        taskfan.map(abs, [1], rate=rate)


@pytest.mark.parametrize(
    ("rate", "per_second"),
    [("10/s", 10.0), ("120/min", 2.0), ("3600/h", 1.0), ("30/minutes", 0.5), ("2/sec", 2.0)],
)
def test_rate_units(rate: str, per_second: float) -> None:
    from taskfan._options import parse_rate

    assert parse_rate(rate) == pytest.approx(per_second)


@pytest.mark.parametrize("ordered", ["yes", 1, None])
def test_imap_ordered_must_be_a_boolean(ordered: Any) -> None:
    with pytest.raises(ValueError, match="ordered must be True or False"):
        taskfan.imap(abs, [1], ordered=ordered)


@pytest.mark.parametrize(
    ("front", "says"),
    [
        (lambda: taskfan.Runner(errors="return"), r"\.raise_for_errors\(\)"),
        (lambda: taskfan.Parallelized(abs, [], errors="return"), r"\(kwargs, result, error\)"),
    ],
    ids=["Runner", "Parallelized"],
)
def test_refusing_errors_says_what_the_front_does_instead(front: Any, says: str) -> None:
    with pytest.raises(TypeError, match=says):
        front()


@pytest.mark.parametrize(
    ("given", "size"),
    [(1024, 1024), ("256MB", 256 * 10**6), ("1 GiB", 2**30), ("512kib", 512 * 1024)],
)
def test_window_bytes_takes_sizes(given: Any, size: int) -> None:
    assert make_options("map", {"window_bytes": given}).window_bytes == size


@pytest.mark.parametrize("bad", [0, -5, "lots", "5 parsecs", 1.5, True])
def test_window_bytes_refuses_what_is_not_a_size(bad: Any) -> None:
    with pytest.raises(ValueError, match="window_bytes must be"):
        taskfan.map(abs, [1], window_bytes=bad)
