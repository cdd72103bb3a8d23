"""The narrow interface between the engine and the code that executes tasks.

The engine sends :class:`Call` objects (a chunk of items of one or more tasks) and gets
:class:`Done` objects back. A backend only executes: it knows nothing of keys, retries,
ordering or progress. Each item of a chunk still ends on its own: the chunk runner
captures an exception per item and carries on with the next.
"""

from __future__ import annotations

import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, ClassVar, overload

from .._clock import Clock
from .._errors import TaskfanError, TaskTraceback
from .._outcome import Status
from .._plain import Frozen, Plain
from ._codes import FULL, KWARGS, SET_ASIDE, SINGLE, STAR

if TYPE_CHECKING:
    import traceback

__all__ = [
    "FULL",
    "KWARGS",
    "RETRIED",
    "SINGLE",
    "STAR",
    "Backend",
    "Call",
    "Cut",
    "Done",
    "Failure",
    "Mark",
    "Outbox",
    "Setup",
    "cut_at",
    "describe_failure",
    "run_items",
]


class Call(Plain):
    """One message to a worker: a chunk of items, each its own task.

    ``timed`` asks the worker to publish which item it is running and since when, so
    the engine can stop exactly that item when its timeout passes. ``expected`` is the
    engine's estimate of the seconds it takes (None before anything was measured).
    ``retried``: exceptions that the engine will retry if an item of this call raises
    one; nobody ever reads the traceback of such an attempt (see :func:`set_aside`).
    """

    __slots__ = ("id", "fn", "mode", "items", "timed", "expected", "retried")
    id: int
    fn: Callable[..., Any] | None
    mode: int
    items: Sequence[Any]
    timed: bool
    expected: float | None
    retried: tuple[type[BaseException], ...]

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        id: int,
        fn: Callable[..., Any] | None,
        mode: int,
        items: Sequence[Any],
        timed: bool = False,
        expected: float | None = None,
        retried: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.id, self.fn, self.mode, self.items = id, fn, mode, items
        self.timed, self.expected, self.retried = timed, expected, retried

    def with_items(self, items: Sequence[Any]) -> Call:
        """The same call with other items."""
        return Call(self.id, self.fn, self.mode, items, self.timed, self.expected, self.retried)


class Failure:
    """How one item's attempt failed: the exception, the worker's traceback, the kind.

    ``retry`` is False for failures that another attempt cannot mend (a result or an
    argument that cannot be pickled, a broken initializer). The traceback may be given
    as a function that formats it: most failures that are retried are never looked at,
    and formatting is the dearest part of a failure.
    """

    __slots__ = ("_error", "_traceback", "_untold", "retry", "status")

    def __init__(
        self,
        error: BaseException,
        traceback: str | Callable[[], str],
        status: Status = "failed",
        retry: bool = True,
        *,
        as_cause: bool = False,
    ) -> None:
        self._error, self._traceback, self.status, self.retry = error, traceback, status, retry
        self._untold = as_cause  # the traceback still to be set as the error's __cause__

    @property
    def error(self) -> BaseException:
        """The exception; from :func:`describe_failure`, with the worker's traceback as its
        ``__cause__`` (attached when first asked for: a retried failure never is)."""
        if self._untold:
            self._untold = False
            self._error.__cause__ = TaskTraceback(lambda: self.traceback)
        return self._error

    @error.setter
    def error(self, error: BaseException) -> None:
        self._error, self._untold = error, False

    @property
    def bare_error(self) -> BaseException:
        """The exception, as it is now: to decide on a retry without dressing it."""
        return self._error

    @property
    def traceback(self) -> str:
        """The worker's formatted traceback."""
        text = self._traceback
        if not isinstance(text, str):
            text = self._traceback = text()
        return text

    @traceback.setter
    def traceback(self, text: str) -> None:
        self._traceback = text

    @property
    def set_aside(self) -> bool:
        """Whether the backend found it retried (see :func:`set_aside`): the engine then
        retries it without looking at its exception, which may not have been kept."""
        return self._traceback is SET_ASIDE


