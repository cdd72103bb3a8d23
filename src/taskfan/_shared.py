"""SafeCounter and SafeDict for worker processes: the state lives in one server process.

The server holds the same lock-guarded objects that threads share, and every operation
runs there, under that lock: an increment is one atomic step in the server, where a
read-modify-write through a proxied dict would lose updates.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import threading
import weakref
from collections.abc import Hashable
from multiprocessing.managers import BaseManager
from multiprocessing.util import get_temp_dir
from typing import Any

from ._safe import SafeCounter, SafeDict, _LockedCounter, _LockedDict

__all__ = ["ServedCounter", "ServedDict"]


class _Manager(BaseManager):
    pass


_Manager.register("Counter", _LockedCounter, exposed=("increment", "get", "as_dict"))
_Manager.register("Dict", _LockedDict, exposed=("set", "get", "__getitem__", "as_dict"))


class _Served:
    """Owns the server when made here; a copy sent to a worker holds only the proxy."""

    _kind: str

    def __init__(self, proxy: Any = None) -> None:
        self._stop: Any = None
        if proxy is None:
            from ._start import start_method, starting

            method = start_method()
            context = multiprocessing.get_context(method)
            lifeline, lifeline_writer = context.Pipe(duplex=False)
            manager = _Manager(ctx=context)
            with starting(method):
                manager.start(_serve_while_parent_lives, (lifeline, lifeline_writer))
            lifeline.close()
            proxy = getattr(manager, self._kind)()
            self._stop = weakref.finalize(self, _shut_down, manager, lifeline_writer)
        self._proxy = proxy

    def __reduce__(self) -> tuple[type[_Served], tuple[Any]]:
        return (type(self), (self._proxy,))

    def close(self) -> None:
        if self._stop is not None:
            self._stop()


def _shut_down(manager: BaseManager, lifeline_writer: Any) -> None:
    try:
        manager.shutdown()
    finally:
        lifeline_writer.close()


def _serve_while_parent_lives(lifeline: Any, lifeline_writer: Any) -> None:
    """In the server process: exit, and remove its socket's folder, once the parent dies.

    Only the parent holds the writing end of the lifeline, so the reading end sees EOF
    when the parent is gone for any reason, SIGKILL included, when nothing else of
    multiprocessing's would clean up after it.
    """
    lifeline_writer.close()

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        with contextlib.suppress(Exception):
            shutil.rmtree(get_temp_dir(), ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, name="taskfan-lifeline", daemon=True).start()


class ServedCounter(_Served, SafeCounter):
    """A counter whose counts live in a server process (see the module docstring)."""

    _kind = "Counter"

    def increment(self, name: Hashable, n: int = 1) -> int:
        return int(self._proxy.increment(name, n))

    def get(self, name: Hashable) -> int:
        return int(self._proxy.get(name))

    def as_dict(self) -> dict[Hashable, int]:
        return dict(self._proxy.as_dict())


class ServedDict(_Served, SafeDict):
    """A dict whose entries live in a server process (see the module docstring)."""

    _kind = "Dict"

    def set(self, key: Hashable, value: Any) -> None:
        self._proxy.set(key, value)

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._proxy.get(key, default)

    def __getitem__(self, key: Hashable) -> Any:
        return self._proxy.__getitem__(key)

    def as_dict(self) -> dict[Hashable, Any]:
        return dict(self._proxy.as_dict())
