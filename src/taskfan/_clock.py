"""Time as an object, so that retry, backoff and rate logic can run in virtual time."""

from __future__ import annotations

import time

__all__ = ["Clock", "MockClock", "SystemClock"]


class Clock:
    """The interface: a monotonic ``now()``, the epoch ``time()`` and ``sleep()``."""

    def now(self) -> float:
        raise NotImplementedError

    def time(self) -> float:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def asleep(self, seconds: float) -> None:
        """``sleep`` for an event loop: the loop runs other tasks meanwhile."""
        raise NotImplementedError

    @property
    def virtual(self) -> bool:
        """Does time move only when someone sleeps (a test's clock)?"""
        return False


class SystemClock(Clock):
    """Real time. ``sleep`` is interruptible by Ctrl+C like ``time.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, seconds))


class MockClock(Clock):
    """Virtual time for tests: ``sleep`` jumps forward at once and records each jump."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return 1_700_000_000.0 + self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)  # the loop's other tasks still get their turn

    @property
    def virtual(self) -> bool:
        return True

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep."""
        self._now += seconds
