"""Pickling for work that leaves this process: by value with cloudpickle, file names kept.

cloudpickle 3.1.3 and later write ``"<dynamic-code>"`` as the file name of every code
object they pickle by value (it makes their pickles reproducible). A lambda or a nested
function sent to a worker process would then raise from ``File "<dynamic-code>"``, with
no source line: the user loses exactly the traceback taskfan promises to bring back. So
each code object travels with its real file name, restored when it is rebuilt, whatever
cloudpickle version is installed. Nested code objects (an inner function, a
comprehension) go through the same reducer, so each of them keeps its own name too.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from collections.abc import Callable
from functools import cache
from typing import Any, ClassVar

__all__ = ["dumps", "dumps_by_value"]


def dumps(obj: Any) -> bytes:
    """``obj`` pickled for another process: by reference where pickle can, else by value."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return dumps_by_value(obj)


def dumps_by_value(obj: Any) -> bytes:
    """``cloudpickle.dumps(obj)``, but code objects keep their real file names."""
    buffer = io.BytesIO()
    _pickler_class()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


@cache
def _pickler_class() -> type[Any]:
    import cloudpickle  # only code that sends work away pays for importing it

    base: type[Any] = cloudpickle.Pickler
    code_reduce = base.dispatch_table[types.CodeType]

    def reduce_code(code: types.CodeType) -> tuple[Any, ...]:
        rebuild, args = code_reduce(code)[:2]
        return (_rebuild_code, (rebuild, args, code.co_filename))

    class KeepFileNames(base):  # type: ignore[misc]
        dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
            {types.CodeType: reduce_code}, base.dispatch_table
        )

    return KeepFileNames


def _rebuild_code(
    rebuild: Callable[..., types.CodeType], args: tuple[Any, ...], filename: str
) -> types.CodeType:
    """Rebuild a code object as cloudpickle would, then put its file name back."""
    code = rebuild(*args)
    return code if code.co_filename == filename else code.replace(co_filename=filename)
