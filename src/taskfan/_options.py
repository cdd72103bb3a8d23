"""Options: every keyword option of every entry point, validated once into a frozen value.

Each check names the option and what it accepts, so a typo fails before any task runs.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any, Literal

from ._plain import Frozen
from .backends._registry import REGISTRY, Registration, cpu_count, registration

__all__ = ["BACKENDS", "Options", "Plan", "cpu_count", "make_options", "parse_rate", "plan"]

BACKENDS = ("auto", *REGISTRY)
_ERRORS = ("raise", "return", "skip")
_RATE_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
# (patterns, not compiled at import: re compiles and caches them at their first use)
_RATE_PATTERN = r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*/\s*([a-z]+)\s*$"

ProgressMode = bool | None | Literal["log"]


#: every option and its default, in the order they are listed to the user
_DEFAULTS: dict[str, Any] = {
    "workers": None,
    "backend": "auto",
    "retries": 0,
    "retry_on": (Exception,),
    "backoff": 0.5,
    "backoff_max": 60.0,
    "timeout": None,
    "rate": None,
    "progress": None,
    "progress_every": 5.0,
    "desc": None,
    "errors": "raise",
    "chunksize": None,
    "window": None,
    "window_bytes": 256 * 2**20,
    "initializer": None,
    "initargs": (),
    "max_tasks_per_worker": None,
    "journal": None,
    "rerun": "failed",
    "key": None,
    "address": None,
}
_NAMES = tuple(_DEFAULTS)


class Options(Frozen):
    """The validated options of one call. Build it with :func:`make_options`; ``Options()``
    is every default."""

    __slots__ = _NAMES
    workers: int | None
    backend: str
    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float
    backoff_max: float
    timeout: float | None
    rate: float | None
    progress: ProgressMode
    progress_every: float
    desc: str | None
    errors: str
    chunksize: int | None
    window: int | None
    window_bytes: int
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    journal: str | None
    rerun: str
    key: Callable[[Any], Any] | None
    address: Any

    def __init__(self, **given: Any) -> None:
        unknown = set(given) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"Options() got unknown fields: {', '.join(sorted(unknown))}")
        self._fill(*(given.get(name, default) for name, default in _DEFAULTS.items()))


def make_options(where: str, given: Mapping[str, Any], *, exclude: tuple[str, ...] = ()) -> Options:
    """Validate ``given`` keyword options for the entry point ``where``.

    ``exclude`` lists option names that do not apply to this entry point; passing one
    is an error that says why, rather than being silently ignored.
    """
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name in exclude:
            why = _EXCLUDED_WHY.get((where, name)) or _EXCLUDED_WHY[("", name)]
            raise TypeError(f"{where}() does not take the option {name}=: {why}")
        check = _CHECKS.get(name)
        if check is None:
            raise TypeError(_unknown(where, name))
        values[name] = check(value)
    options = Options(**values)
    _check_combination(options)
    for name in ("rerun", "key"):
        if name in values and options.journal is None:
            raise ValueError(
                f"{name}= only means something with a journal: pass journal='run.db' too "
                f"(or leave {name}= out)"
            )
    return options


def _unknown(where: str, name: str) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(name, _NAMES, n=1)
    hint = f"; did you mean {close[0]}=?" if close else f"; the options are: {', '.join(_NAMES)}"
    return f"{where}() got an unknown option {name}={hint}"


_EXCLUDED_WHY = {
    ("Runner", "errors"): (
        "failures are returned with the results; call .raise_for_errors() on them to raise"
    ),
    ("Parallelized", "errors"): (
        "each failure comes as the error of its (kwargs, result, error) triple"
    ),
    ("", "errors"): "failures are returned with the results",
    ("", "key"): "keys are given with each task",
}


# --- single-option checks ---------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _int_at_least(name: str, low: int, *, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value) or value < low:
            none = " or None" if optional else ""
            raise ValueError(f"{name} must be an integer >= {low}{none}, got {value!r}")
        return value

    return check


def _seconds(name: str, *, optional: bool, zero_ok: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        bad = not _is_number(value) or value < 0 or value == float("inf")
        if bad or (value == 0 and not zero_ok):
            bound = ">= 0" if zero_ok else "> 0"
            none = " or None" if optional else ""
            raise ValueError(f"{name} must be a number of seconds {bound}{none}, got {value!r}")
        return float(value)

    return check


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            accepted = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{name} must be one of {accepted}; got {value!r}")
        return value

    return check


def _check_retry_on(value: Any) -> tuple[type[BaseException], ...]:
    types = value if isinstance(value, tuple) else (value,)
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise ValueError(
            f"retry_on must be an exception type or a tuple of them (like ConnectionError or "
            f"(TimeoutError, OSError)), got {value!r}"
        )
    return types


def parse_rate(value: Any) -> float | None:
    """Task starts per second from a number or a string like ``"10/s"``, ``"600/min"``."""
    if value is None:
        return None
    if _is_number(value) and 0 < value < float("inf"):
        return float(value)
    if isinstance(value, str):
        match = re.match(_RATE_PATTERN, value.lower())
        if match and match.group(2) not in _RATE_UNITS:
            raise ValueError(
                f"rate {value!r}: unknown unit {match.group(2)!r}; use s, min or h "
                "(like '10/s', '120/min', '1000/h')"
            )
        if match and float(match.group(1)) > 0:
            return float(match.group(1)) / _RATE_UNITS[match.group(2)]
    raise ValueError(
        f"rate must be a positive number of task starts per second or a string "
        f"'N/s', 'N/min' or 'N/h' (like '120/min'); got {value!r}"
    )


def _check_progress(value: Any) -> ProgressMode:
    if value is None or isinstance(value, bool) or value == "log":
        return value  # type: ignore[no-any-return]
    raise ValueError(f"progress must be None, True, False or 'log'; got {value!r}")


def _check_desc(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"desc must be a string or None, got {value!r}")


def _check_chunksize(value: Any) -> int | None:
    if value == "auto" or value is None:
        return None
    if _is_int(value) and value >= 1:
        return int(value)
    raise ValueError(f"chunksize must be 'auto' or an integer >= 1, got {value!r}")


def _check_window(value: Any) -> int | None:
    if value == "auto" or value is None:
        return None
    if _is_int(value) and value >= 1:
        return int(value)
    raise ValueError(f"window must be 'auto' or an integer >= 1, got {value!r}")


_BYTE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_BYTES_PATTERN = r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$"


def parse_bytes(name: str, value: Any) -> int:
    """A size in bytes from an integer or a string like ``"256MB"`` or ``"1 GiB"``."""
    if _is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, str):
        match = re.match(_BYTES_PATTERN, value.lower())
        if match and (match.group(2) or "b") in _BYTE_UNITS:
            size = int(float(match.group(1)) * _BYTE_UNITS[match.group(2) or "b"])
            if size >= 1:
                return size
    raise ValueError(
        f"{name} must be a number of bytes >= 1 or a string like '256MB', '1GB', "
        f"'512MiB'; got {value!r}"
    )


def _check_callable(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and not callable(value):
            raise ValueError(f"{name} must be a callable or None, got {value!r}")
        return value

    return check


def _check_initargs(value: Any) -> tuple[Any, ...]:
    if isinstance(value, tuple | list):
        return tuple(value)
    raise ValueError(f"initargs must be a tuple of arguments for initializer, got {value!r}")


def _check_journal(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str) and path.strip():
            return path
    raise ValueError(f"journal must be a file path (a str or a Path) or None, got {value!r}")


def _check_key_fn(value: Any) -> Any:
    if value is not None and not callable(value):
        raise ValueError(
            f"key must be a function of an item giving its key (like key=lambda row: row['id']) "
            f"or None, got {value!r}"
        )
    return value


def check_flag(name: str, value: Any) -> bool:
    """A boolean option: True or False, nothing that merely looks true."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "workers": _int_at_least("workers", 1, optional=True),
    "backend": _choice("backend", BACKENDS),
    "retries": _int_at_least("retries", 0),
    "retry_on": _check_retry_on,
    "backoff": _seconds("backoff", optional=False, zero_ok=True),
    "backoff_max": _seconds("backoff_max", optional=False, zero_ok=True),
    "timeout": _seconds("timeout", optional=True, zero_ok=False),
    "rate": parse_rate,
    "progress": _check_progress,
    "progress_every": _seconds("progress_every", optional=False, zero_ok=False),
    "desc": _check_desc,
    "errors": _choice("errors", _ERRORS),
    "chunksize": _check_chunksize,
    "window": _check_window,
    "window_bytes": lambda value: parse_bytes("window_bytes", value),
    "initializer": _check_callable("initializer"),
    "initargs": _check_initargs,
    "max_tasks_per_worker": _int_at_least("max_tasks_per_worker", 1, optional=True),
    "journal": _check_journal,
    "rerun": _choice("rerun", ("failed", "missing", "all")),
    "key": _check_key_fn,
    "address": lambda value: value,
}


