"""The engine: every policy of a run, written once, for every backend.

It runs in the calling thread. It pulls input only while the window has room, cuts it
into chunks, hands them to a backend, and turns what comes back into per-task results:
retries with backoff, per-attempt timeouts, the rate limit, ordering, fail-fast, progress
and cancellation. It is the only code that touches task state, so nothing here is locked.

It never polls: each step blocks in the backend (or sleeps, if nothing runs) until the
next thing that can happen: a result, a retry falling due, a deadline, a rate slot, a
log line.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import sys
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._chunking import ChunkSizer
from ._clock import Clock, SystemClock
from ._errors import TaskfanError, TaskRaisedStopIteration, TaskTimeout
from ._interrupts import ctrl_c_deferred
from ._options import Options, Plan
from ._outcome import Report
from ._plain import Plain
from ._progress import BarObserver, NullBar, Observer, Tally, make_observers
from .backends._base import (
    RETRIED,
    Backend,
    Call,
    Cut,
    Done,
    Failure,
    Part,
    Setup,
    describe_failure,
)
from .backends._registry import backend_class

if TYPE_CHECKING:
    import random

__all__ = ["Engine", "Feed", "Job", "Piece", "TaskRaisedStopIteration"]


#: most items taken from the input and not yet handed back, when ``window`` is auto
AUTO_WINDOW_MAX = 65_536
#: a chunk is cut short once it has run this many times its expected time...
CUT_FACTOR = 4.0
#: ...and at least this long (seconds): jitter alone never cuts a chunk
CUT_FLOOR = 0.05
#: retries falling due within one slot of this many seconds go out in one call (longer
#: where a call costs more: up to a backend's chunk time, at most a quarter of the
#: backoff: a retry starts at most that much before its drawn delay ends)
RETRY_COALESCE = 0.002


class Job(Plain):
    """What to run: the function, how items become calls, the items, their number."""

    __slots__ = ("fn", "mode", "items", "total")
    fn: Callable[..., Any] | None
    mode: int
    items: Iterable[Any]
    total: int | None

    def __init__(
        self,
        fn: Callable[..., Any] | None,
        mode: int,
        items: Iterable[Any],
        total: int | None = None,
    ) -> None:
        self.fn, self.mode, self.items, self.total = fn, mode, items, total


class Span(Plain):
    """Tasks going to a worker together, on the same attempt number.

    They are consecutive from ``seq``, except in a batch of retries: ``positions`` then
    holds each one's place. ``sent`` tells that its attempt was already counted.
    """

    __slots__ = ("seq", "items", "attempt", "positions", "sent")
    seq: int
    items: Sequence[Any]
    attempt: int
    positions: list[int] | None
    sent: bool

    def __init__(
        self,
        seq: int,
        items: Sequence[Any],
        attempt: int = 1,
        positions: list[int] | None = None,
        sent: bool = False,
    ) -> None:
        self.seq, self.items, self.attempt = seq, items, attempt
        self.positions, self.sent = positions, sent

    def sub(self, start: int, stop: int) -> Span:
        """Its tasks at offsets ``[start, stop)``."""
        items = self.items[start:stop]
        if self.positions is None:
            return Span(self.seq + start, items, self.attempt, None, self.sent)
        positions = self.positions[start:stop]
        return Span(
            positions[0] if positions else self.seq, items, self.attempt, positions, self.sent
        )

    def drop(self, start: int, stop: int) -> None:
        """Keep only its tasks at offsets ``[start, stop)``."""
        kept = self.sub(start, stop)
        self.seq, self.items, self.positions = kept.seq, kept.items, kept.positions


class Piece(Plain):
    """Consecutive tasks that ended: values, and failures by offset (value None there).

    ``started`` (epoch) and ``duration`` (per item) come from the chunk they ran in.
    ``recorded`` is set on tasks resumed from a journal: their rows there (``_journal``).
    """

    __slots__ = (
        "seq",
        "items",
        "values",
        "failures",
        "attempt",
        "worker",
        "started",
        "duration",
        "recorded",
        "holes",
        "gaps",
        "redone",
    )
    seq: int
    items: Sequence[Any]
    values: list[Any]
    failures: dict[int, Failure] | None
    attempt: int
    worker: str
    started: float
    duration: float
    recorded: list[tuple[Any, ...]] | None
    holes: int  # retried tasks not yet ended for good (their values are None)
    gaps: int  # out of order: retried tasks that end in later pieces (see RETRIED)
    #: by offset: how a retried task ended, as (piece, offset in that piece)
    redone: dict[int, tuple[Piece, int]] | None

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        seq: int,
        items: Sequence[Any],
        values: list[Any],
        failures: dict[int, Failure] | None,
        attempt: int,
        worker: str,
        started: float,
        duration: float,
        recorded: list[tuple[Any, ...]] | None = None,
        holes: int = 0,
        gaps: int = 0,
        redone: dict[int, tuple[Piece, int]] | None = None,
    ) -> None:
        self.seq, self.items, self.values, self.failures = seq, items, values, failures
        self.attempt, self.worker, self.started, self.duration = attempt, worker, started, duration
        self.recorded, self.holes, self.gaps, self.redone = recorded, holes, gaps, redone

    @classmethod
    def of(
        cls,
        span: Span,
        start: int,
        values: list[Any],
        failures: dict[int, Failure] | None,
        done: Done,
    ) -> Piece:
        """The tasks of ``span`` from offset ``start`` that ``done`` reports ended."""
        per_item = done.elapsed / len(done.values) if done.values else done.elapsed
        items = span.items
        if start or len(values) != len(items):  # (whole, the usual case: no copy)
            items = items[start : start + len(values)]
        return cls(
            span.seq + start,
            items,
            values,
            failures,
            span.attempt,
            done.worker,
            done.started + start * per_item,
            per_item,
        )

    def ran(self, i: int) -> tuple[Piece, int]:
        """Where its task at offset ``i`` ended: here, or in its last retry's piece (a
        batch of retries), as that piece and the task's offset in it."""
        return self.redone.get(i, (self, i)) if self.redone else (self, i)

    def cut(self, start: int, stop: int) -> Piece:
        """The tasks at offsets ``[start, stop)`` as a piece of their own."""
        failures = None
        if self.failures:
            failures = {i - start: f for i, f in self.failures.items() if start <= i < stop}
        redone = None
        if self.redone:
            redone = {i - start: p for i, p in self.redone.items() if start <= i < stop}
        return Piece(
            self.seq + start,
            self.items[start:stop],
            self.values[start:stop],
            failures or None,
            self.attempt,
            self.worker,
            self.started + start * self.duration,
            self.duration,
            redone=redone or None,
        )


