"""Counters and dicts that workers of a backend can update without losing an update."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any, Self

from .backends._registry import REGISTRY

__all__ = ["SafeCounter", "SafeDict"]


def _shared_between_processes(kind: str, backend: str) -> bool:
    """Do the tasks of ``backend`` run in other processes (on this machine)?"""
    # Workers on other machines cannot reach the server that holds the shared values.
    usable = ["auto", *(e.name for e in REGISTRY.values() if e.local)]
    if not isinstance(backend, str) or backend not in usable:
        raise ValueError(
            f"{kind}.make(backend) takes one of {', '.join(map(repr, usable))}; got {backend!r}"
        )
    return backend != "auto" and not REGISTRY[backend].in_process


class _Closable:
    """Shared state that may own a server process: close it, or use ``with``."""

    def close(self) -> None:
        """Release what this object owns (a server process for ``"process"``)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafeCounter(_Closable, ABC):
    """Named integer counters, safe to update from the workers of one backend.

    Make one with ``SafeCounter.make(backend)`` for the backend the tasks run on, and
    pass it to the tasks (as an argument or in a closure). For ``"process"`` the counts
    live in a small server process, and each increment happens there, under its lock:
    no update is ever lost. ``close()`` (or ``with``) stops that server.
    """

    @staticmethod
    def make(backend: str = "thread") -> SafeCounter:
        """A counter safe to update from ``backend``'s workers."""
        if _shared_between_processes("SafeCounter", backend):
            from ._shared import ServedCounter

            return ServedCounter()
        return _LockedCounter()

    @abstractmethod
    def increment(self, name: Hashable, n: int = 1) -> int:
        """Add ``n`` to counter ``name`` (created at 0) and return its new value."""

    @abstractmethod
    def get(self, name: Hashable) -> int:
        """The value of counter ``name`` (0 if it was never incremented)."""

    @abstractmethod
    def as_dict(self) -> dict[Hashable, int]:
        """A snapshot of every counter."""


class _LockedCounter(SafeCounter):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Hashable, int] = {}

    def increment(self, name: Hashable, n: int = 1) -> int:
        with self._lock:
            value = self._counts.get(name, 0) + n
            self._counts[name] = value
            return value

    def get(self, name: Hashable) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def as_dict(self) -> dict[Hashable, int]:
        with self._lock:
            return dict(self._counts)


class SafeDict(_Closable, ABC):
    """A dict safe to update from the workers of one backend: ``set``, ``get``, ``[key]``.

    For ``"process"`` the entries live in a small server process; ``close()`` (or
    ``with``) stops it.
    """

    @staticmethod
    def make(backend: str = "thread") -> SafeDict:
        """A dict safe to update from ``backend``'s workers."""
        if _shared_between_processes("SafeDict", backend):
            from ._shared import ServedDict

            return ServedDict()
        return _LockedDict()

    @abstractmethod
    def set(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``."""

    @abstractmethod
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""

    @abstractmethod
    def __getitem__(self, key: Hashable) -> Any:
        """The value under ``key``; KeyError if there is none."""

    @abstractmethod
    def as_dict(self) -> dict[Hashable, Any]:
        """A snapshot of every entry."""


class _LockedDict(SafeDict):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[Hashable, Any] = {}

    def set(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            return self._data.get(key, default)

    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            return self._data[key]

    def as_dict(self) -> dict[Hashable, Any]:
        with self._lock:
            return dict(self._data)
