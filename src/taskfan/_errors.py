"""taskfan's own exceptions.

A task's own exception always reaches the caller with its own type; these are for what
taskfan itself has to say about a task or a run::

    TaskfanError                  base of everything taskfan raises itself
     ├── TaskError                a task failed with an exception that could not be sent
     │                            back as itself (it carries the type name and message)
     ├── TaskTimeout              an attempt ran longer than ``timeout`` (also a TimeoutError)
     ├── WorkerCrashed            the worker process died while running the task
     └── Cancelled                the task never finished: the run stopped first

    TaskTraceback                 not raised: attached as ``__cause__`` of a task's
                                  exception, its text is the worker's traceback
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "Cancelled",
    "TaskError",
    "TaskRaisedStopIteration",
    "TaskTimeout",
    "TaskTraceback",
    "TaskfanError",
    "WorkerCrashed",
]


class TaskfanError(Exception):
    """Base class of the errors taskfan raises itself."""


class TaskError(TaskfanError):
    """A task raised an exception that could not travel back as itself.

    The original could not be pickled (or unpickled) across the process boundary, so
    it is described instead: ``type_name`` is its qualified type name and ``message``
    its ``str()``; the worker's traceback is attached as ``__cause__`` as usual.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[TaskError], tuple[str, str]]:
        return (type(self), (self.type_name, self.message))


class TaskTimeout(TaskfanError, TimeoutError):
    """An attempt ran longer than the ``timeout`` option allows.

    On processes the worker running it was killed and replaced; a thread cannot be
    stopped, so it was abandoned (it runs on in the background, its result discarded).
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"task ran longer than timeout={seconds:g} s; "
            "raise timeout=, or add retries= if it is only sometimes slow"
        )
        self.seconds = seconds

    def __reduce__(self) -> tuple[type[TaskTimeout], tuple[float]]:
        return (type(self), (self.seconds,))


class WorkerCrashed(TaskfanError):
    """The worker process running the task died (a segfault, ``os._exit``, a signal).

    ``exitcode`` is the process's exit code, or minus the signal number that killed it,
    as in :attr:`multiprocessing.Process.exitcode`. Only this task failed: the others
    that the worker held were given to a fresh worker.
    """

    def __init__(self, exitcode: int | None, detail: str = "") -> None:
        self.exitcode = exitcode
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        code = self.exitcode
        if code is None:
            how = "the worker process died"
        elif code < 0:
            how = f"the worker process was killed by signal {_signal_name(-code)}"
        else:
            how = f"the worker process exited with code {code}"
        tail = f" ({self.detail})" if self.detail else ""
        return f"{how} while running this task{tail}"

    def __reduce__(self) -> tuple[type[WorkerCrashed], tuple[int | None, str]]:
        return (type(self), (self.exitcode, self.detail))


class Cancelled(TaskfanError):
    """The task never finished because the run stopped first (an error, Ctrl+C, a break)."""


class TaskTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` of a task's exception.

    Printing the task's exception therefore shows where it was raised inside the worker,
    followed by where the caller received it.
    """

    def __init__(self, text: str | Callable[[], str]) -> None:
        super().__init__()
        self._text = text

    @property
    def text(self) -> str:
        """The formatted traceback (formatted when first asked for)."""
        text = self._text
        if not isinstance(text, str):
            text = self._text = text()
        return text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip("\n")

    def __reduce__(self) -> tuple[type[TaskTraceback], tuple[str]]:
        return (type(self), (self.text,))


def _signal_name(number: int) -> str:
    import signal

    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def rebuild_error(blob: bytes | None, type_name: str, message: str) -> BaseException:
    """An exception sent from another process (or stored): itself when its pickle
    rebuilds, else a :class:`TaskError` that keeps its type's name and message."""
    import pickle

    if blob is not None:
        try:
            error = pickle.loads(blob)
        except Exception:
            error = None
        if isinstance(error, BaseException):
            return error
    return TaskError(type_name, message)


class TaskRaisedStopIteration(RuntimeError):
    """Carries a task's StopIteration out of an iterator, which would otherwise end there.

    Raised inside a generator, a StopIteration becomes a bare ``RuntimeError`` (PEP 479);
    raised from ``next()``, it would end the caller's loop as if the results had run out.
    ``map`` unwraps it and raises the task's own StopIteration; ``imap`` raises this.
    """

    def __init__(self, error: StopIteration) -> None:
        super().__init__(
            "a task raised StopIteration; it is this error's __cause__ (raised from an "
            "iterator as itself, it would silently end the loop over the results)"
        )
        self.error = error
        self.__cause__ = error
