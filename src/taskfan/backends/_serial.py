"""The serial backend: every call runs inline, in the calling thread, when submitted."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from ._base import Backend, Call, Done, Failure, Setup, capture, run_items

__all__ = ["SerialBackend"]


class SerialBackend(Backend):
    """No pool at all: ``submit`` runs the call at once; ``wait`` hands back its result.

    A task's exception is its result, whatever its type, as on every other backend: a
    task that raises ``KeyboardInterrupt`` or ``SystemExit`` itself fails like any other.
    A real Ctrl+C is told apart by the SIGINT handler installed for the run, and stops
    the run as in a plain loop.
    """

    name = "serial"
    calls_per_worker = 1

    def __init__(self, workers: int, clock: Any) -> None:
        super().__init__(workers, clock)
        self._done: list[Done] = []
        self._interrupted = False
        self._broken: Failure | None = None

    def start(self, setup: Setup) -> None:
        if setup.initializer is not None:
            with self._watching_ctrl_c():
                try:
                    setup.initializer(*setup.initargs)
                except BaseException as error:
                    if self._is_ctrl_c(error):
                        raise
                    self._broken = capture(error)  # reported on every task, as elsewhere
                    self._broken.retry = False

    def submit(self, call: Call) -> None:
        out: list[Any] = []
        errors: dict[int, Failure] = {}
        started, t0 = time.time(), time.perf_counter()
        try:
            if self._broken is not None:
                out.extend([None] * len(call.items))
                errors.update(dict.fromkeys(range(len(call.items)), self._broken))
            else:
                with self._watching_ctrl_c():
                    run_items(call, out, errors, catch=BaseException, passthrough=self._is_ctrl_c)
        finally:
            # Also on Ctrl+C inside a task: the items before it did end, and keep their
            # results (the engine collects them on its way out).
            elapsed = time.perf_counter() - t0
            self._done.append(Done(call.id, out, errors or None, None, "main", started, elapsed))

    def _is_ctrl_c(self, error: BaseException) -> bool:
        return isinstance(error, KeyboardInterrupt) and self._interrupted

    def wait(self, timeout: float | None) -> list[Done]:
        done, self._done = self._done, []
        return done

    def close(self, cancel: bool) -> None:
        self._done = []

    def wake_me(self, notify: Callable[[], None] | None) -> None:
        # Calls run inline, in submit: whatever ended is there already.
        if notify is not None and self._done:
            notify()

    # --- telling a real Ctrl+C from a task's own KeyboardInterrupt ------------------------

    @contextmanager
    def _watching_ctrl_c(self) -> Iterator[None]:
        """While tasks run, note a real SIGINT before it raises KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread gets Ctrl+C: any KeyboardInterrupt is a task's
            return
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            yield  # SIGINT ignored or left to the OS: Python raises nothing for it
            return

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            self._interrupted = True
            previous(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
