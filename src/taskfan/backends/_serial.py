"""The serial backend: every call runs inline, in the calling thread, when submitted."""

from __future__ import annotations

import time
from typing import Any

from ._base import Backend, Call, Done, Failure, Setup, run_items

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """No pool at all: ``submit`` runs the call at once; ``wait`` hands back its result.

    Ctrl+C raises inside the running task, like in a plain loop.
    """

    name = "serial"
    calls_per_worker = 1

    def __init__(self, workers: int, clock: Any) -> None:
        super().__init__(workers, clock)
        self._done: list[Done] = []

    def start(self, setup: Setup) -> None:
        if setup.initializer is not None:
            setup.initializer(*setup.initargs)

    def submit(self, call: Call) -> None:
        out: list[Any] = []
        errors: dict[int, Failure] = {}
        started, t0 = time.time(), time.perf_counter()
        try:
            run_items(call, out, errors)
        finally:
            # Also on Ctrl+C inside a task: the items before it did end, and keep their
            # results (the engine collects them on its way out).
            elapsed = time.perf_counter() - t0
            self._done.append(Done(call.id, out, errors or None, None, "main", started, elapsed))

    def wait(self, timeout: float | None) -> list[Done]:
        done, self._done = self._done, []
        return done

    def close(self, cancel: bool) -> None:
        self._done = []
