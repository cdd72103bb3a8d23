"""How a task is stored in a journal row: its key, its value, its error; and back.

A key is an integer for int keys, else its JSON text. A value is stored as SQLite's own
number when it is an int or a float (NULL for None), as JSON text when it comes back from
JSON equal and of the same types (str, bool, lists, dicts with str keys), else as a
pickle (a BLOB): a journal is trusted input, like a pickle file. A value that cannot be
pickled either keeps only its repr (a BLOB that is not a pickle).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ._errors import TaskTraceback, rebuild_error
from ._outcome import Outcome

__all__ = [
    "INT64_END",
    "INT64_MIN",
    "UNSTORABLE",
    "Cell",
    "Row",
    "decode_error",
    "decode_value",
    "describe_function",
    "encode_value",
    "error_columns",
    "error_of_row",
    "key_cell",
    "key_from_cell",
    "outcome_from_row",
    "snapshot",
]

#: how the BLOB of a value that could not be stored starts (a pickle starts with 0x80)
UNSTORABLE = b"unstorable: "

#: a row of ``SELECT key, status, value, attempts, started, duration, worker,
#: error_type, error_text, error, traceback FROM outcomes``
Row = tuple[Any, ...]

#: the integers SQLite stores as such (others are stored as JSON text)
INT64_MIN, INT64_END = -(2**63), 2**63


# --- keys ---------------------------------------------------------------------------------


Cell = int | str


def key_cell(key: object) -> Cell:
    """A task key as the journal stores it: an int as itself, anything else as JSON text.

    Keys must be str, int, float (finite), bool, None, or tuples of those: values that
    JSON holds and that come back equal (a tuple comes back as a tuple). TypeError,
    naming the key, for anything else.
    """
    kind = type(key)
    if kind is int and INT64_MIN <= key < INT64_END:  # type: ignore[operator]
        return key  # type: ignore[return-value]
    if kind is str:
        return json.dumps(key)
    if isinstance(key, int) and not isinstance(key, bool) and INT64_MIN <= key < INT64_END:
        return int(key)  # an IntEnum is stored, and comes back, as its number
    if not _key_ok(key):
        raise TypeError(
            f"task key {key!r} ({type(key).__name__}) cannot be stored in the journal: a key "
            "must be a str, int, float, bool, None or a tuple of them (keys are saved as "
            "JSON and must come back equal)"
        )
    return json.dumps(key, separators=(",", ":"))


def _key_ok(key: object, depth: int = 0) -> bool:
    if key is None or isinstance(key, str | int):
        return True
    if isinstance(key, float):
        return math.isfinite(key)
    if isinstance(key, tuple) and depth < 20:
        return all(_key_ok(k, depth + 1) for k in key)
    return False


def key_from_cell(cell: Cell) -> Hashable:
    """The key a :func:`key_cell` stands for (JSON arrays become tuples)."""
    if type(cell) is int:
        return cell
    return _tuples(json.loads(cell))  # type: ignore[arg-type,no-any-return]


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


# --- values -------------------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """A task's value as the journal stores it; see the module docstring."""
    kind = type(value)
    if kind is int and INT64_MIN <= value < INT64_END:
        return value
    if (kind is float and not math.isnan(value)) or value is None:
        return value
    if kind is str:
        return json.dumps(value)  # ASCII, lone surrogates included
    try:
        if _plain(value, 0):
            return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError):
        pass
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return UNSTORABLE + _safe_repr(value).encode()


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain(value: Any, depth: int) -> bool:
    """Does ``value`` come back from JSON equal and of the same types?"""
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 100:
        return False
    if kind is list:
        return all(_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def decode_value(stored: Any) -> Any:
    """The value that :func:`encode_value` stored (None for one that could not be)."""
    kind = type(stored)
    if kind is str:
        return json.loads(stored)
    if kind is bytes:
        if stored[:1] == b"\x80":
            return pickle.loads(stored)  # a journal is trusted input (module docstring)
        return None
    return stored


def _safe_repr(value: Any) -> str:
    try:
        return _clean(repr(value))[:1000]
    except Exception:
        return f"<{type(value).__name__} object>"


def _clean(text: str) -> str:
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode()


_IMMUTABLE = frozenset({int, float, str, bool, type(None), bytes, complex})


def snapshot(values: Sequence[Any]) -> dict[int, Any] | None:
    """Encode now the values a caller could still change before the writer stores them.

    Numbers and strings cannot change, so they are left to the writer thread.
    """
    encoded = None
    for i, value in enumerate(values):
        if type(value) not in _IMMUTABLE:
            if encoded is None:
                encoded = {}
            encoded[i] = encode_value(value)
    return encoded


def error_columns(error: BaseException, traceback: str) -> tuple[str, str, bytes | None, str]:
    """``(type name, message, pickle or None, traceback)`` of a failed task's error."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else _qualified(kind)
    try:
        blob: bytes | None = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    return name, _clean(_message(error)), blob, _clean(traceback)


def _qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} with a message that cannot be shown>"


def decode_error(type_name: str, text: str, blob: bytes | None, tb: str) -> BaseException:
    error = rebuild_error(blob, type_name, text)
    error.__cause__ = TaskTraceback(tb)
    return error


def outcome_from_row(row: Row, key: Hashable | None = None) -> Outcome:
    """An :class:`Outcome` from a row of ``SELECT {_COLUMNS}``."""
    cell, status, value, attempts, started, dur, worker, etype, etext, eblob, tb = row
    if key is None:
        key = key_from_cell(cell)
    if status == "ok":
        return Outcome(key, "ok", decode_value(value), None, None, attempts, started, dur, worker)
    error = decode_error(etype or "Exception", etext or "", eblob, tb or "")
    return Outcome(key, status, None, error, tb, attempts, started, dur, worker)


def error_of_row(row: Row) -> BaseException | None:
    """The exception of a failed task's row (None for one that ended ok)."""
    if row[1] == "ok":
        return None
    return decode_error(row[7] or "Exception", row[8] or "", row[9], row[10] or "")


def describe_function(fn: Callable[..., Any] | None) -> str:
    """A function's name as the journal records it: ``module.qualname``."""
    if fn is None:
        return "-"
    while hasattr(fn, "func") and not hasattr(fn, "__qualname__"):  # functools.partial
        fn = fn.func
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name