#: In a piece yielded out of order, the failure at the offset of a task that is being
#: retried: not an outcome (the task ends in a later piece), so every consumer skips it.
RETRIED = Failure(TaskfanError("this attempt is retried; its task ends later"), "", retry=False)


class Done(Plain):
    """What came back of one :class:`Call`.

    Items ``[0, len(values))`` ran: each has its value, or an entry in ``errors`` (its
    place in ``values`` then holds None). ``stopped`` is an item whose attempt was ended
    from outside (a timeout, a crashed worker). Every other item, after ``values``, did
    not run to the end and goes back to the queue without counting an attempt.

    With ``cut`` set, it is not the end of the call but a notice that the call was cut
    short (see :meth:`Backend.cut_short`); the call's own Done follows.
    """

    __slots__ = ("call_id", "values", "errors", "stopped", "worker", "started", "elapsed", "cut")
    call_id: int
    values: list[Any]
    errors: dict[int, Failure] | None
    stopped: tuple[int, Failure] | None
    worker: str
    started: float
    elapsed: float
    cut: Cut | None

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        call_id: int,
        values: list[Any],
        errors: dict[int, Failure] | None = None,
        stopped: tuple[int, Failure] | None = None,
        worker: str = "",
        started: float = 0.0,
        elapsed: float = 0.0,
        cut: Cut | None = None,
    ) -> None:
        self.call_id, self.values, self.errors, self.stopped = call_id, values, errors, stopped
        self.worker, self.started, self.elapsed, self.cut = worker, started, elapsed, cut


class Cut(Plain):
    """A running call cut short: its worker runs none of its items from ``limit`` on.

    ``values`` and ``errors`` are its first items, already ended (they are settled at
    once, and its Done later repeats them); ``began`` (clock) and ``started`` (epoch)
    are when the call started on ``worker``.
    """

    __slots__ = ("limit", "values", "errors", "worker", "began", "started")
    limit: int
    values: list[Any]
    errors: dict[int, Failure] | None
    worker: str
    began: float
    started: float

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        limit: int,
        values: list[Any],
        errors: dict[int, Failure] | None,
        worker: str,
        began: float,
        started: float,
    ) -> None:
        self.limit, self.values, self.errors = limit, values, errors
        self.worker, self.began, self.started = worker, began, started


class Setup(Frozen):
    """How each worker is prepared: ``initializer(*initargs)`` once before its first task;
    a process worker is replaced after ``max_tasks_per_worker`` tasks. ``shared`` is the
    job's input when it is a list that nothing changes while the job runs: a forked
    worker has its own copy of it, so calls may name their items by place (see Part)."""

    __slots__ = ("initializer", "initargs", "max_tasks_per_worker", "shared")
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    shared: Sequence[Any] | None

    def __init__(
        self,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        shared: Sequence[Any] | None = None,
    ) -> None:
        self._fill(initializer, initargs, max_tasks_per_worker, shared)


class Part(Sequence[Any]):
    """Items ``[start, stop)`` of a shared input (see Setup), without copying them.

    Slicing a list copies its pointers and writes to every item's reference count; in a
    parent whose workers were forked, each write to a page they still share costs a
    page fault (the page is copied). A process backend whose workers have a copy of the
    input sends them the place instead, and each worker pickles and rebuilds its own
    items (``_worker.by_place``): the parent, which every worker waits on, never touches
    them. Any other use reads the input itself.
    """

    __slots__ = ("seq", "start", "stop")

    def __init__(self, seq: Sequence[Any], start: int, stop: int) -> None:
        self.seq, self.start, self.stop = seq, start, min(stop, len(seq))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> Part: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            a, b, step = index.indices(len(self))
            if step != 1:
                return list(self)[index]
            return Part(self.seq, self.start + a, self.start + max(a, b))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("Part index out of range")
        return self.seq[self.start + index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.seq[self.start : self.stop])

    def __repr__(self) -> str:
        return f"Part({self.start}:{self.stop} of {len(self.seq)})"


Mark = Callable[[int], bool]
"""Called with an item's index just before it runs; returning False abandons the chunk."""


