"""The process backend: worker processes, each with its own pipe, watched all at once.

The engine's thread is the coordinator: :meth:`ProcessBackend.wait` blocks on every
worker's pipe and every worker's process sentinel at once, so a result and a death are
both seen the moment they happen, with no helper thread and no polling.

- A worker that dies fails only the item it was running (its index is in the shared
  slot), with :class:`WorkerCrashed`; calls it held but had not started go to the
  others; a fresh worker takes its place.
- A timeout kills the worker running the late item, then the same.
- A call goes to an idle worker, or one call ahead to a busy worker if its message is
  small: such a message always fits in the pipe, so the coordinator never blocks on a
  send while a worker blocks on sending its reply.
- Functions travel once per worker, pickled with cloudpickle; arguments and results with
  pickle, falling back to cloudpickle.

Start method: see ``taskfan._start``.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Pipe
from multiprocessing.connection import wait as wait_for
from typing import Any

from .._clock import Clock
from .._errors import TaskTraceback, WorkerCrashed
from .._interrupts import ctrl_c_deferred
from .._pickling import dumps, dumps_by_value
from .._start import importable, own_server, start_method, started_by_server, starting
from ._base import Backend, Call, Cut, Done, Failure, Part, Setup, describe_failure
from ._server import ServerChild, SharedSlots, fork_worker, shut_down
from ._worker import (
    BY_VALUE,
    CALL_ID,
    CUT_NOTICE,
    FUNCTION,
    INDEX,
    ONE_BY_ONE,
    READY,
    RUNNING_UNMARKED,
    SEPARATE,
    SHARED,
    SLOT_FIELDS,
    STARTED,
    STARTING,
    STATE,
    STOP,
    TIMED,
    UNMARKED,
    WorkerSpec,
    call_header,
    decode_cut,
    decode_reply,
    unrebuildable_result,
    worker_main,
)

__all__ = ["ProcessBackend"]

#: Calls of at least UNMARKED_FROM untimed items measured at UNMARKED_UPTO seconds each
#: or less run without a mark per item: for tasks this tiny the mark costs up to a third
#: of the run. The price: a worker that dies in such a call is not known to have died on
#: which item, so the call is sent again, marked, and the item that killed it is charged
#: on its second death (it ran twice; its call mates ran twice anyway, as their results
#: died with the worker).
UNMARKED_FROM = 256
UNMARKED_UPTO = 50e-6

#: a message this small always fits in a pipe's buffer: safe to send to a busy worker
PREFETCH_BYTES = 64 * 1024
#: workers in a row that die with no item to charge the death to, before the run gives up
FRUITLESS_DEATHS = 3


def dumps_callable(payload: Any, fn: Callable[..., Any]) -> bytes:
    """Pickle ``payload`` (``fn``, or something holding it) for a worker process.

    By reference where the worker can import it, so that it runs with the worker's own
    module globals: an initializer that stores a connection in a global of the script is
    then seen by the tasks. cloudpickle sends functions of ``__main__`` by value, with a
    copy of their globals taken here, which silently breaks that pattern. By value
    (cloudpickle) only for what cannot be imported: lambdas, closures, nested functions,
    and the functions of an interactive session.
    """
    if importable(fn):
        try:
            return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
    return dumps_by_value(payload)


class _Sent:
    """A call on its way to (or held by) a worker: the call and its encoded body."""

    __slots__ = ("body", "call", "cut", "flags", "fn_id", "limit")

    def __init__(self, call: Call, body: bytes, fn_id: int, flags: int) -> None:
        self.call, self.body, self.fn_id, self.flags = call, body, fn_id, flags
        self.limit: int | None = None  # items the worker may run (max_tasks_per_worker)
        self.cut: int | None = None  # the worker runs none from here on (a CUT notice)

    @property
    def count(self) -> int:
        """Items the worker is asked to run."""
        return len(self.call.items) if self.limit is None else self.limit


class _Worker:
    __slots__ = (
        "conn",
        "control",
        "dump",
        "functions",
        "items",
        "name",
        "outstanding",
        "process",
        "shared",
        "since",
        "slot",
    )

    def __init__(self, process: Any, conn: Any, dump: Any, slot: int, name: str) -> None:
        self.process, self.conn, self.dump, self.slot, self.name = process, conn, dump, slot, name
        self.control: Any = None  # where cut requests go (see _worker._serve_cuts)
        self.since = 0.0  # when its first outstanding call became the one it runs
        self.outstanding: deque[_Sent] = deque()
        self.functions: set[int] = set()
        self.items = 0
        self.shared = False  # it has the job's input (forked after the job began)


_open_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()


@atexit.register
def _stop_every_worker() -> None:
    # Runs before multiprocessing's own exit hook (registered earlier), which would
    # otherwise wait for our (non-daemon) workers.
    for backend in list(_open_backends):
        backend.close(cancel=True)
    shut_down()  # the fork server (see _server), as its socket must not be left to the GC


class ProcessBackend(Backend):
    """Worker processes with crash isolation, killing timeouts and worker recycling."""

    name = "process"
    chunk_seconds = 0.02
    seconds_per_worker = 0.002
    calls_per_worker = 2

    def __init__(self, workers: int, clock: Clock) -> None:
        super().__init__(workers, clock)
        self._queue: deque[_Sent] = deque()
        self._workers: list[_Worker] = []
        self._ready: list[Done] = []
        self._watcher: _Watcher | None = None
        self._free = list(range(workers))[::-1]
        self._numbers = itertools.count(1)
        self._fn_ids = itertools.count()
        self._fn_cache: dict[int, tuple[Callable[..., Any], int]] = {}
        self._retried_blobs: dict[tuple[type[BaseException], ...], bytes | None] = {}
        self._fn_blobs: dict[int, bytes] = {}
        self._fruitless_deaths = 0
        self._init_blob: bytes | None = None
        self._max_tasks: int | None = None
        self._shared: Any = None  # the job's input, when workers are forked (see SHARED)
        self._slots: Any = None
        self._marks: memoryview | None = None
        self._lifeline: Any = None
        self._lifeline_writer: Any = None
        self._closed = False
        self._graveyard: list[_Worker] = []  # ended workers, freed under a held Ctrl+C

    # --- the Backend interface ---------------------------------------------------------------

    def start(self, setup: Setup) -> None:
        if setup.initializer is not None:
            try:
                init = (setup.initializer, setup.initargs)
                self._init_blob = dumps_callable(init, setup.initializer)
            except Exception as error:
                raise TypeError(_cannot_send("initializer", setup.initializer, error)) from error
        self._max_tasks = setup.max_tasks_per_worker
        size = self.workers * SLOT_FIELDS * 8
        method = start_method()
        # Forked workers have the job's input already: calls name their items by place.
        self._shared = setup.shared if method == "fork" else None
        self.takes_parts = self._shared is not None
        if own_server(method):
            self._slots = SharedSlots(size)  # (the fork server hands it to each worker)
        else:
            # Shared memory that a spawned child can map too (as RawArray's is, which
            # only adds ctypes: about 2 ms more to import)
            from multiprocessing.heap import BufferWrapper

            self._slots = BufferWrapper(size)
        memory = self._slots.create_memoryview()
        memory[:] = bytes(len(memory))  # a reused block holds old marks
        self._marks = memory.cast("q")
        self._lifeline, self._lifeline_writer = multiprocessing.Pipe(duplex=False)
        _open_backends.add(self)

    def submit(self, call: Call) -> None:
        fn_id = self._function_id(call.fn) if call.fn is not None else -1
        flags = TIMED if call.timed else UNMARKED if _tiny(call) else 0
        flags = self._by_place(call, flags)
        body = self._encode(call, fn_id, flags)
        if isinstance(body, Done):
            self._ready.append(body)
            return
        self._queue.append(_Sent(call, body, fn_id, flags))
        self._staff()
        self._assign()

    def wait(self, timeout: float | None) -> list[Done]:
        if self._graveyard:
            with ctrl_c_deferred():  # (see _spawn)
                self._graveyard.clear()
        if self._ready:
            timeout = 0
        owners: dict[Any, _Worker] = {}
        for worker in self._workers:
            owners[worker.conn] = worker
            owners[worker.process.sentinel] = worker
        if owners:
            ready = wait_for(list(owners), timeout)
            exits = []
            for handle in ready:
                worker = owners[handle]
                if handle is worker.conn:
                    self._drain(worker)
                else:
                    exits.append(worker)
            for worker in exits:
                self._on_exit(worker)
        self._staff()
        self._assign()
        done, self._ready = self._ready, []
        return done

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        if notify is None:
            watcher, self._watcher = self._watcher, None
            if watcher is not None:
                watcher.stop()  # returns once it looks at no pipe any more
            return
        if self._ready:
            notify()
            return
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        self._watcher = _Watcher(handles, notify)

    def started_calls(self) -> list[tuple[int, float]]:
        found = []
        for worker in self._workers:
            if worker.outstanding and worker.outstanding[0].count > 1:
                found.append((worker.outstanding[0].call.id, worker.since))
        return found

    def cut_short(self, call_id: int) -> Cut | None:
        # The worker's own cut thread decides, exactly, where the task loop stops; its
        # CUT notice comes back through wait(), ahead of the call's reply. Calls sent
        # ahead to that worker wait behind the slow one: they are recalled too.
        for worker in self._workers:
            if worker.outstanding and worker.outstanding[0].call.id == call_id:
                for sent in worker.outstanding:
                    _send_quietly(worker.control, sent.call.id.to_bytes(8, "little", signed=True))
        return None

    def running(self) -> list[tuple[int, int, float]]:
        marks = self._marks
        found = []
        for worker in self._workers:
            if not worker.outstanding or marks is None:
                continue
            call = worker.outstanding[0].call
            base = worker.slot * SLOT_FIELDS
            if call.timed and marks[base + CALL_ID] == call.id:
                index = marks[base + INDEX]  # read before the start time: see _worker
                started = marks[base + STARTED]
                if index >= 0 and started > 0:
                    found.append((call.id, index, started / 1e9))
        return found

    def stop(self, call_id: int, index: int, failure: Failure) -> bool:
        marks = self._marks
        for worker in self._workers:
            if not worker.outstanding or worker.outstanding[0].call.id != call_id:
                continue
            base = worker.slot * SLOT_FIELDS
            if marks is None or marks[base + CALL_ID] != call_id or marks[base + INDEX] != index:
                return False
            _attach_stack(worker, failure)
            _kill(worker.process)
            self._retire(worker)
            worker.outstanding.popleft()
            self._ready.append(Done(call_id, [], None, (index, failure), worker.name))
            self._requeue(worker)
            self._staff()
            self._assign()
            return True
        return False

    def close(self, cancel: bool) -> None:
        # Safe to call again (the exit hook does, after an interrupted close): it works
        # on what is still open rather than on a flag set before the work was done.
        # (What it drops dies in there too, its finalizers held from Ctrl+C: see _spawn.)
        with ctrl_c_deferred():
            self._close(cancel)
            self._graveyard.clear()

    def _close(self, cancel: bool) -> None:
        self._closed = True  # no new worker from here on
        self.wake_me(None)
        workers = list(self._workers)
        for worker in workers:
            if cancel:
                _kill_tree(worker.process)
            else:
                _send_quietly(worker.conn, STOP)
        if self._lifeline_writer is not None:
            self._lifeline_writer.close()  # any worker still alive sees its parent go
        deadline = time.monotonic() + (1.0 if cancel else 5.0)
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                _kill(worker.process)
            _release(worker)
            self._workers.remove(worker)
        if self._lifeline is not None:
            self._lifeline.close()
        # Dropped here, under the held Ctrl+C, rather than with this object after the run
        self._lifeline = self._lifeline_writer = None
        slots, self._marks, self._slots = self._slots, None, None
        if isinstance(slots, SharedSlots):
            with contextlib.suppress(BufferError):  # a view still held: freed with it
                slots.close()
        self._queue.clear()
        _open_backends.discard(self)

    # --- sending ------------------------------------------------------------------------------

    def _function_id(self, fn: Callable[..., Any]) -> int:
        cached = self._fn_cache.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1]
        try:
            blob = dumps_callable(fn, fn)
        except Exception as error:
            raise TypeError(_cannot_send("function", fn, error)) from error
        fn_id = next(self._fn_ids)
        self._fn_cache[id(fn)] = (fn, fn_id)
        self._fn_blobs[fn_id] = FUNCTION + fn_id.to_bytes(8, "little", signed=True) + blob
        return fn_id

    def _retried_blob(self, retried: tuple[type[BaseException], ...]) -> bytes | None:
        """``retried`` pickled for the workers (once), or None if it cannot be: they
        then keep every traceback, as they would without retries."""
        if not retried:
            return None
        if retried not in self._retried_blobs:
            try:
                blob: bytes | None = pickle.dumps(retried, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                blob = None
            self._retried_blobs[retried] = blob
        return self._retried_blobs[retried]

    def _by_place(self, call: Call, flags: int) -> int:
        """``flags``, with SHARED if the call's items can travel as their place."""
        items = call.items
        if (
            type(items) is Part
            and items.seq is self._shared
            and not flags & (ONE_BY_ONE | BY_VALUE)
        ):
            return flags | SHARED
        return flags & ~SHARED

    def _encode(self, call: Call, fn_id: int, flags: int) -> bytes | Done:
        items: Any = call.items
        if flags & SHARED:
            items = (items.start, items.stop)
        elif type(items) is Part:
            items = items.seq[items.start : items.stop]
        if flags & ONE_BY_ONE:
            items = [dumps(item) for item in items]
        body = (fn_id, call.mode, items, flags, self._retried_blob(call.retried))
        try:
            return dumps(body)
        except Exception:
            pass
        for index, item in enumerate(call.items):
            try:
                dumps_by_value(item)
            except Exception as error:
                return Done(call.id, [], None, (index, _unsendable_arguments(error)), "parent")
        return Done(call.id, [], None, (0, _unsendable_arguments(TypeError("unknown"))), "parent")

    def _assign(self) -> None:
        """Give queued calls to idle workers, then one call ahead to busy ones."""
        for depth in range(self.calls_per_worker):
            for worker in self._workers:
                if not self._queue:
                    return
                if len(worker.outstanding) == depth and self._fits(worker, depth):
                    self._send(worker, self._queue.popleft())

    def _fits(self, worker: _Worker, depth: int) -> bool:
        if self._max_tasks is not None and worker.items >= self._max_tasks:
            return False  # it retires once its calls are done
        if depth == 0:
            return True
        # A call sent ahead waits behind the one running: only where that one is known
        # to be short and is not running late. Otherwise one slow task would hold back
        # the call queued behind it while other workers go idle.
        running = worker.outstanding[0].call.expected
        if running is None or self.clock.now() - worker.since > running:
            return False
        head = self._queue[0]
        size = len(head.body)
        if head.fn_id >= 0 and head.fn_id not in worker.functions:
            size += len(self._fn_blobs[head.fn_id])
        return size <= PREFETCH_BYTES

    def _send(self, worker: _Worker, sent: _Sent) -> None:
        if sent.flags & SHARED and not worker.shared:
            # A worker that was not forked (the program had started a thread meanwhile)
            # has no copy of the input: the items themselves go, now and if sent again.
            sent.flags = (sent.flags & ~SHARED) | BY_VALUE
            body = self._encode(sent.call, sent.fn_id, sent.flags)
            if isinstance(body, Done):
                self._ready.append(body)
                return
            sent.body = body
        count = len(sent.call.items)
        sent.limit = None
        if self._max_tasks is not None and worker.items + count > self._max_tasks:
            sent.limit = self._max_tasks - worker.items
        worker.items += count if sent.limit is None else sent.limit
        if not worker.outstanding:
            worker.since = self.clock.now()
        worker.outstanding.append(sent)
        try:
            if sent.fn_id >= 0 and sent.fn_id not in worker.functions:
                worker.conn.send_bytes(self._fn_blobs[sent.fn_id])
                worker.functions.add(sent.fn_id)
            worker.conn.send_bytes(call_header(sent.call.id, sent.limit) + sent.body)
        except OSError:
            pass  # the worker died: its sentinel tells, and _on_exit hands the call on

    # --- receiving ------------------------------------------------------------------------

    def _drain(self, worker: _Worker) -> None:
        conn = worker.conn
        try:
            while worker.outstanding and conn.poll():
                message = conn.recv_bytes()
                if message[:1] == CUT_NOTICE:
                    self._on_cut(worker, message)
                    continue
                sent = worker.outstanding.popleft()
                worker.since = self.clock.now()
                if self._max_tasks is None:  # (else its count of items waits for the reply)
                    # Its next call goes out before this reply is read: rebuilding a
                    # large reply takes as long as running a chunk, and it would idle.
                    self._assign()
                self._on_reply(worker, sent, message)
        except (EOFError, OSError):
            pass  # it died mid-reply: the sentinel is ready too

    def _on_reply(self, worker: _Worker, sent: _Sent, message: bytes) -> None:
        self._fruitless_deaths = 0
        try:
            call_id, values, failures, started, elapsed = decode_reply(
                message, bool(sent.flags & SEPARATE)
            )
        except Exception as error:
            # A result that cannot be rebuilt here spoils the pickle of the whole reply.
            if sent.count > 1 and not sent.flags & SEPARATE:
                self._again(sent, SEPARATE)  # run again, each result pickled on its own
                return
            failure = unrebuildable_result(error)
            self._ready.append(Done(sent.call.id, [None], {0: failure}, None, worker.name))
            return
        if values is None:  # the worker could not rebuild the arguments
            worker.items -= sent.count  # it ran none of them
            if sent.flags & SHARED:  # nor pickle its part of the input: send the items
                self._again(sent, BY_VALUE)  # (_by_place drops SHARED)
                return
            kept = len(sent.call.items) if sent.cut is None else sent.cut
            if kept > 1 and not sent.flags & ONE_BY_ONE:
                self._again(sent, ONE_BY_ONE)  # only the bad item will fail
                return
            assert failures is not None
            values, failures = [None], {0: failures[0]}
        worker.items -= sent.count - len(values)  # cut short: it ran fewer than it was sent
        self._ready.append(Done(call_id, values, failures, None, worker.name, started, elapsed))

    def _on_cut(self, worker: _Worker, message: bytes) -> None:
        try:
            call_id, limit, values, failures = decode_cut(message)
        except Exception:  # the results come again with the reply; the limit matters
            call_id, limit, values, failures = _cut_limit_only(message)
        for sent in worker.outstanding:
            if sent.call.id == call_id:
                sent.cut = limit
                cut = Cut(limit, values, failures, worker.name, worker.since, time.time())
                self._ready.append(Done(call_id, [], None, None, worker.name, cut=cut))

    def _again(self, sent: _Sent, flag: int, drop: int = 0) -> None:
        """Send ``sent`` again, first, with ``flag`` added and ``drop`` cleared: its items
        or results pickled one by one, or its items marked one by one."""
        flags = (sent.flags | flag) & ~drop
        call = sent.call
        if sent.cut is not None:  # items past the cut went to other workers
            call = call.with_items(call.items[: sent.cut])
        flags = self._by_place(call, flags)
        body = self._encode(call, sent.fn_id, flags)
        if isinstance(body, Done):
            self._ready.append(body)
        else:
            self._queue.appendleft(_Sent(call, body, sent.fn_id, flags))

    def _on_exit(self, worker: _Worker) -> None:
        self._drain(worker)
        worker.process.join(1.0)
        _kill_tree(worker.process)  # what its task started dies with it
        self._retire(worker)
        assert self._marks is not None
        base = worker.slot * SLOT_FIELDS
        state, call_id, index = (self._marks[base + f] for f in (STATE, CALL_ID, INDEX))
        if not worker.outstanding:
            return  # recycled after max_tasks_per_worker, or died idle: nothing lost
        front = worker.outstanding[0]
        if state == READY and call_id == front.call.id and index == RUNNING_UNMARKED:
            # It died on one of the items of an unmarked call: which one is learnt by
            # running the call again, marked; that item's next death is charged to it.
            self._fruitless_deaths = 0
            worker.outstanding.popleft()
            self._again(front, 0, drop=UNMARKED)
        elif state == READY and call_id == front.call.id:
            self._fruitless_deaths = 0  # the item it was running pays for the death
            worker.outstanding.popleft()
            self._ready.append(
                Done(front.call.id, [], None, (max(index, 0), self._crash(worker)), worker.name)
            )
        else:
            # It died before it could take the call (at start-up, or killed from outside
            # between calls): nothing to charge the death to, so its calls go back
            # uncounted, but never forever.
            self._fruitless_deaths += 1
            if self._fruitless_deaths >= FRUITLESS_DEATHS:
                hint = _STARTUP_HINT if state != READY else _IDLE_HINT
                raise WorkerCrashed(worker.process.exitcode, hint)
        self._requeue(worker)

    def _crash(self, worker: _Worker) -> Failure:
        code = worker.process.exitcode
        error = WorkerCrashed(code, f"{worker.name}, pid {worker.process.pid}")
        text = f"{type(error).__module__}.{type(error).__qualname__}: {error}\n"
        return describe_failure(error, text, "crashed")

    def _requeue(self, worker: _Worker) -> None:
        """Calls a dead worker held but never started go first to the others.

        A call that worker had given back by a CUT notice is not sent again: its items
        already went to the other workers. It ends here, with nothing run.
        """
        again = []
        for sent in worker.outstanding:
            if sent.cut == 0:
                self._ready.append(Done(sent.call.id, [], None, None, worker.name))
            else:
                again.append(sent)
        self._queue.extendleft(reversed(again))
        worker.outstanding.clear()

    def _retire(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        self._free.append(worker.slot)
        _release(worker)
        self._graveyard.append(worker)  # freed by the next wait or close (see _spawn)

    # --- workers ------------------------------------------------------------------------

    def _staff(self) -> None:
        """Start workers while there is work for more of them."""
        demand = len(self._queue) + sum(len(w.outstanding) for w in self._workers)
        while len(self._workers) < min(self.workers, demand) and self._free and not self._closed:
            self._spawn()

    def _spawn(self) -> None:
        # A Ctrl+C is held while a worker starts, and while the objects of the workers
        # that ended are freed, for the same reason: CPython drops a KeyboardInterrupt
        # raised where Python code runs as a side effect, printing "Exception ignored".
        # A fork runs such code (its after-hooks: logging's lock release, for one), and
        # so does freeing a Connection (its __del__) or a process (its Popen's Finalize).
        # A Ctrl+C that came then was lost: the run went on, deaf to it, until a second
        # one. Held here, it is raised when the block ends. So that what a start drops
        # dies inside, it is a method of its own; ended workers wait in the graveyard,
        # freed at the start of the next wait (when no caller's frame holds one any
        # more) or by close, each time with Ctrl+C held too.
        with ctrl_c_deferred():
            self._workers.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        assert self._marks is not None
        slot = self._free.pop()
        base = slot * SLOT_FIELDS
        for field, value in ((STATE, STARTING), (CALL_ID, -1), (INDEX, -1), (STARTED, 0)):
            self._marks[base + field] = value
        name = f"process-{next(self._numbers)}"
        conn, child_conn = Pipe(duplex=True)
        dump, child_dump = Pipe(duplex=False)
        child_control, control = Pipe(duplex=False)
        ends = (child_conn, child_dump, child_control)  # the worker's: theirs once it starts
        shared = False
        try:
            if isinstance(self._slots, SharedSlots):
                process = self._fork_from_server(slot, name, ends)
            else:
                process, shared = self._start_process(slot, name, ends)
        finally:
            for end in ends:
                end.close()
        worker = _Worker(process, conn, dump, slot, name)
        worker.control = control
        worker.shared = shared
        return worker

    def _fork_from_server(self, slot: int, name: str, ends: tuple[Any, Any, Any]) -> Any:
        """A worker forked by taskfan's fork server (see _server), on the pipe ends ``ends``."""
        assert isinstance(self._slots, SharedSlots)
        child_conn, child_dump, child_control = ends
        fds = {
            "conn": child_conn.fileno(),
            "dump": child_dump.fileno(),
            "control": child_control.fileno(),
            "lifeline": self._lifeline.fileno(),
            "slots": self._slots.fd,
        }
        start = (slot, self._init_blob, self._max_tasks, self._slots.size)
        process = fork_worker(fds, start, f"taskfan-{name}", by_value="cloudpickle" in sys.modules)
        started_by_server()
        return process

    def _start_process(self, slot: int, name: str, ends: tuple[Any, Any, Any]) -> tuple[Any, bool]:
        """A worker started by multiprocessing (fork, spawn), on the pipe ends ``ends``;
        and whether it has the job's input (forked: see SHARED)."""
        method = start_method()
        context: Any = multiprocessing.get_context(method)
        child_conn, child_dump, child_control = ends
        # (a forked child has its parent's memory: the input is not copied, nor pickled)
        shared = self._shared if method == "fork" else None
        spec = WorkerSpec(
            child_conn,
            self._lifeline,
            self._lifeline_writer,
            self._slots,
            slot,
            self._init_blob,
            self._max_tasks,
            child_dump,
            child_control,
            shared,
        )
        process = context.Process(target=worker_main, name=f"taskfan-{name}", args=(spec,))
        with starting(method):
            process.start()
        return process, shared is not None


_IDLE_HINT = (
    "worker processes keep dying between tasks, before taking the next one: something "
    "outside taskfan is killing them (the OOM killer, a process monitor)"
)
_STARTUP_HINT = (
    "worker processes keep dying before they can run a task: check that initializer= "
    "works and that the task's module imports cleanly in a fresh process"
)


def _attach_stack(worker: _Worker, failure: Failure) -> None:
    """Ask a worker about to be killed for its stacks, and attach the task's to ``failure``."""
    if not hasattr(signal, "SIGUSR1"):  # pragma: no cover - Windows
        return
    try:
        os.kill(worker.process.pid, signal.SIGUSR1)
        if not worker.dump.poll(0.25):
            return
        chunks = [os.read(worker.dump.fileno(), 1 << 16)]
        while worker.dump.poll(0.02):
            chunks.append(os.read(worker.dump.fileno(), 1 << 16))
    except OSError:
        return
    stack = _task_frames(b"".join(chunks).decode(errors="replace"))
    if stack:
        text = (
            "Where the task was when its timeout passed (most recent call FIRST):\n"
            + stack
            + f"{type(failure.error).__name__}: {failure.error}\n"
        )
        failure.traceback = text
        failure.error.__cause__ = TaskTraceback(text)


def _task_frames(dump: str) -> str:
    """The frames of the thread running the task, without taskfan's or multiprocessing's."""
    ours = os.path.dirname(os.path.dirname(__file__))
    library = os.path.dirname(multiprocessing.__file__)
    for section in dump.split("\n\n"):
        lines = section.splitlines()
        if any(
            (" in watch" in line or " in _serve_cuts" in line) and "_worker.py" in line
            for line in lines
        ):
            continue  # the lifeline thread, the cut thread
        # Most recent first: the task's frames are those above taskfan's own (a forked
        # worker's stack goes on into the frames it was forked from).
        frames = list(itertools.takewhile(lambda line: ours not in line, lines[1:]))
        frames = [line for line in frames if library not in line]
        if frames:
            return "\n".join(frames) + "\n"
    return ""


def _tiny(call: Call) -> bool:
    """Is ``call`` a large call of tasks known to be tiny (see UNMARKED_FROM)?"""
    n = len(call.items)
    return n >= UNMARKED_FROM and call.expected is not None and call.expected <= n * UNMARKED_UPTO


def _release(worker: _Worker) -> None:
    """Close what the backend holds of an ended worker: its pipes, and a fork server's
    child's own (see ServerChild)."""
    worker.conn.close()
    worker.dump.close()
    worker.control.close()
    if isinstance(worker.process, ServerChild):
        worker.process.close()


def _kill(process: Any) -> None:
    _kill_tree(process)
    process.join(1.0)


class _Watcher:
    """A thread that tells a driver on an event loop when a worker has news.

    It only watches (pipes readable, a worker gone), never reads: the backend reads,
    on the loop's thread, after being woken. ``stop`` returns once the thread no longer
    looks at those pipes, so the backend may close them afterwards.
    """

    def __init__(self, handles: list[Any], notify: Callable[[], None]) -> None:
        self._stop_r, self._stop_w = os.pipe()
        self._notify = notify
        self._thread = threading.Thread(
            target=self._watch, args=(handles,), name="taskfan-watcher", daemon=True
        )
        self._thread.start()

    def _watch(self, handles: list[Any]) -> None:
        ready = wait_for([*handles, self._stop_r])
        if self._stop_r not in ready:
            self._notify()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _kill_tree(process: Any) -> None:
    """Kill a worker and whatever its task started: each worker leads its own group."""
    if process.pid is not None and hasattr(os, "killpg"):
        with contextlib.suppress(OSError):  # not yet a group leader, or already gone
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        process.kill()


def _send_quietly(conn: Any, message: bytes) -> None:
    with contextlib.suppress(OSError):
        conn.send_bytes(message)


def _format(error: BaseException) -> str:
    import traceback  # a failure's path only: a first call need not import it

    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _cannot_send(what: str, obj: object, error: Exception) -> str:
    return (
        f"cannot send the {what} {obj!r} to worker processes, even with cloudpickle: "
        f"{error}. Whatever it references must be picklable: create locks, open files, "
        "connections and clients inside the task (or in an initializer=) instead of "
        "capturing them, or use backend='thread'"
    )


def _cut_limit_only(message: bytes) -> tuple[int, int, list[Any], None]:
    """A CUT notice whose results cannot be rebuilt here: its call and limit only."""

    class _Skip(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return lambda *args, **kwargs: None

    call_id, limit, _, _ = _Skip(io.BytesIO(message[1:])).load()
    return call_id, limit, [], None


def _unsendable_arguments(error: Exception) -> Failure:
    message = (
        f"cannot send this task's arguments to a worker process: {error}; pass plain "
        "data (numbers, strings, paths, lists, dicts) and open resources inside the task"
    )
    failure = describe_failure(TypeError(message), _format(error))
    failure.retry = False
    return failure
