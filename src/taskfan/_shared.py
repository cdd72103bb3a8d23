"""SafeCounter and SafeDict for worker processes: the state lives in one server process.

Every operation runs inside the server, under its lock, so an increment is one atomic
step there; a read-modify-write through a proxied dict would lose updates.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from multiprocessing.managers import BaseManager
from typing import Any

from ._safe import SafeCounter, SafeDict

__all__ = ["ServedCounter", "ServedDict"]


class _CounterStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Hashable, int] = {}

    def increment(self, name: Hashable, n: int) -> int:
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


class _DictStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[Hashable, Any] = {}

    def set(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value

    def lookup(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            return (True, self._data[key]) if key in self._data else (False, None)

    def as_dict(self) -> dict[Hashable, Any]:
        with self._lock:
            return dict(self._data)


class _Manager(BaseManager):
    pass


_Manager.register("Counter", _CounterStore)
_Manager.register("Dict", _DictStore)


def _serve(kind: str) -> tuple[Any, Callable[[], None]]:
    import multiprocessing

    from .backends._process import start_method

    manager = _Manager(ctx=multiprocessing.get_context(start_method()))
    manager.start()
    return getattr(manager, kind)(), manager.shutdown


class ServedCounter(SafeCounter):
    """A counter whose counts live in a server process (see the module docstring)."""

    def __init__(self, proxy: Any = None) -> None:
        self._stop: Any = None
        if proxy is None:
            proxy, shutdown = _serve("Counter")
            self._stop = weakref.finalize(self, shutdown)
        self._proxy = proxy

    def __reduce__(self) -> tuple[type[ServedCounter], tuple[Any]]:
        return (ServedCounter, (self._proxy,))  # a worker gets the proxy, not the server

    def increment(self, name: Hashable, n: int = 1) -> int:
        return int(self._proxy.increment(name, n))

    def get(self, name: Hashable) -> int:
        return int(self._proxy.get(name))

    def as_dict(self) -> dict[Hashable, int]:
        return dict(self._proxy.as_dict())

    def close(self) -> None:
        if self._stop is not None:
            self._stop()


class ServedDict(SafeDict):
    """A dict whose entries live in a server process (see the module docstring)."""

    def __init__(self, proxy: Any = None) -> None:
        self._stop: Any = None
        if proxy is None:
            proxy, shutdown = _serve("Dict")
            self._stop = weakref.finalize(self, shutdown)
        self._proxy = proxy

    def __reduce__(self) -> tuple[type[ServedDict], tuple[Any]]:
        return (ServedDict, (self._proxy,))

    def set(self, key: Hashable, value: Any) -> None:
        self._proxy.set(key, value)

    def get(self, key: Hashable, default: Any = None) -> Any:
        found, value = self._proxy.lookup(key)
        return value if found else default

    def __getitem__(self, key: Hashable) -> Any:
        found, value = self._proxy.lookup(key)
        if not found:
            raise KeyError(key)
        return value

    def as_dict(self) -> dict[Hashable, Any]:
        return dict(self._proxy.as_dict())

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
