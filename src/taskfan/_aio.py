"""``amap`` and ``aimap``: the same runs, for code already inside an event loop.

The engine's policy is the one every front uses; only its driver differs (it awaits
instead of blocking, see ``Engine.arun``). Coroutine functions run on the caller's loop;
plain functions on a thread or process backend, awaited without blocking the loop.
Input may be a plain or an async iterable, pulled lazily through the window.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any

from ._api import _check_fn, _extend, options_keeping_all
from ._api import _engine as _make_engine
from ._engine import Engine, Feed, Piece, TaskRaisedStopIteration
from ._options import Options, Plan, check_flag, make_options, plan
from ._outcome import Report
from .backends._base import SINGLE

__all__ = ["AsyncResultIterator", "aimap", "amap"]


def aimap(
    fn: Callable[..., Any], items: Iterable[Any] | AsyncIterable[Any], /, *, ordered: bool = True,
    **options: Any,
) -> AsyncResultIterator:  # fmt: skip
    """Results of ``fn`` over ``items`` as an async iterator: ``async for r in aimap(...)``.

    Breaking out of the loop, ``aclose()``, leaving ``async with``, or cancelling the
    task that iterates stops the run and releases every worker.
    """
    _check_fn("aimap", fn)
    check_flag("ordered", ordered)
    opts = make_options("aimap", options)
    engine, feed = _engine("aimap", fn, items, opts, ordered=ordered)
    return AsyncResultIterator(engine, feed, opts.errors)


async def amap(
    fn: Callable[..., Any], items: Iterable[Any] | AsyncIterable[Any], /, **options: Any
) -> list[Any]:
    """``await amap(fn, items)``: the list of results, in input order, like ``map``."""
    _check_fn("amap", fn)
    opts = options_keeping_all("amap", options)
    engine, feed = _engine("amap", fn, items, opts, ordered=True)
    out: list[Any] = []
    run = engine.arun(feed)
    try:
        async for piece in run:
            _extend(out, piece, opts.errors)
    except TaskRaisedStopIteration as carrier:
        raise carrier.error from carrier.error.__cause__
    finally:
        await run.aclose()
    return out


def _engine(
    where: str,
    fn: Callable[..., Any],
    items: Iterable[Any] | AsyncIterable[Any],
    opts: Options,
    *,
    ordered: bool,
) -> tuple[Engine, Feed | None]:
    chosen = plan(opts, fn)
    if chosen.backend == "serial":
        if opts.backend == "serial":
            raise ValueError(
                f"{where}() with backend='serial' would run each task inline and block the "
                "event loop meanwhile; use backend='thread' (or leave backend='auto')"
            )
        chosen = Plan("thread", chosen.workers)  # one worker thread, not inline
    if isinstance(items, AsyncIterable):
        # The engine takes nothing from ``items`` itself: the feed brings what arrives.
        engine = _make_engine(fn, SINGLE, iter(()), opts, ordered=ordered, chosen=chosen)
        return engine, Feed(items)
    return _make_engine(fn, SINGLE, items, opts, ordered=ordered, chosen=chosen), None


class AsyncResultIterator(AsyncIterator[Any]):
    """What :func:`aimap` returns: an async iterator of results with a live ``report``."""

    def __init__(self, engine: Engine, feed: Feed | None, errors: str) -> None:
        self._engine = engine
        self._run = engine.arun(feed)
        self._values = self._generate(self._run, errors)

    @staticmethod
    async def _generate(run: AsyncIterator[Piece], errors: str) -> AsyncGenerator[Any, None]:
        async for piece in run:
            if piece.failures is None:
                for value in piece.values:
                    yield value
            else:
                out: list[Any] = []
                _extend(out, piece, errors)
                for value in out:
                    yield value

    def __aiter__(self) -> AsyncResultIterator:
        return self

    async def __anext__(self) -> Any:
        return await self._values.__anext__()

    @property
    def report(self) -> Report:
        """Counts so far (final once the iterator is exhausted or closed)."""
        return self._engine.report

    async def aclose(self) -> None:
        """Stop the run: cancel what has not ended and release the workers."""
        await self._values.aclose()
        await self._run.aclose()
        await self._engine.aclose()

    async def __aenter__(self) -> AsyncResultIterator:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (a ``break`` out of ``async for``): cancel what runs
        # and release the workers now; the loop finishes the generators' own cleanup.
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()
