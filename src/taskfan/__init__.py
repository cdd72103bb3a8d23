"""taskfan: run many independent tasks at once, on threads or processes, and never lose a
result. See the README for a tour; every public name is listed in ``__all__``.

The names are imported when first used: a worker process, which needs only the code that
runs tasks, then starts without importing the engine and the fronts (about 50 ms each).
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

_WHERE = {
    "AsyncResultIterator": "._aio",
    "aimap": "._aio",
    "amap": "._aio",
    "Parallelized": "._api",
    "ResultIterator": "._api",
    "Runner": "._api",
    "imap": "._api",
    "map": "._api",
    "starmap": "._api",
    "add_arguments": "._args",
    "options_from_args": "._args",
    "Cancelled": "._errors",
    "TaskError": "._errors",
    "TaskTimeout": "._errors",
    "TaskTraceback": "._errors",
    "TaskfanError": "._errors",
    "WorkerCrashed": "._errors",
    "Journal": "._journal",
    "Outcome": "._outcome",
    "Report": "._outcome",
    "Results": "._outcome",
    "SafeCounter": "._safe",
    "SafeDict": "._safe",
}

__all__ = [
    "AsyncResultIterator",
    "Cancelled",
    "Journal",
    "Outcome",
    "Parallelized",
    "Report",
    "ResultIterator",
    "Results",
    "Runner",
    "SafeCounter",
    "SafeDict",
    "TaskError",
    "TaskTimeout",
    "TaskTraceback",
    "TaskfanError",
    "WorkerCrashed",
    "__version__",
    "add_arguments",
    "aimap",
    "amap",
    "imap",
    "map",
    "options_from_args",
    "starmap",
]


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'taskfan' has no attribute {name!r}")
    value = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if _typing.TYPE_CHECKING:
    from ._aio import AsyncResultIterator, aimap, amap
    from ._api import Parallelized, ResultIterator, Runner, imap, map, starmap
    from ._args import add_arguments, options_from_args
    from ._errors import (
        Cancelled,
        TaskError,
        TaskfanError,
        TaskTimeout,
        TaskTraceback,
        WorkerCrashed,
    )
    from ._journal import Journal
    from ._outcome import Outcome, Report, Results
    from ._safe import SafeCounter, SafeDict