def _check_combination(options: Options) -> None:
    name = options.backend
    entry = None if name == "auto" else registration(name)
    if entry is not None and not entry.many_workers and options.workers not in (None, 1):
        raise ValueError(
            f"backend={name!r} runs one task at a time in the calling thread; "
            f"workers={options.workers} needs {_those(lambda e: e.many_workers)}"
        )
    if entry is not None and not entry.timeouts and options.timeout is not None:
        raise ValueError(
            f"timeout= cannot stop a task running inline with backend={name!r}; "
            f"use {_those(lambda e: e.timeouts)}"
        )
    if options.initargs and options.initializer is None:
        raise ValueError("initargs= was given without initializer=")
    for option, what in _OWN_OPTIONS.items():
        if getattr(options, option) is None:
            continue
        owners = [e.name for e in REGISTRY.values() if option in e.own_options]
        if name not in owners:
            needs = " or ".join(f"backend={owner!r}" for owner in owners)
            raise ValueError(f"{option}= {what} and needs {needs}, not backend={name!r}")


#: what each backend-only option does, for the message that refuses it elsewhere
_OWN_OPTIONS = {
    "max_tasks_per_worker": "replaces worker processes",
    "address": "is the dask scheduler",
}


def _those(can: Callable[[Registration], bool]) -> str:
    names = [e.name for e in REGISTRY.values() if can(e) and e.missing is None]
    return " or ".join(f"backend={name!r}" for name in names)


