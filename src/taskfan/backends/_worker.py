"""The worker process of the process backend, and the messages it exchanges.

A worker reads calls from its own pipe, runs them item by item, and writes one reply per
call. Before each item it writes the item's index (and, for timed calls, its start time)
into a small shared-memory slot, so that when the worker dies or is killed the parent
knows exactly which item it was running. Large calls of tiny tasks skip that write (it
costs as much as the task): if the worker dies in one, the parent sends it again with
the writes on, to learn which item it was (see UNMARKED).

Messages are bytes: a one-byte kind, then for a call an 8-byte call id and an 8-byte
item limit, then the pickled body. Functions travel once per worker (kind ``F``), pickled
with cloudpickle so that lambdas and closures work.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import itertools
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._pickling import dumps, dumps_by_value
from ._codes import SET_ASIDE, SINGLE

if TYPE_CHECKING:
    from ._base import Failure
    from ._trace import Trace

# The fork server imports this module before it forks any worker, on the clock of the
# first call that starts one: it imports only what a worker needs to serve calls. The
# engine's side of the interface (``._base``: dataclasses and their generated code) and
# ``traceback`` (``._trace``) come in when first used: in the parent, which has them
# already, and in a worker, with the first task that is not a plain ``fn(item)`` or that
# fails.

__all__ = [
    "BY_VALUE",
    "CALL",
    "CUT_NOTICE",
    "FUNCTION",
    "ONE_BY_ONE",
    "SEPARATE",
    "SET_ASIDE",
    "SHARED",
    "SLOT_FIELDS",
    "STOP",
    "TIMED",
    "UNMARKED",
    "WorkerSpec",
    "call_header",
    "decode_cut",
    "decode_reply",
    "unrebuildable_result",
    "worker_main",
]

FUNCTION, CALL, STOP = b"F", b"C", b"S"
CUT_NOTICE = b"K"  # worker to parent, ahead of a reply; replies are pickles (b"\x80")
HEADER = 17  # kind, call id, item limit

# Flags of a call's body. A body is one pickle of (function id, mode, items, flags):
# the fast way for tiny tasks. When one bad payload spoils that pickle, the parent sends
# the call again item by item, so that only the bad item fails.
TIMED = 1  # publish each item's start time, for timeouts
ONE_BY_ONE = 2  # items are pickled one by one: an item that cannot be rebuilt fails alone
SEPARATE = 4  # results are pickled one by one: one that cannot be rebuilt fails alone
# Tiny tasks in large calls: no mark per item (a shared-memory write costs as much as the
# task). INDEX then reads UNMARKED while the items run; if the worker dies, the parent
# sends the call again, marked, to learn which item killed it (see BackendProcess).
UNMARKED = 8
# The items are (start, stop): that part of the job's input, which a forked worker has a
# copy of (``WorkerSpec.shared``). The worker pickles and rebuilds them itself (see
# ``by_place``): the parent neither pickles them nor touches them.
SHARED = 16
# Never SHARED: the worker could not pickle or rebuild its part of the input, so the
# parent sends the items themselves, and whatever fails fails as it always did.
BY_VALUE = 32

# One slot per worker in a shared int64 array: these fields, in this order.
SLOT_FIELDS = 4
STATE, CALL_ID, INDEX, STARTED = range(SLOT_FIELDS)
STARTING, READY = 0, 1
NO_LIMIT = -1
RUNNING_UNMARKED = -2  # INDEX while an UNMARKED call runs: some item of it, unknown which

# An error record travels as (pickled exception or None, type name, message, traceback,
# retry): the exception itself when it survives a pickle round trip, a description if not.
# The traceback travels as what its text is made of (see _trace), formatted when read.
ErrorRecord = tuple[bytes | None, str, str, "Trace | str", bool]


def call_header(call_id: int, limit: int | None) -> bytes:
    """The fixed-size head of a call message."""
    return (
        CALL
        + call_id.to_bytes(8, "little", signed=True)
        + (NO_LIMIT if limit is None else limit).to_bytes(8, "little", signed=True)
    )


# --- parent side ---------------------------------------------------------------------------


def decode_cut(message: bytes) -> tuple[int, int, list[Any], dict[int, Failure] | None]:
    """``(call id, limit, values, failures)`` of a CUT notice (see ``_serve_cuts``)."""
    call_id, limit, values, records = pickle.loads(message[1:])
    failures = {i: _failure(record) for i, record in records.items()} or None
    return call_id, limit, values, failures


def decode_reply(
    message: bytes, separate: bool
) -> tuple[int, list[Any] | None, dict[int, Failure] | None, float, float]:
    """``(call id, values, failures, started, elapsed)`` from a worker's reply.

    ``values`` is None when the worker could not rebuild the call's arguments (the
    failure is then under 0). With ``separate``, each value was pickled on its own, and
    one that cannot be rebuilt here fails alone.
    """
    call_id, values, records, started, elapsed = pickle.loads(message)
    failures = {i: _failure(record) for i, record in records.items()} if records else None
    if separate and values is not None:
        failures = failures or {}
        for i, blob in enumerate(values):
            if i not in failures:
                try:
                    values[i] = pickle.loads(blob)
                except Exception as error:
                    values[i] = None
                    failures[i] = unrebuildable_result(error)
        failures = failures or None
    return call_id, values, failures, started, elapsed


def _late(module: str, name: str) -> Any:
    """``name`` from the sibling ``module``, imported when first needed (see above).

    A ``from . import`` statement inside a function costs microseconds on every call,
    as much as a tiny task: the paths that run per failure take what they need here.
    """
    key = (module, name)
    found = _LATE.get(key)
    if found is None:
        found = _LATE[key] = getattr(importlib.import_module(module, __package__), name)
    return found


_LATE: dict[tuple[str, str], Any] = {}


def unrebuildable_result(error: Exception) -> Failure:
    import traceback

    from ._base import describe_failure

    failure = describe_failure(
        TypeError(f"the task's result could not be rebuilt in the calling process: {error}"),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )
    failure.retry = False
    return failure


def _failure(record: ErrorRecord) -> Failure:
    blob, type_name, message, tb_text, retry = record
    if tb_text == SET_ASIDE:  # retried on this mark alone, never shown (see _record)
        return _set_aside(retry)
    error = _late(".._errors", "rebuild_error")(blob, type_name, message)
    describe_failure = _late("._base", "describe_failure")
    failure: Failure
    if isinstance(tb_text, str):
        failure = describe_failure(error, tb_text)
    else:
        render = _late("._trace", "render")
        failure = describe_failure(error, lambda: render(tb_text))
    failure.retry = retry
    return failure


def _set_aside(retry: bool) -> Failure:
    """The failure of an attempt that the parent retries, as a thread's (``set_aside``),
    but its exception stayed in the worker: one placeholder serves them all, and nothing
    reads it (the engine retries on the mark, and never dresses this error with a cause)."""
    global _PLACEHOLDER
    if _PLACEHOLDER is None:
        _PLACEHOLDER = _late(".._errors", "TaskError")("taskfan.SetAside", SET_ASIDE.rstrip())
    failure: Failure = _late("._base", "set_aside")(_PLACEHOLDER)
    failure.retry = retry
    return failure


_PLACEHOLDER: BaseException | None = None


# --- worker side ---------------------------------------------------------------------------


class WorkerSpec(NamedTuple):
    """What a worker process is started with (pipes travel as multiprocessing handles)."""

    conn: Any
    lifeline: Any
    lifeline_writer: Any
    slots: Any
    slot: int
    init_blob: bytes | None
    max_tasks: int | None
    dump: Any = None  # where faulthandler writes this worker's stacks on SIGUSR1
    control: Any = None  # the parent asks here to cut a call short (see _serve_cuts)
    shared: Any = None  # forked workers only: the job's input, as it was (see SHARED)


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    # The parent handles Ctrl+C and then kills its workers; a worker must not die of it
    # halfway through writing a reply, nor print a KeyboardInterrupt of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setpgrp"):
        # Lead a process group of our own: killing the group (a timeout, Ctrl+C) then
        # also ends the subprocesses a task started, instead of orphaning them.
        os.setpgrp()
    if spec.lifeline_writer is not None:  # (a fork server's worker never had it)
        spec.lifeline_writer.close()  # only the parent may hold it, so that its death closes it
    _watch_parent(spec.lifeline)
    if spec.dump is not None and hasattr(signal, "SIGUSR1"):
        # Before it kills us for a timeout, the parent asks where the task is stuck; the
        # dump is written from C, so it works even inside a long call holding the GIL.
        faulthandler.register(signal.SIGUSR1, file=spec.dump.fileno(), all_threads=True)
    marks = spec.slots.create_memoryview().cast("q")
    base = spec.slot * SLOT_FIELDS
    broken = _initialize(spec.init_blob)
    loop = _Loop(spec.conn, marks, base, broken)
    loop.shared = spec.shared
    if spec.control is not None:
        threading.Thread(
            target=_serve_cuts, args=(loop, spec.control), name="taskfan-control", daemon=True
        ).start()
    marks[base + STATE] = READY
    loop.serve(spec.max_tasks)


def _serve_cuts(loop: _Loop, control: Any) -> None:
    """Cut the running call short when the parent asks, and tell it what it gets.

    Both threads of this process run under one GIL, so :func:`cut_at` agrees with the
    task loop on where it stops, exactly; the parent learns it from a CUT notice (the
    limit, and the results that had ended) sent ahead of the call's reply.
    """
    while True:
        try:
            call_id = int.from_bytes(control.recv_bytes(), "little", signed=True)
        except (EOFError, OSError):
            return
        from ._base import cut_at

        with loop.starting:
            current = loop.current
            if current is None or current.call_id != call_id:
                # Not started (it waits in the pipe behind a slow call): it will not
                # run here at all. If it ended already instead, its reply is ahead of
                # this notice, and the parent ignores the notice.
                loop.recalled.add(call_id)
                loop.send(CUT_NOTICE + pickle.dumps((call_id, 0, [], {})))
                continue
            # (under the lock: the task loop does not take it, the call cannot start)
        limit, ended = cut_at(current.out, current.stop)
        records = {i: r for i, r in list(current.records.items()) if i < ended}
        notice = (call_id, limit, current.out[:ended], records)
        try:
            body = pickle.dumps(notice, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # results that need more than pickle: they come with the reply
            body = pickle.dumps((call_id, limit, [], {}), protocol=pickle.HIGHEST_PROTOCOL)
        loop.send(CUT_NOTICE + body)


def _watch_parent(lifeline: Any) -> None:
    """Exit at once when the parent dies: its end of the lifeline pipe then closes."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        # The parent is gone: nobody will read our results. Take our task's own
        # subprocesses along (our group), then go.
        if hasattr(os, "killpg") and os.getpgrp() == os.getpid():  # only a group of our own
            with contextlib.suppress(OSError):
                os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(70)

    threading.Thread(target=watch, name="taskfan-lifeline", daemon=True).start()


