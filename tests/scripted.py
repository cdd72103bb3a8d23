"""A scripted fake backend: calls "run" on virtual workers in virtual time.

The engine's policies (requeue after a crash, timeouts, cuts, retries, rate, order) are
tested against it without a thread or a process. A *script* says, for each run of an
item, how long it takes in virtual time and how it ends::

    script = table({3: [crash(0.5), ok(1.0)], 7: hang()}, default=ok(0.25))

``wait(timeout)`` moves the clock to the next instant at which a call ends (or by
``timeout`` when none ends before) and returns the :class:`Done` objects of that
instant. Everything the engine sent and every run of every item is recorded, so a test
asserts exactly what happened, where and when.

The fake follows the :class:`~taskfan.backends._base.Backend` contract as the real
backends read it: ``submit`` never blocks; one shared queue feeds the workers (the
lowest-numbered idle worker takes the next call); ``running``/``stop`` serve timed calls;
``started_calls``/``cut_short`` serve cuts. By default it behaves as the thread backend
does (a stopped or crashed call still hands back the items that ended before it; a cut
answers at once); ``lose_results=True`` behaves as the process backend (a stopped or
crashed worker takes its chunk's results with it) and ``cut_notice=True`` answers a cut
with a notice through ``wait``, as the process backend does.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from taskfan._clock import Clock, MockClock
from taskfan._engine import RETRIED, Engine, Job, Piece
from taskfan._errors import WorkerCrashed
from taskfan._options import make_options, plan
from taskfan._resume import JournaledEngine
from taskfan.backends._base import (
    SINGLE,
    Backend,
    Call,
    Cut,
    Done,
    Failure,
    Setup,
    describe_failure,
)

__all__ = [
    "EngineStuck",
    "InputBroken",
    "Run",
    "ScriptClock",
    "ScriptedBackend",
    "Sent",
    "Step",
    "attempts",
    "crash",
    "drive",
    "ended",
    "fail",
    "give_back",
    "hang",
    "make_engine",
    "ok",
    "outcomes",
    "table",
]

#: how many times in a row ``wait(0)`` or ``sleep(0)`` may find nothing to do before the
#: fake says the engine spins (in virtual time a spin never ends)
SPIN_LIMIT = 10_000

Kind = Literal["value", "raise", "hang", "crash", "give_back"]
_SAME = object()


class EngineStuck(AssertionError):
    """The engine waits for something that can never happen in virtual time."""


# --- scripts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """How one run of one item goes: ``seconds`` of virtual time, then ``kind``."""

    seconds: float
    kind: Kind
    value: Any = _SAME
    error: type[BaseException] | BaseException | None = None
    exitcode: int = -9


def ok(seconds: float = 0.0, value: Any = _SAME) -> Step:
    """Returns ``value`` (the item itself by default) after ``seconds``."""
    return Step(seconds, "value", value)


def fail(seconds: float = 0.0, error: type[BaseException] | BaseException = OSError) -> Step:
    """Raises ``error`` after ``seconds`` (a type is made with a message naming the run)."""
    return Step(seconds, "raise", error=error)


def hang() -> Step:
    """Never ends by itself: only a timeout (``stop``) or the end of the run ends it."""
    return Step(math.inf, "hang")


def crash(seconds: float = 0.0, exitcode: int = -9) -> Step:
    """The worker dies ``seconds`` into the item, as a killed process does."""
    return Step(seconds, "crash", exitcode=exitcode)


def give_back(seconds: float = 0.0) -> Step:
    """The worker hands the call back at this item, this item and the rest not run (and
    no ``stopped``): a backend bug the engine must survive."""
    return Step(seconds, "give_back")


Script = Callable[[Any, int], Step]
"""``script(item, run)``: the step of the ``run``-th run (from 1) of ``item``."""


def table(steps: Mapping[Hashable, Step | Sequence[Step]], default: Step = ok()) -> Script:  # noqa: B008
    """A script from a per-item table: a step for every run, or one per run (the last
    one repeats). Items not in the table take ``default``."""

    def script(item: Any, run: int) -> Step:
        entry = steps.get(item, default)
        if isinstance(entry, Step):
            return entry
        return entry[min(run, len(entry)) - 1]

    return script


# --- records ---------------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    """A call the engine submitted, and when."""

    id: int
    items: tuple[Any, ...]
    timed: bool
    expected: float | None
    at: float


@dataclass(slots=True)
class Run:
    """One run of one item on one worker. ``end`` is None while it runs; ``outcome``
    is ``value``, ``raise``, ``crash``, ``give_back``, ``stopped`` or ``running``."""

    call_id: int
    index: int
    item: Any
    run: int
    worker: str
    start: float
    end: float | None = None
    outcome: str = "running"


@dataclass(slots=True)
class _Worker:
    slot: int
    name: str
    call: Call | None = None
    index: int = 0
    out: list[Any] = field(default_factory=list)
    errors: dict[int, Failure] = field(default_factory=dict)
    began: float = 0.0
    epoch: float = 0.0
    limit: int | None = None
    cut_asked: bool = False
    run: Run | None = None
    step: Step | None = None

    def due(self) -> float:
        if self.call is None or self.run is None or self.step is None:
            return math.inf
        return self.run.start + self.step.seconds


# --- the clock ---------------------------------------------------------------------------


class ScriptClock(MockClock):
    """A MockClock the fake can set to an exact instant (``advance(t - now)`` can miss
    ``t`` by a rounding error), and that reports an engine sleeping 0 s forever."""

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(start)
        self._idle_sleeps = 0

    def jump_to(self, t: float) -> None:
        self._now = max(self._now, t)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._idle_sleeps = 0
        else:
            self._idle_sleeps += 1
            if self._idle_sleeps > SPIN_LIMIT:
                raise EngineStuck(f"the engine slept 0 s {SPIN_LIMIT} times in a row")
        super().sleep(seconds)


def _move_to(clock: Clock, t: float) -> None:
    if isinstance(clock, ScriptClock):
        clock.jump_to(t)
    elif isinstance(clock, MockClock) and t > clock.now():
        clock.advance(t - clock.now())
    else:  # pragma: no cover - the fake needs virtual time
        raise TypeError("the scripted backend needs a MockClock")


# --- the backend -------------------------------------------------------------------------


class ScriptedBackend(Backend):
    """Runs calls on ``workers`` virtual workers as ``script`` says (see module doc).

    ``ties`` decides what a wait returns when a call ends at exactly the instant its
    timeout ends: ``"result"`` delivers the call's end, ``"timeout"`` returns first
    (the engine then stops the item that has not reported yet).
    """

    name = "scripted"

    def __init__(
        self,
        workers: int,
        clock: Clock,
        script: Script,
        *,
        ties: Literal["result", "timeout"] = "result",
        lose_results: bool = False,
        cut_notice: bool = False,
        chunk_seconds: float | None = None,
    ) -> None:
        super().__init__(workers, clock)
        if chunk_seconds is not None:
            self.chunk_seconds = chunk_seconds  # a ClassVar, set per instance
        self.script, self.ties = script, ties
        self.lose_results, self.cut_notice = lose_results, cut_notice
        self._workers = [_Worker(slot, f"w{slot + 1}") for slot in range(workers)]
        self._born = workers
        self._queue: deque[Call] = deque()
        self._ready: list[Done] = []
        self._runs_of: Counter[Any] = Counter()
        self._spins = 0
        # What the engine did, for the tests to assert.
        self.sent: list[Sent] = []
        self.runs: list[Run] = []
        self.stops: list[tuple[float, int, int]] = []  # (when, call id, index)
        self.cuts: list[tuple[float, int, int]] = []  # (when, call id, limit)
        self.crashes: list[tuple[float, str]] = []  # (when, worker)
        self.waits: list[tuple[float, float | None]] = []  # (when, timeout)
        self.released: list[float] = []
        self.closed: tuple[float, bool] | None = None  # (when, cancel)
        self.setup: Setup | None = None

    # --- what the engine calls ---------------------------------------------------------

    def start(self, setup: Setup) -> None:
        self.setup = setup

    def submit(self, call: Call) -> None:
        if self.closed is not None:
            raise AssertionError(f"call {call.id} submitted after close")
        now = self.clock.now()
        self.sent.append(Sent(call.id, tuple(call.items), call.timed, call.expected, now))
        self._queue.append(call)
        self._assign(now)

    def wait(self, timeout: float | None) -> list[Done]:
        now = self.clock.now()
        self.waits.append((now, timeout))
        deadline = math.inf if timeout is None else now + max(0.0, timeout)
        while not self._ready:
            t, _ = self._next_event()
            if not self._deliverable(t, deadline):
                break
            _move_to(self.clock, t)
            self._run_until(t)
        if self._ready:
            self._spins = 0
            done, self._ready = self._ready, []
            return done
        if deadline == math.inf:
            raise EngineStuck(
                "the engine waits without a timeout, but nothing can end: "
                + (", ".join(f"{r.item!r} on {r.worker}" for r in self._running()) or "none")
            )
        if deadline > now:
            self._spins = 0
            _move_to(self.clock, deadline)
        else:
            self._spins += 1
            if self._spins > SPIN_LIMIT:
                raise EngineStuck(f"the engine called wait(0) {SPIN_LIMIT} times for nothing")
        return []

    def running(self) -> list[tuple[int, int, float]]:
        return [
            (w.call.id, w.index, w.run.start)
            for w in self._workers
            if w.call is not None and w.call.timed and w.run is not None
        ]

    def stop(self, call_id: int, index: int, failure: Failure) -> bool:
        for w in self._workers:
            if w.call is None or w.call.id != call_id or w.index != index or w.run is None:
                continue
            now = self.clock.now()
            self.stops.append((now, call_id, index))
            w.run.end, w.run.outcome = now, "stopped"
            self._ready.append(self._done(w, now, stopped=(index, failure)))
            self._replace(w, now)  # a thread is abandoned, a process killed: a new one
            return True
        return False

    def started_calls(self) -> list[tuple[int, float]]:
        return [
            (w.call.id, w.began)
            for w in self._workers
            if w.call is not None and len(w.call.items) > 1 and not w.cut_asked
        ]

    def cut_short(self, call_id: int) -> Cut | None:
        for w in self._workers:
            if w.call is None or w.call.id != call_id:
                continue
            w.cut_asked = True
            w.limit = w.index + 1  # the running item still ends
            errors = {i: f for i, f in w.errors.items() if i < w.index} or None
            cut = Cut(w.limit, w.out[: w.index], errors, w.name, w.began, w.epoch)
            self.cuts.append((self.clock.now(), call_id, w.limit))
            if self.cut_notice:
                self._ready.append(Done(call_id, [], None, None, w.name, cut=cut))
                return None
            return cut
        return None

    def release_idle(self) -> None:
        self.released.append(self.clock.now())

    def close(self, cancel: bool) -> None:
        self.closed = (self.clock.now(), cancel)
        self._queue.clear()

    # --- what the tests read --------------------------------------------------------------

    def runs_of(self, item: Any) -> list[Run]:
        """Every run of ``item``, in order."""
        return [r for r in self.runs if r.item == item]

    def ran_on(self) -> dict[str, list[Any]]:
        """Worker name -> the items it started, in order."""
        found: dict[str, list[Any]] = {}
        for r in self.runs:
            found.setdefault(r.worker, []).append(r.item)
        return found

    def starts(self) -> list[float]:
        """Start time of every run, in order."""
        return [r.start for r in self.runs]

    # --- virtual time ------------------------------------------------------------------

    def _running(self) -> list[Run]:
        return [w.run for w in self._workers if w.call is not None and w.run is not None]

    def _next_event(self) -> tuple[float, int]:
        return min(((w.due(), w.slot) for w in self._workers), default=(math.inf, -1))

    def _deliverable(self, t: float, deadline: float) -> bool:
        if t == math.inf:
            return False
        if t <= self.clock.now() or t < deadline:
            return True
        return t == deadline and self.ties == "result"

    def _run_until(self, t: float) -> None:
        """Everything that happens up to ``t`` (inclusive), in time order, the lower
        worker first at one instant."""
        while True:
            due, slot = self._next_event()
            if due > t:
                return
            self._end_item(self._workers[slot], due)

    def _assign(self, now: float) -> None:
        for w in self._workers:
            if not self._queue:
                return
            if w.call is None:
                self._begin(w, self._queue.popleft(), now)

    def _begin(self, w: _Worker, call: Call, now: float) -> None:
        w.call, w.index, w.out, w.errors = call, 0, [], {}
        w.began, w.epoch, w.limit, w.cut_asked = now, self.clock.time(), None, False
        self._start_item(w, now)

    def _start_item(self, w: _Worker, now: float) -> None:
        assert w.call is not None
        item = w.call.items[w.index]
        self._runs_of[item] += 1
        number = self._runs_of[item]
        w.step = self.script(item, number)
        w.run = Run(w.call.id, w.index, item, number, w.name, now)
        self.runs.append(w.run)

    def _end_item(self, w: _Worker, now: float) -> None:
        call, run, step = w.call, w.run, w.step
        assert call is not None and run is not None and step is not None
        run.end, run.outcome = now, step.kind
        if step.kind == "crash":
            error = WorkerCrashed(step.exitcode, f"{w.name}, scripted")
            text = f"taskfan._errors.WorkerCrashed: {error}\n"
            failure = describe_failure(error, text, "crashed")
            self.crashes.append((now, w.name))
            self._ready.append(self._done(w, now, stopped=(w.index, failure)))
            self._replace(w, now)
            return
        if step.kind == "give_back":
            self._ready.append(self._done(w, now))
            self._free(w, now)
            return
        if step.kind == "raise":
            error = step.error
            if isinstance(error, type):
                error = error(f"run {run.run} of {run.item!r}")
            assert error is not None
            w.errors[w.index] = describe_failure(error, f"scripted: {error!r}\n")
            w.out.append(None)
        else:
            w.out.append(run.item if step.value is _SAME else step.value)
        w.index += 1
        end = len(call.items) if w.limit is None else min(w.limit, len(call.items))
        if w.index < end:
            self._start_item(w, now)
            return
        self._ready.append(self._done(w, now))
        self._free(w, now)

    def _done(self, w: _Worker, now: float, stopped: tuple[int, Failure] | None = None) -> Done:
        assert w.call is not None
        values, errors = w.out[: w.index], {i: f for i, f in w.errors.items() if i < w.index}
        if stopped is not None and self.lose_results:
            values, errors = [], {}
        return Done(w.call.id, values, errors or None, stopped, w.name, w.epoch, now - w.began)

    def _free(self, w: _Worker, now: float) -> None:
        w.call = w.run = w.step = None
        self._assign(now)

    def _replace(self, w: _Worker, now: float) -> None:
        """The worker is gone (crashed, or stopped mid-item): a fresh one takes its slot."""
        self._born += 1
        fresh = _Worker(w.slot, f"w{self._born}")
        self._workers[w.slot] = fresh
        self._assign(now)


# --- building and driving an engine ------------------------------------------------------


def _never(item: Any) -> Any:  # pragma: no cover - the scripted backend calls nothing
    raise AssertionError("the scripted backend never calls the task function")


def make_engine(
    script: Script,
    items: Iterable[Any],
    *,
    workers: int = 1,
    clock: ScriptClock | None = None,
    seed: int = 7,
    ordered: bool = True,
    fail_fast: bool = False,
    ties: Literal["result", "timeout"] = "result",
    lose_results: bool = False,
    cut_notice: bool = False,
    chunk_seconds: float | None = None,
    lazy: bool = False,
    input_fails_after: int | None = None,
    **options: Any,
) -> tuple[Engine, ScriptedBackend]:
    """An Engine on a ScriptedBackend with ``workers`` workers, in virtual time, as
    ``tests/test_engine_time.py`` builds one (seeded rng, no progress bar); with
    ``journal=``, the journaled engine. ``lazy``: the input is a generator (no length),
    which raises InputBroken after ``input_fails_after`` items if that is given."""
    items = list(items) if not isinstance(items, list) else items
    opts = make_options(
        "test", {"backend": "thread", "workers": workers, "progress": False, **options}
    )
    made: list[ScriptedBackend] = []

    def factory(n: int, engine_clock: Clock) -> Backend:
        backend = ScriptedBackend(
            n,
            engine_clock,
            script,
            ties=ties,
            lose_results=lose_results,
            cut_notice=cut_notice,
            chunk_seconds=chunk_seconds,
        )
        made.append(backend)
        return backend

    if lazy or input_fails_after is not None:
        job = Job(_never, SINGLE, _lazily(items, input_fails_after), None)
    else:
        job = Job(_never, SINGLE, items, len(items))
    hooks: dict[str, Any] = {
        "clock": clock or ScriptClock(),
        "rng": random.Random(seed),
        "backend": factory,
    }
    engine: Engine
    if opts.journal is None:
        engine = Engine(
            job, opts, plan(opts, _never), ordered=ordered, fail_fast=fail_fast, **hooks
        )
    else:
        engine = JournaledEngine(
            job,
            opts,
            plan(opts, _never),
            ordered=ordered,
            fail_fast=fail_fast,
            function="scripted",
            **hooks,
        )
    [backend] = made
    return engine, backend


class InputBroken(Exception):
    """What a scripted lazy input raises when told to fail."""


def _lazily(items: list[Any], fails_after: int | None) -> Iterator[Any]:
    for i, item in enumerate(items):
        if i == fails_after:
            raise InputBroken(f"the input broke after {i} items")
        yield item
    if fails_after is not None and fails_after >= len(items):
        raise InputBroken(f"the input broke after {len(items)} items")


#: which driver :func:`drive` uses: the blocking one, or the one on an event loop
DRIVERS = ("blocking", "async")
driver = "blocking"


def drive(engine: Engine) -> list[tuple[float, Piece]]:
    """Run ``engine`` to its end with the driver in use: each piece with the virtual
    time it was yielded."""
    if driver == "blocking":
        return [(engine.clock.now(), piece) for piece in engine.run()]

    async def on_a_loop() -> list[tuple[float, Piece]]:
        run = engine.arun()
        try:
            return [(engine.clock.now(), piece) async for piece in run]
        finally:
            await run.aclose()

    return asyncio.run(on_a_loop())


def outcomes(pieces: Iterable[tuple[float, Piece]]) -> dict[int, Any]:
    """Position -> value, or the exception of a failed task (of what :func:`drive` gave)."""
    return ended(piece for _, piece in pieces)


def ended(pieces: Iterable[Piece]) -> dict[int, Any]:
    """Position -> value, or the exception of a failed task; each task at most once."""
    found: dict[int, Any] = {}
    for piece in pieces:
        for i, value in enumerate(piece.values):
            failure = (piece.failures or {}).get(i)
            if failure is RETRIED:
                continue  # out of order: the task ends in a later piece
            position = piece.seq + i
            assert position not in found, f"task {position} ended twice"
            found[position] = value if failure is None else failure.error
    return found


def attempts(pieces: Iterable[tuple[float, Piece]]) -> dict[int, int]:
    """Position -> the attempt number its outcome came from (of what :func:`drive` gave)."""
    return {
        p.seq + i: p.ran(i)[0].attempt
        for _, p in pieces
        for i in range(len(p.items))
        if (p.failures or {}).get(i) is not RETRIED
    }
