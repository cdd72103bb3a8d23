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

__all__ = ["ctrl_c_deferred"]


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