class Engine:
    """Runs one job. Iterate :meth:`run` for the pieces, in order if ``ordered``.

    With ``fail_fast`` the first task that fails for good (after its retries) stops the
    run: the rest is cancelled and its exception is raised from :meth:`run`.
    """

    #: Retried tasks that end well fill their places in their first piece directly,
    #: without a piece and a :meth:`_settle` each. False in a subclass that must see
    #: every ended task in ``_settle`` (the journal records them there).
    fills_in_place = True

    def __init__(
        self,
        job: Job,
        options: Options,
        plan: Plan,
        *,
        ordered: bool = True,
        fail_fast: bool = False,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        backend: Callable[[int, Clock], Backend] | None = None,
        shares_input: bool = False,
    ) -> None:
        self.options, self.plan = options, plan
        self.clock = clock or SystemClock()
        self._job = job
        self._source: Iterator[Any] = iter(job.items)
        items = job.items
        self._sequence = items if isinstance(items, list | tuple | range) else None
        # The caller runs nothing until the job ends (map): a list input cannot change
        # meanwhile, so workers with a copy of it may read their items there (see Part).
        self._shares_input = shares_input and isinstance(items, list | tuple)
        self._parts = False
        self._ordered, self._fail_fast = ordered, fail_fast
        self._rng = rng  # made at the first backoff: most runs never draw
        # ``backend`` replaces the registered class (a test's scripted backend).
        make_backend = backend or backend_class(plan.backend)
        self._backend: Backend = make_backend(plan.workers, self.clock)
        made = self._backend
        self._max_calls = plan.workers * (1 if options.rate else made.calls_per_worker)
        target = max(made.chunk_seconds, plan.workers * made.seconds_per_worker)
        fixed = 1 if options.rate else options.chunksize
        self._sizer = ChunkSizer(target, plan.workers, fixed, floor=target / 8)
        self._coalesce = max(RETRY_COALESCE, min(made.chunk_seconds, options.backoff / 4))
        self._interval = 1.0 / options.rate if options.rate else 0.0
        self._next_start = -math.inf
        self.tally = Tally()
        self._ids = itertools.count()
        self._inflight: dict[int, Span] = {}
        self._expected: dict[int, float] = {}  # call id -> seconds it should take
        self._cut: set[int] = set()  # calls already asked to stop early
        self._skip: dict[int, int] = {}  # call id -> its first items, already settled
        self._pending: deque[Span] = deque()
        # Retries waiting out their backoff, by slot of time (see _schedule_retries): a
        # heap of (when the slot goes out, id, slot), and each slot's tasks.
        self._timers: list[tuple[float, int, _Slot]] = []
        self._slots: dict[int, dict[int, _Slot]] = {}  # attempt -> slot number -> slot
        self._buffer: dict[int, Piece] = {}  # ended out of order, waiting for the head
        self._weights: dict[int, int] = {}  # their estimated bytes, by seq
        self._buffered_bytes = self._buffered_items = 0
        self._next_out = 0
        # seq of a retried task -> the buffered piece it leaves a hole in (in order only)
        self._hole_of: dict[int, Piece] = {}
        self._out: deque[Piece] = deque()
        self._emitted = 0
        self._exhausted = False
        self._input_error: Exception | None = None
        self._feed: Feed | None = None
        self._observers: list[Observer] = []
        self._opened = self._closed = self._complete = False
        self._t0 = self._t1 = 0.0

    # --- life cycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Start the backend and the observers (idempotent)."""
        if self._opened:
            return
        self._opened = True
        self._t0 = self.clock.now()
        o = self.options
        shared = self._sequence if self._shares_input else None
        self._backend.start(Setup(o.initializer, o.initargs, o.max_tasks_per_worker, shared))
        self._parts = shared is not None and self._backend.takes_parts
        self._observers = make_observers(
            o.progress, self._job.total, o.desc, o.progress_every, self.clock
        )

    @property
    def bar(self) -> Any:
        """The tqdm bar when there is one, else a :class:`NullBar`."""
        for observer in self._observers:
            if isinstance(observer, BarObserver):
                return observer.bar
        return NullBar()

    def run(self) -> Iterator[Piece]:
        """Run the job, yielding pieces of ended tasks; cleans up however it is left."""
        if self._backend.name == "async" and _loop_running():
            self.close()
            raise RuntimeError(
                "this call blocks until its coroutines end, but it was made from inside "
                "a running event loop, which would then stall: use "
                "`await taskfan.amap(...)` or `async for ... in taskfan.aimap(...)` there"
            )
        self.open()
        try:
            while True:
                self._dispatch()
                if self._out:
                    while self._out:
                        piece = self._out.popleft()
                        self._emitted += len(piece.items) - piece.gaps
                        yield piece
                    continue  # handing back freed window room: fill it before waiting
                if self._drained():
                    break
                self._step()
            self._complete = True  # every task taken ended, even if the input failed
            if self._input_error is not None:
                raise self._input_failed()
        finally:
            self.close()

    async def arun(self, feed: Feed | None = None) -> AsyncGenerator[Piece, None]:
        """:meth:`run` for a caller on an event loop: the same policy, step by step,
        awaiting instead of blocking. ``feed`` brings input from an async iterable.

        The backend wakes the loop when it has news (see ``Backend.wake_me``); the
        engine's state stays on the loop's thread. The caller must ``aclose()`` this
        generator (``aimap`` does) so that the run is cancelled however it is left.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        here = threading.get_ident()

        def notify() -> None:
            if threading.get_ident() == here:
                woken.set()  # a coroutine of this loop ended: no need to wake the loop
            else:
                loop.call_soon_threadsafe(woken.set)

        self._feed = feed
        try:
            self.open()
            if feed is not None:
                feed.start(notify)
            while True:
                self._dispatch()
                if feed is not None:
                    feed.want(self._input_room())
                if self._out:
                    while self._out:
                        piece = self._out.popleft()
                        self._emitted += len(piece.items) - piece.gaps
                        yield piece
                    continue
                if self._drained():
                    break
                await self._astep(woken, notify)
            self._complete = True
            if self._input_error is not None:
                raise self._input_failed()
        finally:
            if feed is not None:
                await feed.stop()
            await self.aclose()

    async def _astep(self, woken: Any, notify: Callable[[], None]) -> None:
        """:meth:`_step` on an event loop."""
        if self.clock.virtual:
            # Virtual time moves only when the engine waits: a scripted backend's
            # wait() advances it, as in the blocking driver; the loop still turns.
            self._step()
            await _turn()
            return
        timeout = self._wake_in()
        if self._out:
            return  # _wake_in took input that ended at once: hand it out before waiting
        backend = self._backend
        done = backend.wait(0) if self._inflight else []
        if not done:
            if not self._inflight and timeout is None and self._feed is None:
                if self._drained():
                    return
                raise RuntimeError("taskfan engine: nothing to wait for (this is a bug)")
            woken.clear()
            if self._inflight:
                backend.wake_me(notify)
            try:
                # Input that arrives, a call that ends, or a timer: each sets ``woken``.
                # (What the feed holds now, _dispatch could not take: no reason not to wait.)
                await _until(woken, timeout)
            finally:
                if self._inflight:
                    backend.wake_me(None)
            if self._inflight:
                done = backend.wait(0)
        self._react(done)

    def _input_room(self) -> int:
        """Items the engine would take from its input now."""
        if self._exhausted:
            return 0
        return max(1, self._window() - self._held())

    async def aclose(self) -> None:
        """:meth:`close` on an event loop: also waits (without blocking the loop) until
        what it cancelled has ended."""
        first = not self._closed
        self.close()
        if first and self._opened:
            await self._backend.wait_closed()

    def _input_failed(self) -> BaseException:
        error, t = self._input_error, self.tally
        assert error is not None
        error.add_note(
            f"taskfan: the input raised this after {t.pulled} items were taken from it; "
            f"their tasks all ended first ({t.ok} ok, {t.failed} failed)"
        )
        return error

    def close(self) -> None:
        """Stop: cancel what has not ended, release the workers, close the observers."""
        if self._closed:
            return
        with ctrl_c_deferred():
            self._closed = True
            self._t1 = self.clock.now()
            try:
                if self._opened and not self._complete:
                    self._salvage()
                if self._opened:
                    self._backend.close(cancel=not self._complete)
            finally:
                # Freed here, with Ctrl+C held: a tqdm bar's __del__ run once the call
                # has returned would drop a Ctrl+C that came then (CPython prints it as
                # "Exception ignored"). ``bar`` is the do-nothing stand-in from now on.
                observers, self._observers = self._observers, []
                _close_all(observers, self.report)

    def _salvage(self) -> None:
        """Keep what ended but was not yet taken in (Ctrl+C, an error, a break)."""
        self._fail_fast = False
        try:
            for done in self._backend.wait(0):
                # A call cut short with nothing ended (Ctrl+C in its first item) leaves
                # its tasks cancelled, not failed.
                if done.cut is not None:
                    self._apply_cut(done.call_id, done.cut)
                elif done.call_id in self._inflight and (done.values or done.stopped):
                    self._finish(done)
        except Exception:
            import logging  # here only: importing it costs the first call milliseconds

            logging.getLogger("taskfan").debug("could not collect late results", exc_info=True)
        self._pending.clear()
        self._timers.clear()
        self._slots.clear()

    def leftover(self) -> list[Piece]:
        """Pieces that ended but were never yielded (after the run stopped early)."""
        pieces = list(self._out)
        for piece in self._buffer.values():
            pieces.extend(self._ended_parts(piece))
        self._out.clear()
        self._buffer.clear()
        return pieces

    def _ended_parts(self, piece: Piece) -> list[Piece]:
        """``piece`` without its holes still open: the stretches of tasks that ended."""
        if not piece.holes:
            return [piece]
        holes = self._hole_of
        parts, start = [], 0
        for i in range(len(piece.values) + 1):
            if i == len(piece.values) or holes.get(piece.seq + i) is piece:
                if i > start:
                    parts.append(piece.cut(start, i))
                start = i + 1
        return parts

    @property
    def report(self) -> Report:
        """A snapshot of the counts so far."""
        t = self.tally
        ended = t.ok + t.failed
        end = self._t1 if self._closed else self.clock.now()
        elapsed = max(0.0, end - self._t0) if self._opened else 0.0
        return Report(
            total=t.pulled,
            ok=t.ok,
            failed=t.failed,
            timed_out=t.timed_out,
            crashed=t.crashed,
            cancelled=t.pulled - ended if self._closed else 0,
            retried=t.retried,
            resumed=t.resumed,
            elapsed=elapsed,
        )

    def _drained(self) -> bool:
        return (
            self._exhausted
            and not self._inflight
            and not self._pending
            and self._retry_due() is None
            and not self._out
        )

    # --- intake and dispatch --------------------------------------------------------------

    def _dispatch(self) -> None:
        limit = self._call_limit()
        if len(self._inflight) >= limit:
            return
        window = self._window()
        cap = max(1, window // self._max_calls)  # every worker can hold some of the window
        while len(self._inflight) < limit:
            if self._interval and self.clock.now() < self._next_start:
                return
            span = self._next_span(window, cap)
            if span is None:
                return
            if self._interval:
                self._next_start = self.clock.now() + self._interval
            self._send(span)

    def _call_limit(self) -> int:
        # Until a first call has been measured, one call per worker: the next ones are
        # then sized from what it took, instead of all going out one item each.
        return self._max_calls if self._sizer.per_item is not None else self.plan.workers

    def _next_span(self, window: int, cap: int) -> Span | None:
        if self._pending:
            return self._batch(self._pending.popleft())
        if self._exhausted:
            return None
        room = window - self._held()
        if room <= 0:
            return None
        size = min(self._sizer.size(self._remaining()), room, cap)
        items = self._take(size)
        if len(items) < size and (self._feed is None or self._feed.drained()):
            self._exhausted = True
            if self._feed is not None and self._feed.error is not None:
                self._input_error = self._feed.error
        if not items:
            return None
        span = Span(self.tally.pulled, items)
        self.tally.pulled += len(items)
        if self._sequence is not None and self.tally.pulled >= len(self._sequence):
            self._exhausted = True  # known now, not one call (and rate slot) later
        return span

    def _batch(self, span: Span) -> Span:
        """Retries that are due together go out as one call, up to a chunk: a thousand
        tiny retries must not cost a thousand messages. A span queued when tasks looked
        quicker than they turned out is cut to today's chunk size."""
        pending = self._pending
        size = self._sizer.size()
        if len(span.items) > size:
            pending.appendleft(span.sub(size, len(span.items)))
            return span.sub(0, size)
        if not (span.attempt > 1 and pending):
            return span
        items, positions = list(span.items), _positions(span)
        while pending and len(items) < size:
            head = pending[0]
            if head.attempt != span.attempt or head.sent != span.sent:
                break
            room = size - len(items)
            if len(head.items) > room:  # the rest of it stays first in the queue
                pending[0] = head.sub(room, len(head.items))
                head = head.sub(0, room)
            else:
                pending.popleft()
            items += head.items
            positions += _positions(head)
        if len(items) == len(span.items):
            return span
        return Span(positions[0], items, span.attempt, positions, span.sent)

    def _take(self, size: int) -> Sequence[Any]:
        feed = self._feed
        if feed is not None:
            return feed.take(size)
        if self._sequence is not None:
            # Slicing a list is a copy of pointers; slicing a range creates nothing.
            start = self.tally.pulled
            if self._parts:
                return Part(self._sequence, start, start + size)
            return self._sequence[start : start + size]
        items: list[Any] = []
        try:
            # extend keeps what it appended before the input raised: those items count.
            items.extend(itertools.islice(self._source, size))
        except Exception as error:
            # The tasks already taken still run and are handed back; the input's error
            # is raised once they have all ended.
            self._input_error = error
            self._exhausted = True
        except BaseException:
            self.tally.pulled += len(items)  # counted, as cancelled
            raise
        return items

    def _remaining(self) -> int | None:
        total = self._job.total
        return None if total is None else max(0, total - self.tally.pulled)

    def _window(self) -> int:
        if self.options.window is not None:
            return self.options.window
        wanted = 2 * self._max_calls * self._sizer.size()
        return max(4 * self.plan.workers, min(wanted, AUTO_WINDOW_MAX))

    def _held(self) -> int:
        """Tasks that count against the window.

        A ``window`` given by the caller counts every task taken and not yet handed
        back. The automatic one counts the tasks still to end (running, queued, waiting
        out a retry's backoff); finished results that wait for an earlier task, in
        order, are bounded by what they weigh instead (``window_bytes``): a head task
        waiting for its retry then stops nothing while the results behind it are small.
        """
        held = self.tally.pulled - self._emitted
        if self.options.window is not None:
            return held
        if self._buffered_bytes >= self.options.window_bytes:
            return AUTO_WINDOW_MAX + held  # full: take nothing until the head ends
        return held - self._buffered_items

    def _send(self, span: Span) -> None:
        per_item = self._sizer.per_item
        expected = None if per_item is None else per_item * len(span.items)
        o = self.options
        timed = o.timeout is not None
        retried = o.retry_on if span.attempt <= o.retries else ()
        call = Call(
            next(self._ids), self._job.fn, self._job.mode, span.items, timed, expected, retried
        )
        self._inflight[call.id] = span
        if expected is not None and len(span.items) > 1 and span.positions is None:
            self._expected[call.id] = expected  # may be cut short when far past it
        if span.attempt > 1 and not span.sent:
            self.tally.retried += len(span.items)
        span.sent = True
        self._backend.submit(call)

    # --- waiting ----------------------------------------------------------------------------

    def _step(self) -> None:
        """Wait for the next event (blocking), then act on it."""
        timeout = self._wake_in()
        if self._out:
            return  # _wake_in took input (a rate slot's peek) that ended at once: see there
        if self._inflight:
            done = self._backend.wait(timeout)
        else:
            if timeout is None and self._drained():
                return  # looking for work (a rate limit's peek) found the input's end
            if timeout is None:
                raise RuntimeError("taskfan engine: nothing to wait for (this is a bug)")
            self.clock.sleep(timeout)
            done = []
        self._react(done)

    def _react(self, done: list[Done]) -> None:
        """Act on what happened since the last step: calls that ended, time that passed.

        This and everything it calls never wait: the drivers (:meth:`run` blocking,
        :meth:`arun` on an event loop) do the waiting, each in its own way.
        """
        for i, d in enumerate(done):
            try:
                if d.cut is not None:
                    self._apply_cut(d.call_id, d.cut)
                else:
                    self._finish(d)
            except BaseException:
                # A final failure stops the run (fail-fast): what came back with it ended
                # too, and is kept, not counted cancelled.
                self._fail_fast = False
                for rest in done[i + 1 :]:
                    with contextlib.suppress(Exception):
                        if rest.cut is not None:
                            self._apply_cut(rest.call_id, rest.cut)
                        else:
                            self._finish(rest)
                raise
        now = self.clock.now()
        due = self._retry_due()
        if due is not None and due <= now:
            self._release_retries(now)
        if self._exhausted and not self._pending and self._retry_due() is None:
            self._backend.release_idle()
        self._expire(now)
        self._cut_overdue(now)
        for observer in self._observers:
            due = observer.next_tick()
            if due is not None and due <= now:
                observer.tick(now, self.tally)

    def _wake_in(self) -> float | None:
        """Seconds until the next timed event (None: only a call's end can come).

        With a rate limit it may take input (:meth:`_has_work`), and a journaled run
        settles the resumed tasks it takes at once, into ``_out``: the caller must then
        hand those out instead of waiting (with nothing in flight and the input taken,
        it would find nothing to wait for).
        """
        now = self.clock.now()
        wake = math.inf
        due = self._retry_due()
        if due is not None and len(self._inflight) < self._call_limit():
            # With every call slot taken, a retry that falls due could not go out: the
            # next call to end frees a slot, and brings every retry due by then (see
            # _react), in one call. Waking for each would take the GIL from the
            # workers (threads) for nothing.
            wake = due
        if self._interval and len(self._inflight) < self._max_calls and self._has_work():
            wake = min(wake, self._next_start)
        if self.options.timeout is not None and self._inflight:
            wake = min(wake, self._next_deadline(now, self.options.timeout))
        overdue = self._overdue_times()
        for _, when in overdue:
            wake = min(wake, when)
        if len(overdue) < len(self._expected.keys() - self._cut):
            # A call still queued at its worker is not among the started ones, and no
            # backend says when one starts: look again when it would be overdue had it
            # started now. Waiting for the next call to end instead, a call that starts
            # after the others have ended, and sticks on a slow task, would hold its
            # finished results and unstarted items until that task ends.
            wake = min(wake, now + CUT_FLOOR)
        for observer in self._observers:
            due = observer.next_tick()
            if due is not None:
                wake = min(wake, due)
        return None if wake == math.inf else max(0.0, wake - now)

    def _has_work(self) -> bool:
        """Is there a task to start when the next rate slot opens?

        Asked only with a rate limit: rather than wake a whole interval later to find
        the input empty, take the next item now (it goes out at that slot). No item to
        take now (the window is full, an async input has nothing yet) is a no: waking
        at the slot would find nothing to start, and once the slot has passed, the
        wait would be 0 s, again and again, until a task ends. What frees the window
        (a task that ends) or brings input (the feed's notice) wakes the engine anyway.
        """
        if self._pending:
            return True
        if self._exhausted:
            return False
        span = self._next_span(self._window(), 1)
        if span is None:
            return False
        self._pending.append(span)
        return True

    def _next_deadline(self, now: float, timeout: float) -> float:
        # An item that starts after this moment cannot expire before now + timeout.
        running = self._backend.running()
        return min([started + timeout for _, _, started in running], default=now + timeout)

    def _expire(self, now: float) -> None:
        timeout = self.options.timeout
        if timeout is None or not self._inflight:
            return
        for call_id, index, started in self._backend.running():
            # The same sum as _next_deadline's: a difference may round below it.
            if now >= started + timeout and call_id in self._inflight:
                failure = describe_failure(TaskTimeout(timeout), "", "timeout")
                self._backend.stop(call_id, index, failure)

    # --- chunks that hold back work -------------------------------------------------------

    def _overdue_times(self) -> list[tuple[int, float]]:
        """``(call id, when it is overdue)`` of running calls that may be cut short."""
        if not self._expected:
            return []
        due = []
        for call_id, began in self._backend.started_calls():
            expected = self._expected.get(call_id)
            if expected is not None and call_id not in self._cut:
                # A chunk is sized to take about one target; one sized from an estimate
                # that has grown since is still cut on the target's terms.
                expected = min(expected, self._sizer.target)
                due.append((call_id, began + max(CUT_FACTOR * expected, CUT_FLOOR)))
        return due

    def _cut_overdue(self, now: float) -> None:
        """A chunk far past its expected time is stuck on a slow item: whatever it has
        not started goes to the workers that are free, instead of waiting behind it."""
        for call_id, due in self._overdue_times():
            if due > now:
                continue
            self._cut.add(call_id)
            cut = self._backend.cut_short(call_id)
            if cut is not None:
                self._apply_cut(call_id, cut)

    def _apply_cut(self, call_id: int, cut: Cut) -> None:
        """The worker runs none of the call's items from ``cut.limit`` on: hand them to
        the others now; and what already ended is the caller's now."""
        span = self._inflight.get(call_id)
        if span is not None and call_id not in self._skip:
            if cut.limit < len(span.items):
                rest = span.sub(cut.limit, len(span.items))
                span.drop(0, cut.limit)
                self._hand_out(rest)
            if cut.values:  # what ended is handed back now, not with its slow mate
                self._harvest(call_id, span, cut)

    def _harvest(self, call_id: int, span: Span, cut: Cut) -> None:
        k = len(cut.values)
        elapsed = max(0.0, self.clock.now() - cut.began)
        done = Done(call_id, cut.values, cut.errors, None, cut.worker, cut.started, elapsed)
        ended = span.sub(0, k)
        span.drop(k, len(span.items))
        self._skip[call_id] = k
        self._settle_all(ended, 0, cut.values, cut.errors, done)

    def _hand_out(self, span: Span) -> None:
        """Queue ``span`` first, split so that every worker can take a share."""
        n = len(span.items)
        size = max(1, min(self._sizer.size(), math.ceil(n / self.plan.workers)))
        for start in reversed(range(0, n, size)):
            self._pending.appendleft(span.sub(start, start + size))

    # --- results --------------------------------------------------------------------------

    def _finish(self, done: Done) -> None:
        span = self._inflight.pop(done.call_id)
        self._expected.pop(done.call_id, None)
        was_cut = done.call_id in self._cut
        self._cut.discard(done.call_id)
        harvested = self._skip.pop(done.call_id, 0)
        if harvested:  # progress already made: its first items were settled at the cut
            self._sizer.observe(len(done.values), done.elapsed)
            done = _without_first(done, harvested)
        elif not done.values and done.stopped is None and span.items:
            done.stopped = (0, _no_progress())  # never requeue what made no progress
        m = len(done.values)
        if m:
            if not harvested:
                self._sizer.observe(m, done.elapsed)
            self._settle_all(span, 0, done.values, done.errors, done)
        skip = -1
        if done.stopped is not None:
            skip, failure = done.stopped
            self._settle_all(span, skip, [None], {0: failure}, done)
        if was_cut and done.stopped is None and m < len(span.items):
            # Stopped after its slow item: what it held goes to every worker, not one.
            self._hand_out(span.sub(m, len(span.items)))
        else:
            self._requeue(span, m, skip)

    def _settle_all(
        self,
        span: Span,
        start: int,
        values: list[Any],
        failures: dict[int, Failure] | None,
        done: Done,
    ) -> None:
        """Settle the tasks of ``span`` from ``start`` that ended with ``values``."""
        if span.positions is None:
            self._settle(Piece.of(span, start, values, failures, done))
            return
        # A batch of retries: each task in its own place.
        per_item = done.elapsed / len(done.values) if done.values else done.elapsed
        items, positions, attempt = span.items, span.positions, span.attempt
        worker, started = done.worker, done.started
        holes, filled = self._hole_of if self.fills_in_place else {}, 0
        # The batch as one piece (its seq means nothing): where its tasks ended, for
        # their outcomes. Not one piece per task: a batch can hold a thousand.
        batch = Piece(-1, items, values, None, attempt, worker, started, per_item)
        try:
            for i, value in enumerate(values):
                failure = failures.get(i) if failures else None
                j = start + i
                seq = positions[j]
                whole = holes.pop(seq, None) if failure is None and holes else None
                if whole is None:
                    self._settle(
                        Piece(
                            seq,
                            items[j : j + 1],
                            [value],
                            None if failure is None else {0: failure},
                            attempt,
                            worker,
                            started + j * per_item,
                            per_item,
                        )
                    )
                    continue
                # In order, a retried task that ended well: into its hole, as _settle
                # and _fill would put it, without their checks for a failure.
                k = seq - whole.seq
                whole.values[k] = value
                if whole.redone is None:
                    whole.redone = {}
                whole.redone[k] = (batch, j)
                whole.holes -= 1
                filled += 1
        finally:
            if filled:  # (also when a later task of the batch failed the run: they ended)
                self.tally.ok += filled
                self._buffered_items += filled
                for observer in self._observers:
                    observer.update(filled, self.tally)
                self._flush()

    def _requeue(self, span: Span, start: int, skip: int) -> None:
        """Items from ``start`` on (except ``skip``) did not end: run them again, first."""
        n = len(span.items)
        if start >= n:
            return
        runs = [(start, skip), (skip + 1, n)] if start <= skip < n else [(start, n)]
        for a, b in reversed(runs):
            if a < b:
                self._pending.appendleft(span.sub(a, b))

    def _settle(self, piece: Piece) -> None:
        failures = piece.failures
        tally = self.tally
        retry: list[int] = []
        if failures:
            attempt, retryable = piece.attempt, self._retryable
            final: list[Failure] = []
            for i, f in failures.items():  # (one pass: this runs once per failure)
                if retryable(f, attempt):
                    retry.append(i)
                else:
                    final.append(f)
            if retry:
                self._schedule_retries(piece.seq, piece.items, retry, attempt + 1)
            if final:
                tally.failed += len(final)
                tally.timed_out += sum(f.status == "timeout" for f in final)
                tally.crashed += sum(f.status == "crashed" for f in final)
                if self._fail_fast:
                    tally.ok += len(piece.values) - len(failures)
                    raise _raisable(final[0].error)
        tally.ok += len(piece.values) - len(failures or ())
        for observer in self._observers:
            observer.update(len(piece.values) - len(retry), tally)
        holes = self._hole_of
        if not retry:
            if holes and piece.seq in holes:
                self._fill(holes.pop(piece.seq), piece)
            else:
                self._emit(piece)
            return
        if piece.seq in holes:
            return  # a retried task tried again: its hole stays open in its first piece
        assert failures is not None  # what is retried failed
        if self._ordered:
            # In order, what follows a retried task waits for it anyway: the piece stays
            # whole, and each retried task fills its hole when it ends for good.
            seq = piece.seq
            if len(retry) == len(failures):
                failures = None  # (the usual case: every failure is retried)
            else:
                for i in retry:
                    del failures[i]
            for i in retry:
                holes[seq + i] = piece
            piece.failures = failures or None
            piece.holes = len(retry)
        else:
            # Out of order, the piece goes on at once; its retried tasks are gaps in it,
            # marked RETRIED (consumers pass over them), and end in pieces of their own.
            for i in retry:
                failures[i] = RETRIED
            piece.gaps = len(retry)
        self._emit(piece)

    def _emit(self, piece: Piece) -> None:
        if not self._ordered or (
            piece.seq == self._next_out and not self._buffer and not piece.holes
        ):
            self._out.append(piece)  # in order (or unordered): nothing waits, nothing weighed
            self._next_out += len(piece.items)
            return
        self._buffer[piece.seq] = piece
        self._weights[piece.seq] = weight = _weigh(piece.values)
        self._buffered_bytes += weight
        self._buffered_items += len(piece.items) - piece.holes  # open holes still run
        self._flush()

    def _flush(self) -> None:
        """Hand on the buffered pieces that are next in order and complete."""
        buffer = self._buffer
        while (ready := buffer.get(self._next_out)) is not None and not ready.holes:
            del buffer[ready.seq]
            self._buffered_bytes -= self._weights.pop(ready.seq)
            self._buffered_items -= len(ready.items)
            self._out.append(ready)
            self._next_out += len(ready.items)

    def _fill(self, piece: Piece, retried: Piece) -> None:
        """A retried task of ``piece`` ended for good, as ``retried`` (one task)."""
        i = retried.seq - piece.seq
        piece.values[i] = retried.values[0]
        if retried.failures:
            if piece.failures is None:
                piece.failures = {}
            piece.failures[i] = retried.failures[0]
        if piece.redone is None:
            piece.redone = {}
        piece.redone[i] = (retried, 0)
        piece.holes -= 1
        self._buffered_items += 1
        if not piece.holes and piece.seq == self._next_out:
            self._flush()

    def _retryable(self, failure: Failure, attempt: int) -> bool:
        if attempt > self.options.retries or not failure.retry:
            return False
        if failure.set_aside:  # the backend matched it to retry_on already
            return True
        if failure.status in ("timeout", "crashed"):
            return True
        return isinstance(failure.bare_error, self.options.retry_on)

    def _schedule_retries(
        self, seq: int, items: Sequence[Any], offsets: list[int], attempt: int
    ) -> None:
        """Queue the tasks at ``offsets`` of ``items`` (from ``seq``) for their attempt
        number ``attempt``, after a backoff each: uniform in ``[0, cap)``, the cap doubling
        per attempt ("full jitter").

        Time is cut into slots of ``_coalesce`` seconds, and the retries of one attempt
        number whose delays end in one slot go out together, in one call, when the first
        of them falls due: a thousand tiny retries must not cost a thousand calls, nor a
        thousand timers. No retry starts late, and none more than one slot before its
        delay ends, well inside the jitter of the delay; one alone starts right on time.
        """
        o = self.options
        cap = min(o.backoff_max, o.backoff * 2.0 ** (attempt - 2))
        if cap <= 0:
            self._pending.append(
                _retry_span([seq + i for i in offsets], [items[i] for i in offsets], attempt)
            )
            return
        if self._rng is None:
            import random

            self._rng = random.Random()
        now, draw, width = self.clock.now(), self._rng.random, self._coalesce
        slots = self._slots.get(attempt)
        if slots is None:
            slots = self._slots[attempt] = {}
        find = slots.get
        for i in offsets:
            due = now + draw() * cap
            number = int(due / width)
            slot = find(number)
            if slot is None:
                slot = slots[number] = _Slot(attempt, number, due)
                heapq.heappush(self._timers, (due, next(self._ids), slot))
            elif due < slot.due:  # due sooner than the slot was: an earlier timer for it
                slot.due = due
                heapq.heappush(self._timers, (due, next(self._ids), slot))
            slot.seqs.append(seq + i)
            slot.items.append(items[i])

    def _release_retries(self, now: float) -> None:
        """Queue the retries whose slots are due (_batch sends those due together in one
        call)."""
        timers, slots = self._timers, self._slots
        while timers and timers[0][0] <= now:
            slot = heapq.heappop(timers)[2]
            if slot.gone:
                continue  # a later timer of a slot that went out at its first
            slot.gone = True
            del slots[slot.attempt][slot.number]
            self._pending.append(_retry_span(slot.seqs, slot.items, slot.attempt))

    def _retry_due(self) -> float | None:
        """When the first retry waiting out its backoff falls due (None: none waits)."""
        timers = self._timers
        while timers and timers[0][2].gone:
            heapq.heappop(timers)
        return timers[0][0] if timers else None


