"""Work sent by value to a worker process keeps its file names, whatever cloudpickle does."""

from __future__ import annotations

import pickle
import types

from taskfan._pickling import dumps_by_value


def _code_objects(code: types.CodeType) -> list[types.CodeType]:
    found = [code]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found += _code_objects(const)
    return found


def test_a_closure_and_its_nested_code_keep_their_file_name() -> None:
    offset = 3

    def outer(x: int) -> list[int]:
        def inner(y: int) -> int:
            return y + offset

        return [inner(v) for v in range(x)]

    rebuilt = pickle.loads(dumps_by_value(outer))
    assert rebuilt(2) == [3, 4]
    codes = _code_objects(rebuilt.__code__)
    assert len(codes) >= 2  # outer and inner at least
    assert {c.co_filename for c in codes} == {__file__}
    assert rebuilt.__code__.co_firstlineno == outer.__code__.co_firstlineno


def test_a_lambda_keeps_its_file_name() -> None:
    rebuilt = pickle.loads(dumps_by_value(lambda x: x + 1))
    assert rebuilt(1) == 2
    assert rebuilt.__code__.co_filename == __file__