def _initialize(init_blob: bytes | None) -> ErrorRecord | None:
    if init_blob is None:
        return None
    try:
        initializer, initargs = pickle.loads(init_blob)
        initializer(*initargs)
    except BaseException as error:  # reported on every task this worker is given
        return _record(error, retry=False)
    return None


class _Loop:
    """A worker's receive-run-reply loop; ``marks[base:]`` is its shared slot."""

    def __init__(self, conn: Any, marks: memoryview, base: int, broken: ErrorRecord | None) -> None:
        self.conn, self.marks, self.base, self.broken = conn, marks, base, broken
        self.functions: dict[int, Any] = {}
        self.current: _Current | None = None
        self.recalled: set[int] = set()  # calls not to run: the parent gave them to others
        self.starting = threading.Lock()  # a call starts, or is recalled: never both
        self._sending = threading.Lock()  # replies and cut notices share the pipe
        self._retried_types: dict[bytes, tuple[type[BaseException], ...]] = {}
        self.shared: Any = None  # the job's input, in a forked worker (see SHARED)

    def _retried(self, blob: bytes | None) -> tuple[type[BaseException], ...]:
        """The exceptions that the parent retries for this call (see ``Call.retried``);
        none if they cannot be rebuilt here: every traceback is then kept."""
        if blob is None:
            return ()
        found = self._retried_types.get(blob)
        if found is None:
            try:
                found = tuple(pickle.loads(blob))
            except Exception:
                found = ()
            self._retried_types[blob] = found
        return found

    def send(self, message: bytes) -> None:
        with self._sending:
            self.conn.send_bytes(message)

    def serve(self, max_tasks: int | None) -> None:
        ran = 0
        while True:
            try:
                message = self.conn.recv_bytes()
            except (EOFError, OSError):
                return
            kind = message[:1]
            if kind == FUNCTION:
                self._load_function(message)
            elif kind == CALL:
                ran += self._answer(message)
                if max_tasks is not None and ran >= max_tasks:
                    return  # recycled: the parent starts a fresh worker
            else:
                return

    def _load_function(self, message: bytes) -> None:
        fn_id = int.from_bytes(message[1:9], "little", signed=True)
        try:
            self.functions[fn_id] = pickle.loads(message[9:])
        except BaseException as error:  # tasks using it fail with this error
            self.functions[fn_id] = _record(error, retry=False)

    def _answer(self, message: bytes) -> int:
        call_id = int.from_bytes(message[1:9], "little", signed=True)
        limit = int.from_bytes(message[9:17], "little", signed=True)
        started = time.time()
        current = _Current(call_id)
        with self.starting:
            recalled = call_id in self.recalled
            if recalled:
                self.recalled.discard(call_id)
            else:
                self.current = current  # from here on, a cut request cuts this call
        if recalled:  # it runs elsewhere: answer at once, with nothing
            self.send(_encode_reply(call_id, [], {}, started, 0.0, flags=0))
            return 0
        try:
            return self._run_call(call_id, limit, message, current, started)
        finally:
            self.current = None

    def _run_call(
        self, call_id: int, limit: int, message: bytes, current: _Current, started: float
    ) -> int:
        self.marks[self.base + CALL_ID] = call_id
        self.marks[self.base + INDEX] = -1
        t0 = time.perf_counter()
        broken = self.broken
        try:
            fn_id, mode, items, flags, retried_blob = pickle.loads(message[HEADER:])
            if flags & SHARED:
                items = by_place(self.shared, items[0], items[1])
        except BaseException as error:  # some argument cannot be rebuilt here
            # Which one is not known: the parent sends the items again one by one.
            record = _record(error, retry=False)
            self.send(_encode_reply(call_id, None, {0: record}, started, 0.0, flags=0))
            return 0
        fn = self.functions.get(fn_id)
        if isinstance(fn, tuple):
            broken = fn
        n = len(items) if limit == NO_LIMIT else min(limit, len(items))
        if broken is not None:
            values: list[Any] = [None] * n
            records = dict.fromkeys(range(n), broken)
        else:
            retried = self._retried(retried_blob)
            # (islice only for a limit: over a whole list it costs ~5% per tiny item)
            todo = iter(items) if n == len(items) else itertools.islice(items, n)
            values, records = self._run(fn, mode, todo, flags, current, retried=retried)
        # Nothing runs any more: pickling a large reply, or waiting for the parent to
        # read it, must not look like a late item to the parent's deadline check.
        self.marks[self.base + INDEX] = -1
        elapsed = time.perf_counter() - t0
        self.send(_encode_reply(call_id, values, records, started, elapsed, flags=flags))
        return len(values)

    def _run(
        self,
        fn: Callable[..., Any] | None,
        mode: int,
        items: Iterator[Any],
        flags: int,
        current: _Current,
        *,
        retried: tuple[type[BaseException], ...],
    ) -> tuple[list[Any], dict[int, ErrorRecord]]:
        """Run items in order; an exception fails only its item and the loop goes on.

        After each item, ``if stop`` (next to free) tells whether the call was cut.
        """
        out, records, stop = current.out, current.records, current.stop
        marks, index = self.marks, self.base + INDEX
        while True:
            try:
                if mode == SINGLE and flags & UNMARKED:
                    assert fn is not None
                    marks[index] = RUNNING_UNMARKED
                    append = out.append
                    for item in items:
                        append(fn(item))
                        if stop and len(out) >= stop[-1]:
                            break
                elif mode == SINGLE and not flags & (TIMED | ONE_BY_ONE):
                    assert fn is not None
                    append = out.append
                    for i, item in enumerate(items, len(out)):
                        marks[index] = i
                        append(fn(item))
                        if stop and len(out) >= stop[-1]:
                            break
                else:
                    self._run_general(fn, mode, items, out, flags, stop=stop)
                return out, records
            except _BadArgument as bad:
                records[len(out)] = _record(bad.error, retry=False)
                out.append(None)
            except BaseException as error:  # a worker reports everything and carries on
                records[len(out)] = _record(error, retried=retried)
                out.append(None)
            if stop and len(out) >= stop[-1]:
                return out, records

    def _run_general(
        self,
        fn: Callable[..., Any] | None,
        mode: int,
        items: Iterator[Any],
        out: list[Any],
        flags: int,
        *,
        stop: list[int],
    ) -> None:
        call_one = _late("._base", "call_one")
        append = out.append
        marks, index, started = self.marks, self.base + INDEX, self.base + STARTED
        now = time.monotonic_ns
        timed, decode = flags & TIMED, flags & ONE_BY_ONE
        for i, item in enumerate(items, len(out)):
            if timed:
                marks[started] = now()
            marks[index] = i
            append(call_one(mode, fn, _rebuild(item) if decode else item))
            if stop and len(out) >= stop[-1]:
                return