def describe_failure(
    error: BaseException, tb_text: str | Callable[[], str], status: Status = "failed"
) -> Failure:
    """Record ``error`` with its worker traceback, attached as ``__cause__``, as
    concurrent.futures does for processes."""
    return Failure(error, tb_text, status, as_cause=True)


def where_stuck(thread_id: int | None, failure: Failure) -> None:
    """Attach the stack of the thread that ran a timed-out item to its ``failure``.

    A thread cannot be stopped, but it can be looked at: the user learns where the task
    was (a socket read, a lock) when its time ran out.
    """
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return
    import traceback  # (a timeout's path only: a first call need not import it)

    ours = os.path.dirname(os.path.dirname(__file__))
    frames = [
        f
        for f in traceback.extract_stack(frame)
        if not f.filename.startswith(ours) and f.filename != threading.__file__
    ]
    _where(failure, frames)


def _where(failure: Failure, frames: list[traceback.FrameSummary]) -> None:
    """Give a timed-out ``failure`` the frames where its task was as its traceback."""
    import traceback

    text = (
        "Where the task was when its timeout passed (most recent call last):\n"
        + "".join(traceback.format_list(frames))
        + "".join(traceback.format_exception_only(type(failure.error), failure.error))
    )
    failure.traceback = text
    failure.error.__cause__ = TaskTraceback(text)


def where_awaiting(coroutine: Any, failure: Failure) -> None:
    """Attach to ``failure`` where a timed-out coroutine was waiting (its await chain)."""
    import traceback

    frames = []
    current = coroutine
    while current is not None:
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None)
        if frame is None:
            break
        frames.append(
            traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        )
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
    _where(failure, frames)


def capture(error: BaseException) -> Failure:
    """A Failure for an exception raised by a task in this process."""
    tb = error.__traceback__
    # The first frames are the chunk runner's own loops: the user does not need them.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    cause, suppress = error.__cause__, error.__suppress_context__

    def text() -> str:
        # Formatted when first read, with the exception's own cause: by then __cause__
        # holds the TaskTraceback that reads this very text.
        import traceback

        ours = error.__cause__, error.__suppress_context__
        error.__cause__, error.__suppress_context__ = cause, suppress
        try:
            return "".join(traceback.format_exception(type(error), error, tb))
        finally:
            error.__cause__, error.__suppress_context__ = ours

    return describe_failure(error, text)


def set_aside(error: BaseException) -> Failure:
    """A Failure for an exception that the engine will retry: its traceback is dropped.

    Only the last attempt's traceback is ever shown, so an attempt that is retried needs
    only its exception (for ``retry_on``). Dropping the traceback at once frees its
    frames: when 1% of a hundred thousand tiny tasks fail, capturing each traceback and
    the garbage collections its frames set off cost more than the retries themselves.
    """
    error.__traceback__ = None
    return Failure(error, SET_ASIDE)


def run_items(
    call: Call,
    out: list[Any],
    errors: dict[int, Failure],
    mark: Mark | None = None,
    catch: type[BaseException] = Exception,
    *,
    passthrough: Callable[[BaseException], bool] | None = None,
    stop: list[int] | None = None,
) -> bool:
    """Run the items of ``call``, appending each value to ``out``.

    An exception fails only its own item (recorded in ``errors``, None in ``out``) and
    the loop goes on with the next. The loops below are the hot path of tiny tasks: the
    unmarked one costs no more per item than a plain ``for`` loop. Returns False if
    ``mark`` abandoned the chunk. ``catch`` is what counts as a task's own failure:
    ``passthrough`` picks, among those, what is not the task's own (a real Ctrl+C inline).
    ``stop`` lets another thread cut the chunk short (see :func:`cut_at`).
    """
    it = iter(call.items)
    fn = call.fn
    halt = [] if stop is None else stop
    while True:
        try:
            if mark is not None:
                return _marked_loop(call.mode, fn, it, out, mark)
            _fast_loop(call.mode, fn, it, out, halt)
            return True
        except catch as error:  # a task's exception is its result
            if passthrough is not None and passthrough(error):
                raise  # not the task's: a real Ctrl+C, say
            retried = call.retried
            errors[len(out)] = (
                set_aside(error) if retried and isinstance(error, retried) else capture(error)
            )
            out.append(None)
            if halt and len(out) >= halt[-1]:
                return True


