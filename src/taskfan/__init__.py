"""taskfan: run many independent tasks at once, on threads or processes, and never lose a
result. See the README for a tour; every public name is listed in ``__all__``."""

from ._api import Parallelized, ResultIterator, Runner, imap, map, starmap
from ._args import add_arguments, options_from_args
from ._errors import Cancelled, TaskError, TaskfanError, TaskTimeout, TaskTraceback, WorkerCrashed
from ._outcome import Outcome, Report, Results
from ._safe import SafeCounter, SafeDict

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
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
    "imap",
    "map",
    "options_from_args",
    "starmap",
]