# --- turning options into a plan --------------------------------------------------------


class Plan(Frozen):
    """The backend a call runs on and how many tasks run at once."""

    __slots__ = ("backend", "workers")
    backend: str
    workers: int

    def __init__(self, backend: str, workers: int) -> None:
        self._fill(backend, workers)


def plan(options: Options, fn: Callable[..., object] | None) -> Plan:
    """Choose the backend and worker count for ``options`` and the task function."""
    name = options.backend
    if name == "auto":
        name = _auto_backend(options, fn)
    entry = registration(name)
    if not entry.coroutines and fn is not None and is_async_callable(fn):
        raise TypeError(
            f"{_describe(fn)} is a coroutine function (async def): calling it on "
            f"backend={name!r} would only create coroutines, never run them. "
            f"Use {_those(lambda e: e.coroutines) or _NO_ASYNC}"
        )
    if entry.missing is not None:
        raise NotImplementedError(entry.missing)
    if name == "thread" and options.workers == 1 and options.timeout is None:
        name = "serial"  # one thread buys nothing over running inline (SPEC section 1)
    workers = options.workers if options.workers is not None else entry.default_workers()
    return Plan(name, workers)


#: the code flag of an ``async def`` function (inspect.CO_COROUTINE)
_CO_COROUTINE = 0x80


def is_async_callable(fn: object) -> bool:
    """Does calling ``fn`` make a coroutine? Also through ``functools.partial`` and for
    objects whose ``__call__`` is ``async def``."""
    while isinstance(fn, functools.partial | MethodType):
        fn = fn.func if isinstance(fn, functools.partial) else fn.__func__
    if type(fn) is FunctionType and not hasattr(fn, "_is_coroutine_marker"):
        # A plain function (no inspect.markcoroutinefunction mark): the flag that
        # inspect.iscoroutinefunction reads, read here, so that a call of a plain function
        # does not import inspect (about 8 ms of the first call)
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    if isinstance(fn, BuiltinFunctionType):  # abs, len, a C function: never async
        return False
    import inspect

    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(call)


def _describe(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


# Until a backend runs coroutines, what to do meanwhile.
_NO_ASYNC = (
    "a backend that runs coroutines (none is available in this version of taskfan "
    "yet); until then, run each one to its end in the task: lambda x: asyncio.run(fn(x))"
)


def _auto_backend(options: Options, fn: Callable[..., object] | None) -> str:
    if fn is not None and is_async_callable(fn):
        return next((e.name for e in REGISTRY.values() if e.coroutines), "thread")
    if options.workers == 1 and options.timeout is None:
        return "serial"
    return "thread"
