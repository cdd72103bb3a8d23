"""The fronts: thin shapes over the engine. None of them holds any policy."""

from __future__ import annotations

import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import TaskRaisedStopIteration
from ._options import Options, Plan, check_flag, is_async_callable, make_options, plan
from ._outcome import Outcome, Report, Results
from .backends._base import FULL, KWARGS, RETRIED, SINGLE, STAR
from .backends._registry import registration

if TYPE_CHECKING:
    from ._engine import Engine, Piece

__all__ = ["Parallelized", "ResultIterator", "Runner", "imap", "map", "starmap"]

T = TypeVar("T")


def map(fn: Callable[..., T], items: Iterable[Any], /, **options: Any) -> list[Any]:
    """``fn(item)`` for every item, at once; the results in input order, as a list.

    ``errors="raise"`` (default) re-raises the first failure and cancels the rest;
    ``"return"`` puts the exception in the failed task's place; ``"skip"`` leaves it out.
    """
    return _collect("map", fn, SINGLE, items, options)


def starmap(
    fn: Callable[..., T], arg_tuples: Iterable[Iterable[Any]], /, **options: Any
) -> list[Any]:
    """``fn(*args)`` for every tuple of arguments; otherwise exactly like :func:`map`."""
    return _collect("starmap", fn, STAR, arg_tuples, options)


def imap(
    fn: Callable[..., T], items: Iterable[Any], /, *, ordered: bool = True, **options: Any
) -> ResultIterator:
    """Lazily ``fn(item)`` for every item: input is pulled only as results are taken.

    With ``ordered=False`` results come in the order tasks end. The returned iterator has
    a ``report``; breaking out of the loop (or dropping the iterator) cancels the rest.
    """
    _check_fn("imap", fn)
    check_flag("ordered", ordered)
    opts = make_options("imap", options)
    engine = _engine(fn, SINGLE, items, opts, ordered=ordered)
    return ResultIterator(engine, opts.errors)


def _collect(
    where: str, fn: Callable[..., Any], mode: int, items: Iterable[Any], options: Mapping[str, Any]
) -> list[Any]:
    _check_fn(where, fn)
    opts = options_keeping_all(where, options)
    engine = _engine(fn, mode, items, opts, ordered=True, shares_input=True)
    out: list[Any] = []
    try:
        for piece in engine.run():
            _extend(out, piece, opts.errors)
    except TaskRaisedStopIteration as carrier:
        # A list is returned, not iterated: the task's StopIteration can be itself here.
        raise carrier.error from carrier.error.__cause__
    return out


def options_keeping_all(where: str, options: Mapping[str, Any]) -> Options:
    """The options of a call that returns a list of every result (``map``, ``amap``).

    The list holds every result until it is returned, so the results held back to keep
    their order bound no memory: unless ``window_bytes`` is given, their weight stops no
    intake (it stops ``imap``'s, whose caller lets results go as they come).
    """
    return make_options(where, {"window_bytes": sys.maxsize, **options})


def _engine(
    fn: Callable[..., Any] | None,
    mode: int,
    items: Iterable[Any],
    opts: Options,
    *,
    ordered: bool,
    fail_fast: bool | None = None,
    probe: Callable[..., Any] | None = None,
    keys: list[Hashable] | None = None,
    function: str | None = None,
    total: int | None = None,
    chosen: Plan | None = None,
    shares_input: bool = False,
) -> Engine:
    checked = _checked_items(items)
    if total is None:
        total = _length(items)
    if fail_fast is None:
        fail_fast = opts.errors == "raise"
    if chosen is None:
        chosen = plan(opts, probe or fn)
    entry = registration(chosen.backend)
    if entry.local and not entry.in_process:
        # Worker processes: their fork server (if they come from one) boots meanwhile,
        # while this call imports and sets up the engine (see _start.warm_up)
        from ._start import warm_up

        warm_up(fn)
    from ._engine import Engine, Job

    job = Job(fn, mode, checked, total)
    if opts.journal is None:
        return Engine(
            job, opts, chosen, ordered=ordered, fail_fast=fail_fast, shares_input=shares_input
        )
    from ._records import describe_function
    from ._resume import JournaledEngine

    return JournaledEngine(
        job,
        opts,
        chosen,
        ordered=ordered,
        fail_fast=fail_fast,
        function=function or describe_function(fn),
        keys=keys,
        key_fn=opts.key,
    )


def _extend(out: list[Any], piece: Piece, errors: str) -> None:
    """The outcomes of ``piece`` as ``errors`` says, at a cost per failure, not per task.

    ("raise" meets no failure here, the engine raised first: only RETRIED gaps.)
    """
    failures, values = piece.failures, piece.values
    if not failures:
        out.extend(values)
        return
    start = 0
    for i in sorted(failures):
        out.extend(values[start:i])
        failure = failures[i]
        if errors == "return" and failure is not RETRIED:
            out.append(failure.error)
        start = i + 1
    out.extend(values[start:])