def _positions(span: Span) -> list[int]:
    """Where each task of ``span`` belongs."""
    if span.positions is not None:
        return list(span.positions)
    return list(range(span.seq, span.seq + len(span.items)))


class _Slot:
    """The retries of one attempt number falling due in one slot of time."""

    __slots__ = ("attempt", "due", "gone", "items", "number", "seqs")

    def __init__(self, attempt: int, number: int, due: float) -> None:
        self.attempt, self.number = attempt, number
        self.due = due  # when its first retry falls due: the slot goes out then
        self.gone = False  # gone out (its later timers, if any, are void)
        self.seqs: list[int] = []
        self.items: list[Any] = []


def _retry_span(seqs: list[int], items: list[Any], attempt: int) -> Span:
    """Retries (each in its own place, ``seqs``) as one span: positions unless one task."""
    if len(seqs) == 1:
        return Span(seqs[0], items, attempt)
    return Span(seqs[0], items, attempt, seqs)


def _close_all(observers: list[Observer], report: Report) -> None:
    """Close ``observers`` and let them go (a function: its frame holds the last one)."""
    while observers:
        observers.pop().close(report)


def _weigh(values: list[Any]) -> int:
    """Bytes that ``values`` hold, estimated from a sample (one level into containers)."""
    n = len(values)
    if n == 0:
        return 0
    first = values[0]
    if type(first) in _SMALL and type(values[-1]) in _SMALL:
        return 64 + 40 * n  # numbers and None: no need to look closer
    sample = values[:: max(1, n // 4)][:4]
    total = sum(_size(v) for v in sample)
    return 64 + 8 * n + total * n // len(sample)


_SMALL = frozenset({int, float, bool, type(None)})


def _size(value: Any) -> int:
    size = sys.getsizeof(value, 64)
    if isinstance(value, list | tuple | set | frozenset | dict) and value:
        items = list(value.values() if isinstance(value, dict) else value)
        head = items[:8]
        size += sum(sys.getsizeof(v, 64) for v in head) * len(items) // len(head)
    return size


def _without_first(done: Done, k: int) -> Done:
    """``done`` without its first ``k`` items (they were settled when the call was cut)."""
    errors = {i - k: f for i, f in (done.errors or {}).items() if i >= k} or None
    stopped = None
    if done.stopped is not None:
        stopped = (done.stopped[0] - k, done.stopped[1])
    elapsed = done.elapsed * (len(done.values) - k) / len(done.values) if done.values else 0.0
    return Done(done.call_id, done.values[k:], errors, stopped, done.worker, done.started, elapsed)


def _raisable(error: BaseException) -> BaseException:
    return TaskRaisedStopIteration(error) if isinstance(error, StopIteration) else error


def _no_progress() -> Failure:
    error = TaskfanError(
        "the backend gave this call back without running any of its items; it fails "
        "here, counted as an attempt, instead of being queued again forever (a bug in "
        "taskfan: please report it)"
    )
    return describe_failure(error, "")


def _loop_running() -> bool:
    """Is an event loop running in this thread? (asyncio is not imported to find out.)"""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _turn() -> None:
    import asyncio

    await asyncio.sleep(0)


async def _until(event: Any, timeout: float | None) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds passed (None: no limit)."""
    import asyncio

    if timeout is None:
        await event.wait()
        return
    handle = asyncio.get_running_loop().call_later(max(0.0, timeout), event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()


class Feed:
    """Input from an async iterable, pulled by a task of its own on the loop.

    The engine takes what has arrived (:meth:`take`) and says how much more it has
    room for (:meth:`want`); the task pulls no further than that, so a slow consumer
    bounds what is read ahead, as the window does for plain iterables.
    """

    def __init__(self, source: Any) -> None:
        self.items: deque[Any] = deque()
        self.ended = False
        self.error: Exception | None = None
        self._source = source
        self._room = 0
        self._task: Any = None
        self._more: Any = None

    def start(self, notify: Callable[[], None]) -> None:
        import asyncio

        self._more = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pull(notify))

    async def _pull(self, notify: Callable[[], None]) -> None:
        iterator = aiter(self._source)
        try:
            while True:
                while len(self.items) >= self._room:
                    self._more.clear()
                    await self._more.wait()
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    break
                self.items.append(item)
                notify()
        except Exception as error:  # the input's own error: raised after the tasks taken
            self.error = error
        finally:
            self.ended = True
            notify()
            close = getattr(iterator, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    def want(self, room: int) -> None:
        self._room = room
        if len(self.items) < room and self._more is not None:
            self._more.set()

    def take(self, size: int) -> list[Any]:
        items = self.items
        return [items.popleft() for _ in range(min(size, len(items)))]

    def drained(self) -> bool:
        """Has the input ended, and everything it gave been taken?"""
        return self.ended and not self.items

    async def stop(self) -> None:
        """Stop pulling (the run ended, or was cancelled)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