def _fast_loop(
    mode: int, fn: Callable[..., Any] | None, it: Iterator[Any], out: list[Any], stop: list[int]
) -> None:
    # Plain ``for`` loops: map() would take a StopIteration raised by ``fn`` for its own
    # end and stop silently, dropping the item; a loop body lets it propagate like any
    # other exception. ``it`` is shared, so after an exception len(out) is the failing
    # item and the loop resumes after it. ``if stop`` costs next to nothing until another
    # thread cuts the chunk short (see cut_at).
    append = out.append
    if mode == SINGLE:
        assert fn is not None
        for item in it:
            append(fn(item))
            if stop and len(out) >= stop[-1]:
                return
    elif mode == STAR:
        assert fn is not None
        for item in it:
            append(fn(*item))
            if stop and len(out) >= stop[-1]:
                return
    elif mode == KWARGS:
        assert fn is not None
        for item in it:
            append(fn(**item))
            if stop and len(out) >= stop[-1]:
                return
    else:
        for f, args, kwargs in it:
            append(f(*args, **kwargs))
            if stop and len(out) >= stop[-1]:
                return


def cut_at(out: list[Any], stop: list[int]) -> tuple[int, int]:
    """From another thread, stop a chunk that a worker thread runs with ``out``/``stop``.

    Returns ``limit``: the worker will run no item at or after it (those are the
    caller's to hand to another worker), and it runs at least the item it is on. The
    worker publishes progress by appending to ``out`` and checks ``stop`` after each
    item; under the GIL each step is atomic and the steps of both threads interleave in
    one order, so once ``len(out) < limit`` is read after ``limit`` was set, the worker
    must see ``limit`` before it could start item ``limit``. Items before ``limit`` that
    it does not run come back as not run, in its Done. Also returns how many items had
    ended when ``limit`` was set (``out`` holds their results for good).
    """
    stop.append(len(out) + 1)
    while (ended := len(out)) >= stop[-1]:  # it moved on meanwhile: aim past it
        stop.append(ended + 1)
    return stop[-1], ended


def _marked_loop(
    mode: int, fn: Callable[..., Any] | None, it: Iterator[Any], out: list[Any], mark: Mark
) -> bool:
    append = out.append
    for item in it:
        if not mark(len(out)):
            return False
        append(call_one(mode, fn, item))
    return True


def call_one(mode: int, fn: Callable[..., Any] | None, item: Any) -> Any:
    """Call the task of ``item`` as ``mode`` says (see SINGLE, STAR, KWARGS, FULL)."""
    if mode == SINGLE:
        return fn(item)  # type: ignore[misc]
    if mode == STAR:
        return fn(*item)  # type: ignore[misc]
    if mode == KWARGS:
        return fn(**item)  # type: ignore[misc]
    f, args, kwargs = item
    return f(*args, **kwargs)


class Outbox:
    """Where worker threads (or tasks on a loop) leave what ended, for the engine to take.

    ``take`` blocks up to a timeout for the first and returns all that is there; a
    driver on an event loop asks :meth:`wake_me` to be told when something arrives.
    """

    def __init__(self) -> None:
        self._queue: SimpleQueue[Done] = SimpleQueue()
        self._notify: Callable[[], None] | None = None

    def put(self, done: Done) -> None:
        self._queue.put(done)
        notify = self._notify
        if notify is not None:
            notify()

    def take(self, timeout: float | None) -> list[Done]:
        queue = self._queue
        try:
            first = (
                queue.get_nowait()
                if timeout is not None and timeout <= 0
                else queue.get(timeout=timeout)
            )
        except Empty:
            return []
        done = [first]
        while True:
            try:
                done.append(queue.get_nowait())
            except Empty:
                return done

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        """See :meth:`Backend.wake_me`."""
        self._notify = notify
        if notify is not None and not self._queue.empty():
            notify()  # it came before the driver asked