class _Current:
    """The call a worker runs now: what the cut thread may look at and cut."""

    __slots__ = ("call_id", "out", "records", "stop")

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id
        self.out: list[Any] = []
        self.records: dict[int, ErrorRecord] = {}
        self.stop: list[int] = []


class _BadArgument(Exception):
    """An item's arguments could not be rebuilt in the worker: that item fails alone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def by_place(shared: Sequence[Any], start: int, stop: int) -> Sequence[Any]:
    """Items ``[start, stop)`` of a forked worker's copy of the job's input, as they would
    have come through the pipe: pickled as the parent pickles them, then rebuilt here.

    Only the work moves (out of the parent, which every worker waits on); what a task
    gets does not change: an item that pickling alters comes altered, one that cannot be
    pickled or rebuilt fails (the parent is told, and sends the items themselves).
    """
    if stop > len(shared):
        raise IndexError(f"items {start}:{stop} of an input of {len(shared)}")
    part = shared[start:stop]
    if _plain(part):
        return part  # (these come out of a round trip equal, of the same type, unchanged)
    rebuilt: Sequence[Any] = pickle.loads(dumps(part))  # (as the parent's _encode does)
    return rebuilt


#: exact types whose values pickling rebuilds equal and of the same type, and that no
#: task can change: items of only these types need no round trip (``by_place``)
_PLAIN_TYPES = (int, str, float, bytes, bool, type(None))


def _plain(items: Sequence[Any]) -> bool:
    """Are ``items`` all of one of the plain types? (Mixed ones take the round trip: a
    count of matching types is fast, a count of others compares each type with it.)"""
    if not items:
        return False
    kind = type(items[0])
    return kind in _PLAIN_TYPES and list(map(type, items)).count(kind) == len(items)


def _rebuild(blob: bytes) -> Any:
    try:
        return pickle.loads(blob)
    except BaseException as error:
        raise _BadArgument(error) from error


def _record(
    error: BaseException, retry: bool = True, retried: tuple[type[BaseException], ...] = ()
) -> ErrorRecord:
    """Describe an exception so that it survives the trip to the parent.

    One that the parent will retry (an instance of ``retried``) goes as a mark only: the
    parent retries it on that mark alone and drops the attempt, so nobody reads its
    traceback or the exception itself (see ``_base.set_aside``). Pickling it and
    rebuilding it cost more than a tiny task's whole retry.
    """
    if retried and isinstance(error, retried):
        return None, "", "", SET_ASIDE, retry
    summarize = _late("._trace", "summarize")
    tb = error.__traceback__
    ours = os.path.dirname(__file__)  # the worker loop's frames, and the chunk runner's
    while (
        tb is not None
        and tb.tb_next is not None
        and (os.path.dirname(tb.tb_frame.f_code.co_filename) == ours)
    ):
        tb = tb.tb_next
    return _described(error, summarize(error, tb), retry)


def _described(error: BaseException, text: str | Trace, retry: bool) -> ErrorRecord:
    blob: bytes | None
    try:
        blob = pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    # (Some exceptions pickle but cannot be rebuilt: rebuild_error, where it is read,
    # then makes a TaskError of the type's name and message, as for blob None.)
    kind = type(error)
    return blob, f"{kind.__module__}.{kind.__qualname__}", str(error), text, retry


def _encode_reply(
    call_id: int,
    values: list[Any] | None,
    records: dict[int, ErrorRecord],
    started: float,
    elapsed: float,
    *,
    flags: int,
) -> bytes:
    if values is not None and flags & SEPARATE:
        values = _each_pickled(values, records)
    reply = (call_id, values, records, started, elapsed)
    try:
        return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    assert values is not None  # the other replies hold plain data only
    for i, value in enumerate(values):
        if i in records:
            continue
        try:
            dumps_by_value(value)
        except Exception as error:
            values[i] = None
            records[i] = _unsendable_result(error)
    return dumps_by_value(reply)


def _each_pickled(values: list[Any], records: dict[int, ErrorRecord]) -> list[Any]:
    blobs: list[Any] = []
    for i, value in enumerate(values):
        blob = None
        if i not in records:
            try:
                blob = dumps(value)
            except Exception as error:
                records[i] = _unsendable_result(error)
        blobs.append(blob)
    return blobs


def _unsendable_result(error: Exception) -> ErrorRecord:
    message = (
        f"the task's result could not be sent back from the worker process: {error}; "
        "return plain data (numbers, strings, lists, dicts, dataclasses) or use "
        "backend='thread'"
    )
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    wrapped = TypeError(message)
    return pickle.dumps(wrapped), "builtins.TypeError", message, text, False


if __name__ == "__main__":  # pragma: no cover - never run directly
    sys.exit("taskfan worker: started by the process backend, not by hand")
