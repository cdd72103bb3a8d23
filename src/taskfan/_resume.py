"""The engine with a journal: finished keys come back without running, ended ones are written.

It adds three things to :class:`Engine` and touches none of its policy:

- intake: items taken from the input whose key the journal holds as finished become
  pieces of their own, settled at once from the recorded outcome (``resumed``); the
  others go on to the workers as usual, in runs of consecutive items;
- settling: every piece that ends is handed to the :class:`Recorder` (one queue put);
- open and close: the journal is locked and checked before anything runs, and written
  out, its lock released, however the run ends.

Without ``journal=`` none of this exists: the fronts build a plain :class:`Engine`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ._engine import Engine, Job, Piece, Span
from ._interrupts import ctrl_c_deferred
from ._journal import Recorder, Store
from ._options import Options, Plan
from ._records import Cell, Row, decode_value, error_columns, error_of_row, key_cell, snapshot
from .backends._base import Failure

__all__ = ["JournaledEngine"]

#: keys looked up in the journal at once, when they are known before items are taken
LOOK_AHEAD = 2048
#: most seconds the main thread waits for results without a look at pending signals
CTRL_C_CHECK = 0.25


class JournaledEngine(Engine):
    """An :class:`Engine` that resumes from and records to ``options.journal``.

    ``keys`` are the tasks' keys by position when the front knows them (Runner);
    ``key_fn`` gives an item's key (``key=``); with neither, a task's key is its position.
    """

    fills_in_place = False  # every task that ends is recorded in _settle

    def __init__(
        self,
        job: Job,
        options: Options,
        plan: Plan,
        *,
        ordered: bool,
        fail_fast: bool,
        function: str,
        keys: Sequence[Hashable] | None = None,
        key_fn: Callable[[Any], Any] | None = None,
        **engine: Any,
    ) -> None:
        # ``engine``: Engine's own keywords (a test's clock, rng and scripted backend)
        super().__init__(job, options, plan, ordered=ordered, fail_fast=fail_fast, **engine)
        assert options.journal is not None
        self._store = Store(options.journal, function, options.rerun)
        self._recorder: Recorder | None = None
        self._keys, self._key_fn = keys, key_fn
        self._texts: list[Cell] | None = None  # stored keys by position, known up front
        self._taken: dict[int, Cell] = {}  # stored keys of items taken (key=, lazy input)
        self._seen: dict[Cell, int] = {}  # stored key -> position, to refuse duplicates
        self._matched = 0  # keys of this run found in the journal
        self._ahead: dict[int, Row] = {}  # position -> row, of tasks known to be resumed
        self._ahead_end = 0  # positions below this were looked up

    # --- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Check every key that can be known now, then lock and open the journal."""
        if self._opened:
            return
        self._prepare_keys()
        store = self._store
        store.open()
        try:
            self._recorder = Recorder(store.path, store.run_id)
            self._warn_if_other_function()
            super().open()
        except BaseException:
            self._close_journal()
            raise

    def close(self) -> None:
        if self._closed:
            return
        try:
            super().close()
        finally:
            with ctrl_c_deferred():
                self._close_journal()

    def _close_journal(self) -> None:
        try:
            if self._recorder is not None:
                recorder, self._recorder = self._recorder, None
                recorder.close()
        finally:
            self._store.close()
        self._warn_if_no_key_matched()

    def _wake_in(self) -> float | None:
        """Never wait for a result longer than :data:`CTRL_C_CHECK` seconds.

        The writer thread runs Python code while the main thread waits. In CPython 3.11
        a thread that takes the GIL recomputes the "something to handle" flag from its
        own point of view, and only the main thread handles signals: a Ctrl+C that lands
        while the main thread is between two waits can be cleared that way, and the main
        thread then sleeps on, the run not stopped (seen about once in 60 tries). Waking
        now and then, the main thread sees the signal within that time.
        """
        wake = super()._wake_in()
        if self._inflight and (wake is None or wake > CTRL_C_CHECK):
            return CTRL_C_CHECK
        return wake

    # --- keys -------------------------------------------------------------------------------

    def _prepare_keys(self) -> None:
        if self._keys is not None:
            self._texts = [self._check_key(k, i) for i, k in enumerate(self._keys)]
        elif self._key_fn is not None and self._sequence is not None:
            self._texts = [self._key_of(item, i) for i, item in enumerate(self._sequence)]

    def _key_of(self, item: Any, position: int) -> Cell:
        assert self._key_fn is not None
        try:
            key = self._key_fn(item)
        except Exception as error:
            error.add_note(f"taskfan: raised by key= for item {position} ({item!r:.80})")
            raise
        return self._check_key(key, position)

    def _check_key(self, key: object, position: int) -> Cell:
        try:
            text = key_cell(key)
        except TypeError as error:
            raise TypeError(f"item {position}: {error}") from None
        first = self._seen.setdefault(text, position)
        if first != position:
            raise ValueError(
                f"duplicate task key {key!r} (items {first} and {position}): with a journal "
                "each task needs its own key, or the second would overwrite the first"
            )
        return text

    def _text(self, position: int) -> Cell:
        if self._texts is not None:
            return self._texts[position]
        if self._key_fn is not None:
            return self._taken[position]
        return position

    # --- intake -----------------------------------------------------------------------------

    def _next_span(self, window: int, cap: int) -> Span | None:
        while True:
            if self._store.lookups and not self._pending and not self._exhausted:
                self._resume_ahead(window)
            before = self.tally.pulled
            span = super()._next_span(window, cap)
            if span is None or self.tally.pulled == before:
                return span  # nothing taken, or a span queued earlier (already looked up)
            span = self._intake(span)
            if span is not None:
                return span
            # every item taken was resumed: take more while the window has room

    def _resume_ahead(self, window: int) -> None:
        """Take the next items at once when the journal holds them all, however many.

        Chunks are sized from measured calls, and nothing is measured while tasks are
        resumed: taken a chunk at a time, a resumed run would cost a piece per item.
        """
        if self._key_fn is not None and self._texts is None:
            return  # keys are known only once items are taken
        start = self.tally.pulled
        limit = window - self._held()
        rows: list[Row] = []
        while len(rows) < limit and (row := self._resumable_at(start + len(rows))) is not None:
            rows.append(row)
        if not rows:
            return
        items = self._take(len(rows))
        if len(items) < len(rows) or (
            self._sequence is not None and start + len(items) >= len(self._sequence)
        ):
            self._exhausted = True
        if items:
            self.tally.pulled += len(items)
            self._resume(Span(start, items), rows[: len(items)])

    def _resumable_at(self, position: int) -> Row | None:
        """The row of the task at ``position`` if it comes back without running (keys
        known ahead: positions, or the keys of a Runner or of key= over a list)."""
        if position >= self._ahead_end:
            self._look_ahead(position)
        return self._ahead.get(position)

    def _look_ahead(self, start: int) -> None:
        end = start + LOOK_AHEAD
        if self._texts is not None:
            end = min(end, len(self._texts))
        cells = self._texts[start:end] if self._texts is not None else range(start, end)
        rows = self._store.recorded_rows(cells)
        self._matched += len(rows)
        self._ahead = {}
        for position, cell in enumerate(cells, start):
            row = rows.get(cell)
            if row is not None and self._resumable(row):
                self._ahead[position] = row
        self._ahead_end = max(end, start + 1)

    def _intake(self, span: Span) -> Span | None:
        """Resume the items of ``span`` that the journal holds; the rest, to run."""
        n = len(span.items)
        if self._texts is None and self._key_fn is not None:
            for i, item in enumerate(span.items):
                self._taken[span.seq + i] = self._key_of(item, span.seq + i)
        if not self._store.lookups:
            return span
        found = self._found(span.seq, n)
        if not found:
            return span
        first: Span | None = None
        start = 0
        while start < n:
            resumed = span.seq + start in found
            stop = start + 1
            while stop < n and (span.seq + stop in found) == resumed:
                stop += 1
            part = span.sub(start, stop)
            if resumed:
                self._resume(part, [found[span.seq + i] for i in range(start, stop)])
            elif first is None:
                first = part
            else:
                self._pending.append(part)
            start = stop
        return first

    def _found(self, seq: int, n: int) -> dict[int, Row]:
        """Position -> row, of the tasks at ``[seq, seq + n)`` that are resumed."""
        if self._key_fn is None or self._texts is not None:
            found = {}
            for position in range(seq, seq + n):
                row = self._resumable_at(position)
                if row is not None:
                    found[position] = row
            return found
        cells = [self._taken[seq + i] for i in range(n)]
        rows = self._store.recorded_rows(cells)
        self._matched += len(rows)
        return {
            seq + i: row
            for i, cell in enumerate(cells)
            if (row := rows.get(cell)) is not None and self._resumable(row)
        }

    def _resumable(self, row: Row) -> bool:
        """Does a task recorded as ``row`` come back without running (``rerun``)?"""
        return self.options.rerun == "missing" or row[1] == "ok"

    def _resume(self, span: Span, rows: list[Row]) -> None:
        """Settle ``span``'s tasks as the journal recorded them; they do not run."""
        values = [decode_value(row[2]) for row in rows]
        failures: dict[int, Failure] = {}
        for i, row in enumerate(rows):
            error = error_of_row(row)
            if error is not None:
                failures[i] = Failure(error, row[10] or "", row[1], retry=False)
        if self._taken:
            for i in range(len(rows)):
                del self._taken[span.seq + i]
        piece = Piece(span.seq, span.items, values, failures or None, 1, "journal", 0.0, 0.0)
        piece.recorded = rows
        self.tally.resumed += len(rows)
        Engine._settle(self, piece)  # as any ended piece, but it is in the journal already

    # --- recording --------------------------------------------------------------------------

    def _settle(self, piece: Piece) -> None:
        if piece.recorded is None:
            self._record(piece)
        super()._settle(piece)

    def _record(self, piece: Piece) -> None:
        """Queue the tasks of ``piece`` that ended for good (not those going to a retry)."""
        if self._recorder is None:
            return  # closed already: nothing more is written
        n = len(piece.values)
        final: dict[int, tuple[str, str, str, bytes | None, str] | None] | None = None
        if piece.failures:
            final = {}
            for i, failure in piece.failures.items():
                if self._retryable(failure, piece.attempt):
                    final[i] = None
                else:
                    final[i] = (failure.status, *error_columns(failure.error, failure.traceback))
        texts: list[Cell] | None = None
        if self._texts is not None:
            texts = self._texts[piece.seq : piece.seq + n]
        elif self._key_fn is not None:
            taken, seq = self._taken, piece.seq
            texts = [
                taken[seq + i] if final and final.get(i, 0) is None else taken.pop(seq + i)
                for i in range(n)
            ]
        values = piece.values
        encoded = snapshot(values)
        p = piece
        self._recorder.put(
            (p.seq, texts, values, encoded, final, p.attempt, p.worker, p.started, p.duration)
        )

    # --- warnings ---------------------------------------------------------------------------

    def _warn_if_other_function(self) -> None:
        store = self._store
        last = store.last_function
        if last is None or last == store.function or self.options.rerun == "all":
            return
        warnings.warn(
            f"taskfan: the journal {store.path!r} holds outcomes of {last}, and this run calls "
            f"{store.function}: keys recorded there are returned as they were, without "
            "running. If the function changed on purpose, pass rerun='all' (or another "
            "journal) to run every task again.",
            UserWarning,
            stacklevel=2,
        )

    def _warn_if_no_key_matched(self) -> None:
        store = self._store
        if not store.lookups or self._matched or not self.tally.pulled:
            return
        warnings.warn(
            f"taskfan: none of the {self.tally.pulled} keys of this run were in the journal "
            f"{store.path!r}, which holds {store.recorded} other keys: did the input or key= "
            "change? Keys identify tasks across runs; a map's key is the item's position "
            "unless key= says otherwise.",
            UserWarning,
            stacklevel=2,
        )
