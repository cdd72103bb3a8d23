"""Cleanup that a second Ctrl+C must not cut short.

Impatient users press Ctrl+C twice. The first one starts the cleanup (kill the worker
processes, close the bar); a second one a few milliseconds later would raise
KeyboardInterrupt in the middle of it and leave workers running at full speed. While the
cleanup runs, SIGINT is only noted; it is delivered when the cleanup is done, unless a
KeyboardInterrupt is already on its way out.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["ctrl_c_deferred", "leave_ctrl_c_to_the_main_thread"]


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold SIGINT for the duration of the block (main thread only: only it gets one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield  # ignored, or left to the OS: Python raises nothing for it
        return
    noted: list[FrameType | None] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if noted and not isinstance(sys.exception(), KeyboardInterrupt):
            previous(signal.SIGINT, noted[0])  # the default handler raises it now


def leave_ctrl_c_to_the_main_thread() -> None:
    """Block SIGINT in the calling thread (one that taskfan started).

    The OS may deliver a Ctrl+C to any thread that does not block it, for instance while
    the main thread blocks signals for an instant as it starts a thread. CPython runs the
    handler in the main thread only, and a main thread asleep waiting for results is not
    woken by a signal that another thread took: the run would not stop. Blocked in every
    thread of ours, the signal waits for the main thread instead.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
