"""Observers of a run: the tqdm bar and the log lines. The engine knows neither in detail.

Both count items, never chunks, and show how many ended ok and how many failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._clock import Clock
from ._outcome import Report

if TYPE_CHECKING:
    import logging

__all__ = ["BarObserver", "LogObserver", "NullBar", "Observer", "Tally", "make_observers"]


class Tally:
    """Live counters of a run, owned and updated by the engine only."""

    __slots__ = ("crashed", "failed", "ok", "pulled", "resumed", "retried", "timed_out")

    def __init__(self) -> None:
        self.pulled = self.ok = self.failed = self.timed_out = self.crashed = 0
        self.retried = self.resumed = 0


class Observer:
    """Told about progress by the engine. ``next_tick`` asks for a wake-up at a time."""

    def update(self, finished: int, tally: Tally) -> None:
        """``finished`` more tasks ended (ok or failed)."""

    def next_tick(self) -> float | None:
        return None

    def tick(self, now: float, tally: Tally) -> None:
        """Called at (or after) the time :meth:`next_tick` asked for."""

    def close(self, report: Report) -> None:
        """The run ended (normally or not)."""


class NullBar:
    """Stands in for the tqdm bar when progress is off: every method does nothing."""

    n = 0
    total: int | None = None

    def __getattr__(self, name: str) -> Any:
        return _nothing

    def __bool__(self) -> bool:
        return False


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class BarObserver(Observer):
    """A tqdm bar on stderr counting tasks, with ok / failed counts beside it."""

    def __init__(self, total: int | None, desc: str | None) -> None:
        from tqdm.auto import tqdm

        class _Bar(tqdm):  # type: ignore[type-arg]
            # tqdm's monitor thread would outlive the call; we update often enough.
            monitor_interval = 0

        self.bar = _Bar(
            total=total, desc=desc, unit="task", miniters=1, dynamic_ncols=True, file=sys.stderr
        )
        self._shown = (-1, -1, -1)

    def update(self, finished: int, tally: Tally) -> None:
        state = (tally.ok, tally.failed, tally.retried)
        if state != self._shown:
            self._shown = state
            self.bar.set_postfix_str(_counts(tally.ok, tally.failed, tally.retried), refresh=False)
        self.bar.update(finished)

    def close(self, report: Report) -> None:
        self.bar.set_postfix_str(_counts(report.ok, report.failed, report.retried), refresh=False)
        self.bar.close()


def _counts(ok: int, failed: int, retried: int) -> str:
    text = f"ok={ok} failed={failed}"
    return f"{text} retried={retried}" if retried else text


class LogObserver(Observer):
    """A line on the ``taskfan`` logger every ``every`` seconds, and one at the end."""

    def __init__(self, total: int | None, desc: str | None, every: float, clock: Clock) -> None:
        self._total, self._label, self._every = total, desc or "taskfan", every
        self._start = clock.now()
        self._next = self._start + every
        self._log, self._undo = _make_heard()

    def next_tick(self) -> float | None:
        return self._next

    def tick(self, now: float, tally: Tally) -> None:
        self._next = now + self._every
        done = tally.ok + tally.failed
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        of = f"/{self._total}" if self._total is not None else ""
        eta = ""
        if self._total is not None and rate > 0:
            eta = f", ETA {max(0.0, (self._total - done) / rate):.0f} s"
        self._log.info(
            "%s: %d%s done (%d ok, %d failed), %.1f/s%s",
            self._label,
            done,
            of,
            tally.ok,
            tally.failed,
            rate,
            eta,
        )

    def close(self, report: Report) -> None:
        try:
            self._log.info("%s: %s", self._label, report)
        finally:
            self._undo()


def _make_heard() -> tuple[logging.Logger, Callable[[], None]]:
    """Make sure the log lines asked for are seen; returns the logger, and how to undo it.

    A program that never configured logging would drop them (Python's last-resort
    handler prints warnings only): for the run, they then go to stderr. A logger set
    above INFO is lowered to INFO for the run, since the user asked for these lines.
    """
    import logging  # only when asked for: importing it costs the first call milliseconds

    logger = logging.getLogger("taskfan")
    handler: logging.Handler | None = None
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)

    def undo() -> None:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(level)

    return logger, undo


def make_observers(
    mode: bool | str | None, total: int | None, desc: str | None, every: float, clock: Clock
) -> list[Observer]:
    """The observers the ``progress`` option asks for."""
    if mode == "log":
        return [LogObserver(total, desc, every, clock)]
    if mode is None:
        mode = _stderr_is_terminal()
    return [BarObserver(total, desc)] if mode else []


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
