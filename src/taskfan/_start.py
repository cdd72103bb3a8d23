"""Starting worker processes: which start method, and what the main script means for it.

The caller's explicit ``multiprocessing.set_start_method`` wins. Otherwise, on Linux,
``fork`` when this process has a single thread (the fastest start, and safe: the danger
of fork is a lock held by another thread at the moment of the fork), else
``forkserver``; ``spawn`` where neither exists. A ``forkserver`` worker comes from
taskfan's own fork server (``backends._server``), chosen or not: it boots in about half
the time of multiprocessing's.

``spawn`` and a fork server import the main script again in a fresh process, which
brings two surprises this module deals with once for every user of processes:

- A program read from standard input has ``__file__ == "<stdin>"``; multiprocessing
  would try to import a file of that name, printing a stray FileNotFoundError or killing
  every worker. Such a program has nothing to import: its functions travel by value, as
  those of ``python -c`` do, and the name is hidden from multiprocessing while a
  process starts.
- A script whose top level starts work without an ``if __name__ == "__main__":`` guard
  runs that work again in the fresh process. It is said once, with the line to guard.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, ModuleType
from typing import Any

__all__ = [
    "importable",
    "main_file",
    "own_server",
    "start_method",
    "started_by_server",
    "starting",
    "warm_up",
]

_warned: set[str] = set()  # scripts already warned about, so it is said once
_looked_at: set[tuple[str, int]] = set()  # (script, line) already checked for a guard


def start_method() -> str:
    """The start method for the next worker process (see the module docstring)."""
    mp = sys.modules.get("multiprocessing")  # (not imported: nobody chose one yet)
    chosen = None if mp is None else mp.get_start_method(allow_none=True)
    if chosen is not None:
        return str(chosen)
    if sys.platform.startswith("linux") and hasattr(os, "fork") and _single_threaded():
        return "fork"
    server = sys.modules.get("taskfan.backends._server")
    if server is not None and server.serving and hasattr(os, "fork"):
        # A script's unguarded top level, run again in the fork server (it was warned):
        # the server forks its workers itself, as it was made to; a server of its own
        # would import the script again, and so on.
        return "fork"
    from .backends import _server

    return "forkserver" if _server.usable() else "spawn"


def own_server(method: str) -> bool:
    """Do workers started with ``method`` come from taskfan's own fork server?

    Every ``forkserver`` start does, where that server runs (see backends._server): it
    boots in about half the time of multiprocessing's. The program's own preload list
    (``multiprocessing.set_forkserver_preload``) is imported there too.
    """
    if method != "forkserver":
        return False
    from .backends import _server

    return _server.usable() and not _server.serving


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1  # native threads count too
    except OSError:  # pragma: no cover - no /proc
        return threading.active_count() == 1


def main_file() -> str | None:
    """The main script's file, if it has one that a fresh process can import."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path if isinstance(path, str) and os.path.isfile(path) else None


def importable(fn: Callable[..., Any]) -> bool:
    """Can a worker process import ``fn`` by name (else it travels by value)?"""
    if getattr(fn, "__module__", None) != "__main__":
        return True
    # Workers re-import the main script from its file (spawn, forkserver) or inherit it
    # (fork); an interactive session, -c or standard input has no file to import from.
    return main_file() is not None


def warm_up(fn: Callable[..., Any] | None) -> None:
    """Start the fork server now, if this call's worker processes will come from it.

    Its boot (a fresh Python and the worker's code: 30-40 ms here) then
    runs while the call still imports and sets up the engine, on another core, rather
    than after, when the call starts its first worker and waits for the server. The
    server lives as long as the program, as multiprocessing's does: nothing is started
    that a first worker would not start a moment later.
    """
    if not own_server(start_method()):
        return
    from .backends import _server

    _server.warm_up(by_value=fn is not None and _by_value(fn))


def started_by_server() -> None:
    """After a worker's start by the fork server: warn a script that lacks its guard."""
    main = sys.modules.get("__main__")
    path = main_file()
    if main is not None and path is not None:
        _warn_if_unguarded(main, path, "forkserver")


def _by_value(fn: Callable[..., Any]) -> bool:
    """Will ``fn`` go to workers by value, as ``_process.dumps_callable`` sends it?"""
    if not importable(fn):
        return True
    try:
        pickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a lambda, a closure: found by name nowhere
        return True
    return False


@contextmanager
def starting(method: str) -> Iterator[None]:
    """Wrap the start of a multiprocessing process with the start method ``method``."""
    import multiprocessing

    chosen = multiprocessing.get_start_method(allow_none=True)
    try:
        with _main_for(method):
            yield
    finally:
        if chosen is None:
            # Starting a spawn or forkserver process asks multiprocessing for "the" start
            # method, which fixes its default (fork, on Linux before 3.14) for good; read
            # back later, it would look like the user's choice, and the next worker
            # would be forked from this multi-threaded process.
            multiprocessing.set_start_method(None, force=True)


@contextmanager
def _main_for(method: str) -> Iterator[None]:
    if method == "fork":
        yield
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        yield
        return
    if main_file() is not None:
        yield
        # (after the start, so that the new process does not wait while the script is read)
        _warn_if_unguarded(main, path, method)
        return
    del main.__file__  # "<stdin>" and the like: nothing to import, see the docstring
    try:
        yield
    finally:
        main.__file__ = path


def _warn_if_unguarded(main: ModuleType, path: str, method: str) -> None:
    if path in _warned or _importing_main():
        return
    line = _top_level_line(main)
    if line is None or (path, line) in _looked_at:
        return
    _looked_at.add((path, line))  # (every worker's start comes here: the script is read once)
    from ._guard import guarded  # reads the script with ast: only for such a call

    if guarded(path, line):
        return
    _warned.add(path)
    warnings.warn_explicit(
        f"taskfan starts worker processes with the {method!r} start method (this program "
        f"runs other threads, or asked for it), which imports {os.path.basename(path)} "
        f"again in a fresh process: its top level, this line included, runs there a "
        f'second time. Put the code that starts work under `if __name__ == "__main__":`, '
        f"or call multiprocessing.set_start_method('fork') if forking is safe here.",
        RuntimeWarning,
        path,
        line,
        module="__main__",
        registry=main.__dict__.setdefault("__warningregistry__", {}),
    )


def _importing_main() -> bool:
    """Is this process a fork server or a child importing the main script right now?"""
    server = sys.modules.get("taskfan.backends._server")
    if server is not None and server.serving:
        return True
    mp = sys.modules.get("multiprocessing")
    return mp is not None and bool(getattr(mp.current_process(), "_inheriting", False))


def _top_level_line(main: ModuleType) -> int | None:
    """The line of the main script's top level that led to this call, if any."""
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is main.__dict__:
            return frame.f_lineno
        frame = frame.f_back
    return None
