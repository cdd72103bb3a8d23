"""The serial backend: every call runs inline, in the calling thread, when submitted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import Backend, Call, Done, run_call

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

    def start(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def submit(self, call: Call) -> None:
        self._done.append(run_call(call, "main"))

    def wait(self, timeout: float | None) -> list[Done]:
        done, self._done = self._done, []
        return done

    def close(self, cancel: bool) -> None:
        self._done = []