def _check_fn(where: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{where}() needs a callable as its first argument, got {fn!r}")


def _checked_items(items: object) -> Iterable[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        kind = type(items).__name__
        raise TypeError(
            f"items must be an iterable of task inputs (a list, a generator...), got {kind}"
            + (": wrap a single string in a list" if isinstance(items, str | bytes) else "")
        )
    return items


def _length(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class ResultIterator(Iterator[Any]):
    """What :func:`imap` returns: an iterator of results with a live ``report``.

    Iterating it in a ``for`` loop runs at full speed (the loop talks to a generator
    directly). ``close()``, leaving a ``with`` block, or dropping it cancels what is left.
    """

    def __init__(self, engine: Engine, errors: str) -> None:
        self._engine = engine
        self._values = self._generate(engine, errors)

    @staticmethod
    def _generate(engine: Engine, errors: str) -> Iterator[Any]:
        for piece in engine.run():
            if piece.failures is None:
                yield from piece.values
            else:
                out: list[Any] = []
                _extend(out, piece, errors)
                yield from out

    def __iter__(self) -> Iterator[Any]:
        return self._values

    def __next__(self) -> Any:
        return next(self._values)

    @property
    def report(self) -> Report:
        """Counts so far (final once the iterator is exhausted or closed)."""
        return self._engine.report

    def close(self) -> None:
        """Stop the run: cancel what has not ended and release the workers."""
        self._values.close()  # type: ignore[attr-defined]
        self._engine.close()

    def __enter__(self) -> ResultIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _outcomes(piece: Piece, keys: list[Hashable] | None) -> Iterator[Outcome]:
    if piece.recorded is not None:  # resumed from the journal: as it ended back then
        from ._records import outcome_from_row

        for i, row in enumerate(piece.recorded):
            yield outcome_from_row(row, keys[piece.seq + i] if keys is not None else piece.seq + i)
        return
    failures = piece.failures or {}
    for i, value in enumerate(piece.values):
        key = keys[piece.seq + i] if keys is not None else piece.seq + i
        ran, at = piece.ran(i)  # a retried task ended in a piece of its own
        attempt, worker, duration = ran.attempt, ran.worker, ran.duration
        started = ran.started + at * duration
        failure = failures.get(i)
        if failure is None:
            yield Outcome(key, "ok", value, None, None, attempt, started, duration, worker)
        elif failure is not RETRIED:
            yield Outcome(
                key,
                failure.status,
                None,
                failure.error,
                failure.traceback,
                attempt,
                started,
                duration,
                worker,
            )


class Runner:
    """Keyed tasks, each with its own function: ``add`` them, then ``run`` once.

    ``run()`` returns :class:`Results` (key -> value or exception). ``results`` and
    ``report`` stay available afterwards, also after Ctrl+C, holding what had ended.
    """

    def __init__(self, **options: Any) -> None:
        self._options = make_options("Runner", options, exclude=("errors", "key"))
        self._keys: list[Hashable] = []
        self._seen: set[Hashable] = set()
        self._tasks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._engine: Engine | None = None
        self.results = Results()

    def add(self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Add the task ``fn(*args, **kwargs)`` under ``key``."""
        if self._engine is not None:
            raise RuntimeError("this Runner has already run; a Runner is one-shot: make a new one")
        try:
            duplicate = key in self._seen
        except TypeError:
            raise TypeError(f"task key {key!r} is not hashable; use a str, int or tuple") from None
        if duplicate:
            raise ValueError(f"duplicate task key {key!r}: each task needs its own key")
        _check_fn("Runner.add", fn)
        self._seen.add(key)
        self._keys.append(key)
        self._tasks.append((fn, args, kwargs))

    def __len__(self) -> int:
        return len(self._tasks)

    def run(self) -> Results:
        """Run every task added; return their results by key, in the order added."""
        return self._run()

    def _run(self, each: Callable[[Outcome], object] | None = None) -> Results:
        """:meth:`run`, calling ``each`` with every outcome as it comes (the CLI's output)."""
        if self._engine is not None:
            raise RuntimeError("this Runner has already run; a Runner is one-shot: make a new one")
        probe = next(
            (f for f, _, _ in self._tasks if is_async_callable(f)),
            self._tasks[0][0] if self._tasks else None,
        )
        self._engine = _engine(
            None,
            FULL,
            self._tasks,
            self._options,
            ordered=False,
            fail_fast=False,
            probe=probe,
            keys=self._keys,
            function=_functions(self._tasks) if self._options.journal is not None else None,
        )
        stream = self._stream()
        try:
            for outcome in stream:
                self.results._add(outcome)
                if each is not None:
                    each(outcome)
        finally:
            # Stopped in ``each`` (Ctrl+C while writing a line), the engine would stay
            # open until its generator is collected: close it now, as its own stop does.
            stream.close()
            self._engine.close()
            self._finish(each)
        return self.results

    def _stream(self) -> Generator[Outcome, None, None]:
        """Each task's outcome as it ends (the command line writes them out one by one)."""
        assert self._engine is not None
        for piece in self._engine.run():
            yield from _outcomes(piece, self._keys)

    def _finish(self, each: Callable[[Outcome], object] | None = None) -> None:
        assert self._engine is not None
        for piece in self._engine.leftover():
            for outcome in _outcomes(piece, self._keys):
                self.results._add(outcome)
                if each is not None:
                    each(outcome)
        ended = Results()
        for key in self._keys:
            found = self.results.outcomes.get(key)
            if found is not None:
                ended._add(found)
        ended.report = self._engine.report
        self.results = ended

    @property
    def report(self) -> Report:
        """Counts of the run (all zero before ``run``)."""
        return self._engine.report if self._engine is not None else Report()


def _functions(tasks: Iterable[tuple[Callable[..., Any], Any, Any]]) -> str:
    """The functions of a Runner's tasks, each named once, as the journal records them."""
    from ._records import describe_function

    unique = {id(fn): fn for fn, _, _ in tasks}  # by identity: a callable may not hash
    return ", ".join(dict.fromkeys(describe_function(fn) for fn in unique.values())) or "-"


class Parallelized(Generic[T]):
    """Iterate ``(kwargs, result, error)`` for ``fn(**kwargs)`` of every item, as tasks end.

    Use it as a context manager; ``pbar`` is the progress bar (a do-nothing object when
    progress is off), for ``pbar.set_postfix(...)`` or ``pbar.write(...)``. Leaving the
    block early cancels what has not ended. Inside an event loop, use ``async with`` and
    ``async for``: coroutine functions then run on that loop.
    """

    def __init__(
        self, fn: Callable[..., T], kwargs_items: Iterable[Mapping[str, Any]], /, **options: Any
    ) -> None:
        _check_fn("Parallelized", fn)
        opts = make_options("Parallelized", options, exclude=("errors",))
        self._engine = _engine(
            fn,
            KWARGS,
            _checked_kwargs(_checked_items(kwargs_items)),
            opts,
            ordered=False,
            fail_fast=False,
            total=_length(kwargs_items),
        )
        self._iterator: Iterator[tuple[Mapping[str, Any], T | None, BaseException | None]] | None
        self._iterator = None
        self._async_iterator: (
            AsyncGenerator[tuple[Mapping[str, Any], T | None, BaseException | None], None] | None
        ) = None

    def __enter__(self) -> Parallelized[T]:
        self._engine.open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pbar(self) -> Any:
        """The tqdm bar of this run (a do-nothing stand-in when progress is off)."""
        self._engine.open()
        return self._engine.bar

    @property
    def report(self) -> Report:
        return self._engine.report

    def __iter__(self) -> Iterator[tuple[Mapping[str, Any], T | None, BaseException | None]]:
        if self._iterator is None:
            self._iterator = self._generate()
        return self._iterator

    def _generate(self) -> Iterator[tuple[Mapping[str, Any], T | None, BaseException | None]]:
        for piece in self._engine.run():
            yield from _triples(piece)

    def close(self) -> None:
        """Cancel what has not ended and release the workers."""
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]
        self._engine.close()

    # --- the same, inside an event loop: ``async with`` / ``async for`` -----------------

    async def __aenter__(self) -> Parallelized[T]:
        self._engine.open()  # on the loop: coroutine functions run on it
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[tuple[Mapping[str, Any], T | None, BaseException | None]]:
        if self._async_iterator is None:
            self._async_iterator = self._agenerate()
        return self._async_iterator

    async def _agenerate(
        self,
    ) -> AsyncGenerator[tuple[Mapping[str, Any], T | None, BaseException | None], None]:
        async for piece in self._engine.arun():
            for triple in _triples(piece):
                yield triple

    async def aclose(self) -> None:
        """``close`` for ``async with``: also waits until cancelled coroutines ended."""
        if self._async_iterator is not None:
            await self._async_iterator.aclose()
        await self._engine.aclose()


def _triples(piece: Piece) -> Iterator[tuple[Mapping[str, Any], Any, BaseException | None]]:
    """``(kwargs, result, error)`` of each task of ``piece``, as Parallelized yields them."""
    failures = piece.failures or {}
    for i, kwargs in enumerate(piece.items):
        failure = failures.get(i)
        if failure is None:
            yield kwargs, piece.values[i], None
        elif failure is not RETRIED:
            yield kwargs, None, failure.error


def _checked_kwargs(items: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(
                f"Parallelized needs a mapping of keyword arguments per task; item {index} is "
                f"a {type(item).__name__}: {item!r:.80}"
            )
        yield item
