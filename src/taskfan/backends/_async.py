"""The async backend: coroutines on an event loop, at most ``workers`` at once.

Each call is one task on the loop that runs its items one after the other (tiny
coroutines travel in chunks like tiny functions; slow ones go one per call), so the
engine's limit on calls in flight is the limit on coroutines running at once.

The loop is the caller's when the run is driven from one (``amap``/``aimap``: the
engine and this backend then live on the loop's thread). Otherwise (``map`` and the
other blocking fronts) the backend runs a loop of its own in a thread, and results
cross to the engine's thread through a queue, as with the thread backend.

A plain function given to this backend runs in worker threads, awaited by its task.
A timeout cancels the task's coroutine: it gets ``CancelledError`` at its ``await``,
its ``finally`` blocks run, and the item fails with ``TaskTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import Empty, SimpleQueue
from typing import Any

from .._clock import Clock
from .._options import is_async_callable
from ._base import (
    FULL,
    Backend,
    Call,
    Cut,
    Done,
    Failure,
    Outbox,
    Setup,
    call_one,
    capture,
    where_awaiting,
    where_stuck,
)

__all__ = ["AsyncBackend"]

#: how long cancelled coroutines get to run their cleanup before they are left alone
CANCEL_GRACE = 1.0


class AsyncBackend(Backend):
    """Coroutines on an event loop."""

    name = "async"
    chunk_seconds = 0.002
    seconds_per_worker = 0.00002  # a task switch costs microseconds, not a message
    # The engine keeps a call queued per running one; the backend starts it the moment
    # a coroutine ends (as a semaphore would), without a round trip through the engine.
    # At most ``workers`` calls run: that bounds the coroutines running at once.
    calls_per_worker = 2

    def __init__(self, workers: int, clock: Clock) -> None:
        super().__init__(workers, clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own: threading.Thread | None = None  # the thread of a loop of our own
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._runs: dict[int, _Run] = {}
        self._waiting: deque[Call] = deque()  # submitted, to start when a call ends
        self._last_fn: Any = None
        self._last_async = False
        self._closing = False
        self._lock = threading.Lock()  # makes "next item" and "stop this item" exclusive
        self._current: dict[int, tuple[int, float]] = {}  # timed call -> (item, started)
        self._stopped: dict[int, tuple[int, Failure]] = {}
        self._outbox = Outbox()
        self._threads: _DaemonThreads | None = None
        self._setup = Setup()
        self._broken: Failure | None = None
        self._initialized = False

    # --- engine side --------------------------------------------------------------------

    def start(self, setup: Setup) -> None:
        self._setup = setup
        try:
            self._loop = asyncio.get_running_loop()  # driven from a loop: run on it
        except RuntimeError:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._own = threading.Thread(
                target=self._serve, args=(loop,), name="taskfan-async-loop", daemon=True
            )
            self._own.start()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def submit(self, call: Call) -> None:
        assert self._loop is not None, "start() first"
        if self._own is None:
            self._begin(call)
        else:
            self._loop.call_soon_threadsafe(self._begin, call)

    def wait(self, timeout: float | None) -> list[Done]:
        return self._outbox.take(timeout)

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        self._outbox.wake_me(notify)

    def running(self) -> list[tuple[int, int, float]]:
        with self._lock:
            return [(call_id, index, t) for call_id, (index, t) in self._current.items()]

    def stop(self, call_id: int, index: int, failure: Failure) -> bool:
        with self._lock:
            current = self._current.get(call_id)
            if current is None or current[0] != index or call_id in self._stopped:
                return False
            self._stopped[call_id] = (index, failure)
            run = self._runs.get(call_id)
        if run is not None:
            if run.thread is not None and run.awaiting is None:
                where_stuck(run.thread, failure)
                if self._threads is not None:
                    self._threads.abandon(run.thread)  # it may never come back
            elif run.awaiting is not None:
                where_awaiting(run.awaiting, failure)
        task = self._tasks.get(call_id)
        if task is not None:
            self._on_loop(task.cancel)
        return True

    def started_calls(self) -> list[tuple[int, float]]:
        with self._lock:
            return [
                (call_id, run.began)
                for call_id, run in self._runs.items()
                if run.limit is None and len(run.call.items) > 1
            ]

    def cut_short(self, call_id: int) -> Cut | None:
        with self._lock:  # the task takes it before each item: the cut is exact
            run = self._runs.get(call_id)
            if run is None or run.limit is not None:
                return None
            ended = len(run.out)
            run.limit = max(run.index + 1, ended)
            errors = {i: f for i, f in run.errors.items() if i < ended} or None
            return Cut(run.limit, run.out[:ended], errors, "async", run.began, run.started)

    def close(self, cancel: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._own is None:
            # The caller's loop: cancel now; wait_closed() awaits the cleanup.
            if cancel:
                self._closing = True
                self._waiting.clear()
                for task in list(self._tasks.values()):
                    task.cancel()
            self._drop_threads(cancel)
            return
        future = asyncio.run_coroutine_threadsafe(self._shut(cancel), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=CANCEL_GRACE + 1.0)
        loop.call_soon_threadsafe(loop.stop)
        self._own.join(timeout=1.0)
        if not self._own.is_alive():
            loop.close()
            # Freed here, where the engine holds Ctrl+C, not once the call has returned:
            # a Ctrl+C that came in the loop's __del__ then would be dropped by CPython.
            self._loop = None
        self._own = None

    async def wait_closed(self) -> None:
        if self._own is None and self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=CANCEL_GRACE)

    def _on_loop(self, fn: Callable[[], object]) -> None:
        assert self._loop is not None
        if self._own is None:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    async def _shut(self, cancel: bool) -> None:
        if cancel:
            self._closing = True
            self._waiting.clear()
        tasks = list(self._tasks.values())
        if cancel:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        loop = asyncio.get_running_loop()
        await loop.shutdown_asyncgens()
        self._drop_threads(cancel)

    def _drop_threads(self, cancel: bool) -> None:
        # After a normal end every thread is idle and exits at once: wait for that.
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=not cancel, cancel_futures=True)

    # --- loop side ----------------------------------------------------------------------

    def _begin(self, call: Call) -> None:
        if len(self._tasks) >= self.workers:
            self._waiting.append(call)
            return
        assert self._loop is not None
        task = self._loop.create_task(self._run(call))
        self._tasks[call.id] = task

    def _post(self, done: Done) -> None:
        self._tasks.pop(done.call_id, None)
        if self._waiting and not self._closing:
            self._begin(self._waiting.popleft())
        self._outbox.put(done)

    async def _run(self, call: Call) -> None:
        run = _Run(call, self.clock.now())
        self._runs[call.id] = run
        out, errors = run.out, run.errors
        stopped: tuple[int, Failure] | None = None
        broken = self._broken if self._initialized else await self._initialize()
        plain = call.mode != FULL and not self._is_async(call.fn)
        lock = self._lock
        try:
            for index, item in enumerate(call.items):
                with lock:
                    if run.limit is not None and index >= run.limit:
                        break  # cut short: the rest runs elsewhere
                    run.index = index
                    if call.timed:
                        self._current[call.id] = (index, self.clock.now())
                value: Any = None
                failure: Failure | None = broken
                if failure is None:
                    try:
                        value = await self._invoke(call, item, plain, run)
                    except asyncio.CancelledError:
                        if call.id not in self._stopped:
                            raise  # the run is cancelled: this call ends with it
                    except BaseException as error:  # a task's own, whatever its kind
                        failure = capture(_unwrapped(error))
                with lock:
                    stop = self._stopped.pop(call.id, None)
                    if stop is not None:  # its timeout passed: the engine has its end
                        stopped = stop
                        break
                    if failure is not None:
                        errors[len(out)] = failure
                        value = None
                    out.append(value)
        finally:
            with lock:
                self._current.pop(call.id, None)
                self._stopped.pop(call.id, None)
                self._runs.pop(call.id, None)
        elapsed = time.perf_counter() - run.t0
        self._post(Done(call.id, out, errors or None, stopped, "async", run.started, elapsed))

    def _is_async(self, fn: Any) -> bool:
        # Asked for every call: the answer for the run's function is kept.
        if fn is self._last_fn:
            return self._last_async
        self._last_fn, self._last_async = fn, is_async_callable(fn)
        return self._last_async

    async def _invoke(self, call: Call, item: Any, plain: bool, run: _Run) -> Any:
        if call.mode == FULL:
            plain = not self._is_async(item[0])
        if not plain:
            coroutine = call_one(call.mode, call.fn, item)
            run.awaiting = coroutine
            return await coroutine
        if self._threads is None:
            self._threads = _DaemonThreads(self.workers)
        loop = asyncio.get_running_loop()

        def in_thread() -> Any:
            run.thread = threading.get_ident()
            return call_one(call.mode, call.fn, item)

        return await loop.run_in_executor(self._threads, in_thread)

    async def _initialize(self) -> Failure | None:
        """Run the initializer once, before the first task (on the loop)."""
        if not self._initialized:
            self._initialized = True
            initializer = self._setup.initializer
            if initializer is not None:
                try:
                    result = initializer(*self._setup.initargs)
                    if asyncio.iscoroutine(result):
                        await result
                except BaseException as error:  # reported on every task instead
                    self._broken = capture(error)
                    self._broken.retry = False
        return self._broken


class _Run:
    """A call in progress: what a cut or a timeout may look at (under the lock)."""

    __slots__ = (
        "awaiting",
        "began",
        "call",
        "errors",
        "index",
        "limit",
        "out",
        "started",
        "t0",
        "thread",
    )

    def __init__(self, call: Call, began: float) -> None:
        self.call, self.began = call, began
        self.started, self.t0 = time.time(), time.perf_counter()
        self.out: list[Any] = []
        self.errors: dict[int, Failure] = {}
        self.index = -1
        self.limit: int | None = None
        self.awaiting: Any = None  # the coroutine of the item running, if one
        self.thread: int | None = None  # the thread running a plain function's item


def _unwrapped(error: BaseException) -> BaseException:
    """A coroutine's StopIteration reaches us as the RuntimeError of PEP 479 (and a
    thread's as our carrier): the task's own error is the StopIteration."""
    cause = error.__cause__
    stop = StopIteration | StopAsyncIteration
    if type(error) is RuntimeError and isinstance(cause, stop) and "raised Stop" in str(error):
        return cause
    if isinstance(error, _Carried):
        return error.error
    return error


class _Carried(Exception):
    """A StopIteration from a thread: asyncio's futures refuse to hold one."""

    def __init__(self, error: BaseException) -> None:
        super().__init__("a task raised StopIteration")
        self.error = error


class _DaemonThreads(Executor):
    """Worker threads for plain functions, started on demand, that never hold up the
    interpreter's exit: a task stuck in a thread is abandoned, as with the thread
    backend (``ThreadPoolExecutor`` joins its threads at exit, so one stuck task would
    make Ctrl+C hang)."""

    def __init__(self, most: int) -> None:
        self._most = most
        self._jobs: SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False
        self._abandoned: set[int] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the async backend's threads are closed")
            if self._idle == 0 and len(self._threads) < self._most:
                thread = threading.Thread(
                    target=self._work, name="taskfan-async-thread", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except StopIteration as error:  # a Future cannot hold it: carry it
                    future.set_exception(_Carried(error))
                except BaseException as error:  # the task's: its awaiting coroutine gets it
                    future.set_exception(error)
            del job, future, fn
            with self._lock:
                self._idle += 1

    def abandon(self, ident: int) -> None:
        """Thread ``ident`` is stuck in a task that timed out: one more may start
        meanwhile, and shutting down does not wait for it."""
        with self._lock:
            self._most += 1
            self._abandoned.add(ident)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while cancel_futures:
            try:
                job = self._jobs.get_nowait()
            except Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                if thread.ident not in self._abandoned:
                    thread.join()
