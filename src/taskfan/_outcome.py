"""What comes back from a run: one ``Outcome`` per task, ``Results`` by key, a ``Report``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["STATUSES", "Outcome", "Report", "Results", "Status"]

Status = Literal["ok", "failed", "timeout", "crashed", "cancelled"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "timeout", "crashed", "cancelled")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one task ended.

    ``started`` is in epoch seconds and ``duration`` in seconds, for the last attempt.
    Tasks that travelled to a worker in one chunk share the chunk's time evenly.
    """

    key: Hashable
    status: Status
    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    attempts: int = 1
    started: float = 0.0
    duration: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        """True when the task returned a value."""
        return self.status == "ok"

    def unwrap(self) -> Any:
        """The task's value, or raise the exception it ended with."""
        if self.status == "ok":
            return self.value
        assert self.error is not None
        raise self.error


@dataclass(frozen=True, slots=True)
class Report:
    """Counts of a run, as an immutable snapshot.

    ``failed`` counts every task that ended without a value (timeouts and crashes
    included); tasks that never finished because the run stopped count only as
    ``cancelled``. ``retried`` is the number of extra attempts made.
    """

    total: int = 0
    ok: int = 0
    failed: int = 0
    timed_out: int = 0
    crashed: int = 0
    cancelled: int = 0
    retried: int = 0
    resumed: int = 0
    elapsed: float = 0.0

    @property
    def tasks_per_s(self) -> float:
        """Finished tasks per second of elapsed time."""
        done = self.ok + self.failed
        return done / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        parts = [f"{self.ok} ok"]
        if self.failed:
            kinds = [
                f"{n} {what}"
                for n, what in ((self.timed_out, "timed out"), (self.crashed, "crashed"))
                if n
            ]
            parts.append(f"{self.failed} failed" + (f" ({', '.join(kinds)})" if kinds else ""))
        for n, what in (
            (self.cancelled, "cancelled"),
            (self.retried, "retried"),
            (self.resumed, "resumed"),
        ):
            if n:
                parts.append(f"{n} {what}")
        rate = f"{self.tasks_per_s:,.1f}/s"
        return f"{self.total} tasks: {', '.join(parts)} in {self.elapsed:.2f} s ({rate})"


class Results(dict[Hashable, Any]):
    """Key -> value, or -> the exception for a failed task, in the order tasks were added.

    Built up while the run goes: after Ctrl+C it holds the tasks that had ended.
    """

    def __init__(self, outcomes: Iterable[Outcome] = ()) -> None:
        super().__init__()
        self.outcomes: dict[Hashable, Outcome] = {}
        self.report = Report()
        for outcome in outcomes:
            self._add(outcome)

    def _add(self, outcome: Outcome) -> None:
        self.outcomes[outcome.key] = outcome
        self[outcome.key] = outcome.value if outcome.status == "ok" else outcome.error

    @property
    def ok(self) -> dict[Hashable, Any]:
        """Key -> value of the tasks that succeeded."""
        return {k: o.value for k, o in self.outcomes.items() if o.status == "ok"}

    @property
    def failed(self) -> dict[Hashable, BaseException]:
        """Key -> exception of the tasks that ended without a value."""
        return {
            k: o.error for k, o in self.outcomes.items() if o.status != "ok" and o.error is not None
        }

    def raise_for_errors(self) -> None:
        """Raise an ``ExceptionGroup`` of every failure; do nothing when all succeeded."""
        failed = self.failed
        if not failed:
            return
        errors = list(failed.values())
        if not all(isinstance(e, Exception) for e in errors):
            raise BaseExceptionGroup(f"{len(errors)} of {len(self)} tasks failed", errors)
        keys = ", ".join(repr(k) for k in list(failed)[:5]) + (", ..." if len(failed) > 5 else "")
        raise ExceptionGroup(
            f"{len(errors)} of {len(self)} tasks failed (keys {keys})",
            [e for e in errors if isinstance(e, Exception)],
        )
