"""What comes back from a run: one ``Outcome`` per task, ``Results`` by key, a ``Report``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, Literal

from ._plain import Frozen

__all__ = ["STATUSES", "Outcome", "Report", "Results", "Status"]

Status = Literal["ok", "failed", "timeout", "crashed", "cancelled"]
STATUSES: tuple[Status, ...] = ("ok", "failed", "timeout", "crashed", "cancelled")


class Outcome(Frozen):
    """How one task ended.

    ``started`` is in epoch seconds and ``duration`` in seconds, for the last attempt.
    Tasks that travelled to a worker in one chunk share the chunk's time evenly.
    """

    __slots__ = (
        "key",
        "status",
        "value",
        "error",
        "traceback",
        "attempts",
        "started",
        "duration",
        "worker",
    )
    key: Hashable
    status: Status
    value: Any
    error: BaseException | None
    traceback: str | None
    attempts: int
    started: float
    duration: float
    worker: str

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        key: Hashable,
        status: Status,
        value: Any = None,
        error: BaseException | None = None,
        traceback: str | None = None,
        attempts: int = 1,
        started: float = 0.0,
        duration: float = 0.0,
        worker: str = "",
    ) -> None:
        # One per task: set field by field, not through Plain._fill's loop (1.7 us more
        # per outcome here, a sixth of a second for the outcomes of 100,000 tiny tasks)
        _set = object.__setattr__
        _set(self, "key", key)
        _set(self, "status", status)
        _set(self, "value", value)
        _set(self, "error", error)
        _set(self, "traceback", traceback)
        _set(self, "attempts", attempts)
        _set(self, "started", started)
        _set(self, "duration", duration)
        _set(self, "worker", worker)

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


class Report(Frozen):
    """Counts of a run, as an immutable snapshot.

    ``failed`` counts every task that ended without a value (timeouts and crashes
    included); tasks that never finished because the run stopped count only as
    ``cancelled``. ``retried`` is the number of extra attempts made.
    """

    __slots__ = (
        "total",
        "ok",
        "failed",
        "timed_out",
        "crashed",
        "cancelled",
        "retried",
        "resumed",
        "elapsed",
    )
    total: int
    ok: int
    failed: int
    timed_out: int
    crashed: int
    cancelled: int
    retried: int
    resumed: int
    elapsed: float

    def __init__(  # noqa: PLR0917 - built positionally, as the dataclass it was
        self,
        total: int = 0,
        ok: int = 0,
        failed: int = 0,
        timed_out: int = 0,
        crashed: int = 0,
        cancelled: int = 0,
        retried: int = 0,
        resumed: int = 0,
        elapsed: float = 0.0,
    ) -> None:
        self._fill(total, ok, failed, timed_out, crashed, cancelled, retried, resumed, elapsed)

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