class Backend(ABC):
    """Executes calls. Policy (retries, timeouts, order, progress) lives in the engine.

    The engine drives a backend from one thread: :meth:`submit` never blocks for long,
    :meth:`wait` blocks until some call finished or the timeout passed (and must be
    interruptible by Ctrl+C), :meth:`close` releases every worker.
    """

    name: ClassVar[str]
    #: seconds of work one call should carry at least: enough to hide a message's cost
    chunk_seconds: ClassVar[float] = 0.002
    #: the coordinator's time to hand out one call and take its result back, over the
    #: share of one core it may spend on that: each worker adds this much to the work a
    #: call should carry, or many fast workers would swamp the coordinator
    seconds_per_worker: ClassVar[float] = 0.0006
    #: calls in flight per worker: more than one lets a worker start the next call
    #: without waiting for the engine to hand it over
    calls_per_worker: ClassVar[int] = 2

    def __init__(self, workers: int, clock: Clock) -> None:
        self.workers = workers
        self.clock = clock
        #: set by :meth:`start`: calls may carry their items as a :class:`Part` of
        #: ``setup.shared`` (a backend that says so turns them into what it sends)
        self.takes_parts = False

    def start(self, setup: Setup) -> None:  # noqa: B027 - optional: nothing to prepare
        """Prepare to run calls, each worker as ``setup`` says."""

    @abstractmethod
    def submit(self, call: Call) -> None:
        """Hand over a call; it comes back through :meth:`wait`."""

    @abstractmethod
    def wait(self, timeout: float | None) -> list[Done]:
        """Calls finished since the last wait; blocks up to ``timeout`` for the first."""

    def running(self) -> list[tuple[int, int, float]]:
        """``(call id, item index, started)`` of timed calls now running (clock time)."""
        return []

    def stop(self, call_id: int, index: int, failure: Failure) -> bool:
        """End the attempt of item ``index`` of a running call with ``failure``.

        Its :class:`Done` comes through :meth:`wait` with ``stopped`` set. Returns False
        when that item is no longer running (it finished in the meantime).
        """
        return False

    def started_calls(self) -> list[tuple[int, float]]:
        """``(call id, when it started on its worker)`` (clock time) of the calls of more
        than one item now running, that :meth:`cut_short` was not yet asked about."""
        return []

    def cut_short(self, call_id: int) -> Cut | None:
        """Run no more of a call's items than needed: the one running still ends.

        A call that runs far past its expected time holds items that an idle worker
        could run, and results that the caller could have. Returns a :class:`Cut` (the
        engine hands the items from ``limit`` on to other workers at once, and settles
        the ended ones), or None when the backend can only stop at the end of the
        running item: what ran comes back in the Done and the rest, as always, goes
        back to the queue.
        """
        return None

    def release_idle(self) -> None:  # noqa: B027 - optional: a hint, nothing to do by default
        """The input is exhausted: new calls can now only be retries. A backend may let
        idle workers go now (so their teardown overlaps the last tasks), as long as it
        still runs a call submitted later."""

    @abstractmethod
    def close(self, cancel: bool) -> None:
        """Release the workers; with ``cancel``, drop queued calls and stop running ones
        where possible (a thread cannot be stopped: it is abandoned)."""

    # --- for a driver that waits on an event loop -------------------------------------

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        """Call ``notify()`` once (from any thread) as soon as :meth:`wait` with a zero
        timeout would return something; ``None`` calls that off and returns only when
        nothing will call it any more.

        A driver on an event loop never blocks in :meth:`wait`: it asks to be woken,
        awaits, calls it off, then collects with ``wait(0)``.
        """
        raise NotImplementedError(f"backend {self.name!r} cannot be awaited from an event loop")

    async def wait_closed(self) -> None:  # noqa: B027 - optional: most close at once
        """After :meth:`close` on an event loop: return once what it cancelled has
        ended (coroutines run their ``finally`` blocks on that loop)."""
