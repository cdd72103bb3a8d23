"""The thread backend: daemon worker threads fed from one queue.

Threads start on demand (a call of three items never starts 32 threads). Each pulls
whole calls from a shared queue, so a worker that finishes takes the next call at once,
without a round trip through the engine; the engine keeps a few calls queued ahead.

A thread cannot be stopped. When an item times out its thread is abandoned (it finishes
the item in the background and then exits, its result discarded) and a fresh thread
takes its place. Worker threads are daemons, so the interpreter never waits for them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any

from .._clock import Clock
from .._interrupts import leave_ctrl_c_to_the_main_thread
from ._base import (
    Backend,
    Call,
    Cut,
    Done,
    Failure,
    Outbox,
    Setup,
    capture,
    cut_at,
    run_items,
    where_stuck,
)

__all__ = ["ThreadBackend"]


class _Slot:
    """What one worker thread is running, shared with the engine for timeouts.

    ``lock`` makes "start the next item" and "abandon this thread" exclusive, so an item
    ends exactly once: reported by the worker, or stopped by the engine.
    """

    __slots__ = (
        "abandoned",
        "began",
        "call",
        "errors",
        "index",
        "lock",
        "name",
        "out",
        "run",
        "started",
        "stop",
        "t0",
        "thread",
    )

    def __init__(self, name: str) -> None:
        self.lock = threading.Lock()
        self.name = name
        self.call: Call | None = None
        self.out: list[Any] = []
        self.errors: dict[int, Failure] = {}
        self.index = -1
        self.started = 0.0
        self.began = 0.0  # clock time the timed call began
        self.t0 = 0.0
        self.abandoned = False
        self.thread: threading.Thread | None = None
        self.stop: list[int] = []  # a timed call's cut-off, set under ``lock``
        self.run: _Run | None = None  # the untimed call in progress


class _Run:
    """An untimed call in progress, published as one value so that a reader never mixes
    the state of two calls."""

    __slots__ = ("began", "call", "errors", "out", "started", "stop")

    def __init__(self, call: Call, began: float) -> None:
        self.call, self.began, self.started = call, began, time.time()
        self.out: list[Any] = []
        self.errors: dict[int, Failure] = {}
        self.stop: list[int] = []


class ThreadBackend(Backend):
    """Worker threads in this process."""

    name = "thread"
    chunk_seconds = 0.002
    calls_per_worker = 2

    def __init__(self, workers: int, clock: Clock) -> None:
        super().__init__(workers, clock)
        self._inbox: SimpleQueue[Call | None] = SimpleQueue()
        self._outbox = Outbox()
        self._slots: list[_Slot] = []  # one per thread started; abandoned ones leave it
        self._stops_sent = 0  # stop messages queued: each ends one thread of _slots
        self._to_start: deque[threading.Thread] = deque()
        self._starting_lock = threading.Lock()
        self._starter: threading.Thread | None = None
        self._outstanding = 0
        self._closing = False
        self._numbers = itertools.count(1)
        self._initializer: Callable[..., object] | None = None
        self._initargs: tuple[Any, ...] = ()

    def start(self, setup: Setup) -> None:
        self._initializer, self._initargs = setup.initializer, setup.initargs

    def submit(self, call: Call) -> None:
        self._outstanding += 1
        if self._live() < min(self.workers, self._outstanding):
            self._spawn()
        self._inbox.put(call)

    def _live(self) -> int:
        # Stops travel behind every call queued before them, and each ends exactly one
        # thread: the threads that will go on taking calls are those not yet stopped.
        return len(self._slots) - self._stops_sent

    def _send_stops(self, count: int) -> None:
        for _ in range(count):
            self._inbox.put(None)
        self._stops_sent += count

    def release_idle(self) -> None:
        self._send_stops(max(0, self._live() - self._outstanding))

    def wait(self, timeout: float | None) -> list[Done]:
        done = self._outbox.take(timeout)
        self._outstanding -= len(done)
        return done

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        self._outbox.wake_me(notify)

    def started_calls(self) -> list[tuple[int, float]]:
        found = []
        for slot in self._slots:
            run = slot.run
            if run is not None and not run.stop and len(run.call.items) > 1:
                found.append((run.call.id, run.began))
            call = slot.call
            if call is not None and not slot.stop and len(call.items) > 1:
                found.append((call.id, slot.began))
        return found

    def cut_short(self, call_id: int) -> Cut | None:
        for slot in self._slots:
            run = slot.run
            if run is not None and run.call.id == call_id:
                limit, ended = cut_at(run.out, run.stop)
                # errors are recorded before their item's place in out, so those of
                # the ended items are all there
                errors = {i: f for i, f in list(run.errors.items()) if i < ended} or None
                values = run.out[:ended]
                return Cut(limit, values, errors, slot.name, run.began, run.started)
            with slot.lock:  # a timed call: mark() takes the lock, so this is exact
                if slot.call is not None and slot.call.id == call_id and not slot.abandoned:
                    ended = max(slot.index, 0)
                    slot.stop.append(ended + 1)
                    errors = {i: f for i, f in slot.errors.items() if i < ended} or None
                    started = time.time() - (time.perf_counter() - slot.t0)
                    return Cut(ended + 1, slot.out[:ended], errors, slot.name, slot.began, started)
        return None

    def running(self) -> list[tuple[int, int, float]]:
        found = []
        for slot in self._slots:
            call, index = slot.call, slot.index
            if call is not None and index >= 0:
                found.append((call.id, index, slot.started))
        return found

    def stop(self, call_id: int, index: int, failure: Failure) -> bool:
        for slot in self._slots:
            done = self._abandon(slot, call_id, index, failure)
            if done is not None:
                self._slots.remove(slot)
                self._outbox.put(done)
                if self._live() < min(self.workers, self._outstanding):
                    self._spawn()
                return True
        return False

    def close(self, cancel: bool) -> None:
        if cancel:
            self._closing = True
            while True:
                try:
                    dropped = self._inbox.get_nowait()
                except Empty:
                    break
                if dropped is None:
                    self._stops_sent -= 1  # a stop sent earlier: its thread still waits
        self._send_stops(self._live())
        if not cancel:
            starter = self._starter
            if starter is not None:
                starter.join(timeout=5.0)
            # Every call has come back, so each thread is idle and exits at once (those
            # released early are gone already).
            for slot in self._slots:
                assert slot.thread is not None
                if slot.thread.ident is not None:
                    slot.thread.join(timeout=5.0)
        self._slots = []

    # --- worker side --------------------------------------------------------------------

    def _spawn(self) -> None:
        number = next(self._numbers)
        slot = _Slot(f"thread-{number}")
        slot.thread = threading.Thread(
            target=self._work, args=(slot,), name=f"taskfan-{slot.name}", daemon=True
        )
        self._slots.append(slot)
        if len(self._slots) == 1:
            slot.thread.start()  # the first at once: work begins without waiting
            return
        # Thread.start() waits for the new thread to run; a starter thread does that
        # waiting, so the engine keeps queueing calls and each thread begins work the
        # moment it exists (a pool that starts all its threads first idles meanwhile).
        with self._starting_lock:
            self._to_start.append(slot.thread)
            if self._starter is None:
                self._starter = threading.Thread(
                    target=self._start_threads, name="taskfan-starter", daemon=True
                )
                self._starter.start()

    def _start_threads(self) -> None:
        leave_ctrl_c_to_the_main_thread()  # and the threads it starts inherit that
        while True:
            with self._starting_lock:
                if not self._to_start or self._closing:
                    self._starter = None
                    return
                thread = self._to_start.popleft()
            thread.start()

    def _work(self, slot: _Slot) -> None:
        leave_ctrl_c_to_the_main_thread()
        broken = self._initialize()
        inbox = self._inbox
        while True:
            call = inbox.get()
            if call is None or self._closing:
                return
            if broken is not None:
                done: Done | None = _fail_all(call, broken, slot.name)
            elif call.timed:
                done = self._run_timed(call, slot)
            else:
                done = self._run_untimed(call, slot)
            if done is None or self._closing:
                return  # abandoned by a timeout, or the run was cancelled
            self._outbox.put(done)

    def _initialize(self) -> Failure | None:
        if self._initializer is None:
            return None
        try:
            self._initializer(*self._initargs)
        except BaseException as error:  # reported on every task instead
            failure = capture(error)
            failure.retry = False  # as in a process: another attempt meets the same worker
            return failure
        return None

    def _run_untimed(self, call: Call, slot: _Slot) -> Done:
        run = _Run(call, self.clock.now())
        slot.run = run
        try:
            t0 = time.perf_counter()
            run_items(call, run.out, run.errors, None, BaseException, stop=run.stop)
            elapsed = time.perf_counter() - t0
            return Done(call.id, run.out, run.errors or None, None, slot.name, run.started, elapsed)
        finally:
            slot.run = None

    def _run_timed(self, call: Call, slot: _Slot) -> Done | None:
        now = self.clock.now
        lock = slot.lock
        with lock:
            slot.call, slot.out, slot.errors, slot.index = call, [], {}, -1
            slot.stop = []
            slot.t0 = time.perf_counter()
            slot.began = now()
        started = time.time()

        def mark(index: int) -> bool:
            with lock:
                if slot.abandoned or (slot.stop and index >= slot.stop[-1]):
                    return False  # abandoned by a timeout, or cut short
                slot.index, slot.started = index, now()
            return True

        run_items(call, slot.out, slot.errors, mark, catch=BaseException)
        with lock:
            if slot.abandoned:
                return None
            slot.call, slot.index = None, -1
            elapsed = time.perf_counter() - slot.t0
            return Done(call.id, slot.out, slot.errors or None, None, slot.name, started, elapsed)

    @staticmethod
    def _abandon(slot: _Slot, call_id: int, index: int, failure: Failure) -> Done | None:
        with slot.lock:
            call = slot.call
            if slot.abandoned or call is None or call.id != call_id or slot.index != index:
                return None
            slot.abandoned = True
            where_stuck(slot.thread.ident if slot.thread else None, failure)
            values = slot.out[:index]
            errors = {i: f for i, f in dict(slot.errors).items() if i < index}
            elapsed = time.perf_counter() - slot.t0
        return Done(call_id, values, errors or None, (index, failure), slot.name, 0.0, elapsed)


def _fail_all(call: Call, failure: Failure, worker: str) -> Done:
    """The worker's initializer failed: every item it is given fails with that error."""
    errors = dict.fromkeys(range(len(call.items)), failure)
    return Done(call.id, [None] * len(call.items), errors, None, worker, time.time(), 0.0)
