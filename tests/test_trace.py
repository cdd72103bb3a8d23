"""A traceback sent from a worker as data reads exactly as Python's own text."""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable

import pytest

from taskfan.backends._trace import render, summarize


class Custom(Exception):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def _deep(n: int) -> object:
    if n == 0:
        return {}["missing"]
    return _deep(n - 1)


def _caused() -> None:
    try:
        _deep(3)
    except KeyError as error:
        raise ValueError("two\nlines") from error


def _during() -> None:
    try:
        _caused()
    except ValueError:
        items = [1, 2]
        items[len(items) + 3]


def _noted() -> None:
    error = Custom("with a note")
    error.add_note("the note")
    raise error


def _recursive(n: int) -> int:
    return _recursive(n + 1)


def _group() -> None:
    raise ExceptionGroup("several", [ValueError(1), TypeError(2)])


def _suppressed() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        raise KeyError("x") from None


def _cycle() -> None:
    first, second = ValueError(1), TypeError(2)
    first.__context__, second.__context__ = second, first
    raise second


def _name() -> None:
    print(undefined_nam)  # type: ignore[name-defined]  # noqa: F821


def _attribute() -> None:
    "text".uper()  # type: ignore[attr-defined]


def _multiline() -> float:
    return (1 +
            2 / 0)  # fmt: skip


CASES: list[Callable[[], object]] = [
    _caused,
    _during,
    _noted,
    lambda: _recursive(0),
    _group,
    _suppressed,
    _cycle,
    _name,
    _attribute,
    _multiline,
    lambda: (_ for _ in ()).throw(Unprintable()),
    lambda: (_ for _ in ()).throw(Custom()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_rendered_text_is_pythons_own(case: Callable[[], object]) -> None:
    # The recursion case runs to the interpreter's depth limit: a garbage collection there
    # would run the finalizers of earlier tests' garbage (multiprocessing's among them)
    # with no stack left, and pytest reports what they raise against this test. Seen once
    # in a CI run; the collection happens here, before the case, instead.
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(BaseException) as raised:  # noqa: PT011 - every kind is compared
            case()
    finally:
        gc.enable()
    error = raised.value
    expected = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert render(summarize(error, error.__traceback__)) == expected


def test_a_trimmed_start_drops_the_first_frames() -> None:
    with pytest.raises(ValueError, match="two") as raised:
        _caused()
    tb = raised.value.__traceback__
    assert tb is not None and tb.tb_next is not None
    text = render(summarize(raised.value, tb.tb_next))
    assert "in test_a_trimmed_start_drops_the_first_frames" not in text
    assert 'return {}["missing"]' in text and "ValueError: two\nlines" in text
