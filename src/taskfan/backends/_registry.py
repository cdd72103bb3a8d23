"""Every backend, by name: where its class lives and what it can do.

Adding a backend is one module with its class plus one entry here. Options, the shared
counters and the test suite read what differs per backend from its entry (how many
workers by default, whether it can stop one task at its timeout, whether tasks run in
this process, its own options) instead of naming backends. This module imports nothing
heavy: the class itself is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._plain import Frozen

if TYPE_CHECKING:
    from ._base import Backend

__all__ = ["REGISTRY", "Registration", "backend_class", "cpu_count", "registration"]


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class Registration(Frozen):
    """A backend's entry.

    ``in_process``: tasks run in the calling process (they share its memory).
    ``local``: its workers run on this machine (a server process can serve them).
    ``many_workers``: it can run more than one task at once. ``timeouts``: it can end
    one task whose ``timeout`` passed. ``coroutines``: it runs ``async def`` tasks.
    ``own_options``: options that only this backend takes. ``missing``: why it cannot
    be used here (not built yet, an optional dependency not installed), or None.
    """

    __slots__ = (
        "name",
        "module",
        "cls",
        "default_workers",
        "in_process",
        "local",
        "many_workers",
        "timeouts",
        "coroutines",
        "own_options",
        "missing",
    )
    name: str
    module: str
    cls: str
    default_workers: Callable[[], int]
    in_process: bool
    local: bool
    many_workers: bool
    timeouts: bool
    coroutines: bool
    own_options: frozenset[str]
    missing: str | None

    def __init__(
        self,
        name: str,
        module: str,
        cls: str,
        default_workers: Callable[[], int],
        *,
        in_process: bool = True,
        local: bool = True,
        many_workers: bool = True,
        timeouts: bool = True,
        coroutines: bool = False,
        own_options: frozenset[str] = frozenset(),
        missing: str | None = None,
    ) -> None:
        self._fill(
            name,
            module,
            cls,
            default_workers,
            in_process,
            local,
            many_workers,
            timeouts,
            coroutines,
            own_options,
            missing,
        )

    def load(self) -> type[Backend]:
        """The backend class (its module is imported now)."""
        if self.missing is not None:
            raise NotImplementedError(self.missing)
        cls: type[Backend] = getattr(importlib.import_module(self.module), self.cls)
        return cls


def _threads() -> int:
    return min(32, cpu_count() + 4)


REGISTRY: dict[str, Registration] = {
    entry.name: entry
    for entry in (
        Registration(
            "serial",
            "taskfan.backends._serial",
            "SerialBackend",
            lambda: 1,
            many_workers=False,
            timeouts=False,
        ),
        Registration("thread", "taskfan.backends._thread", "ThreadBackend", _threads),
        Registration(
            "process",
            "taskfan.backends._process",
            "ProcessBackend",
            cpu_count,
            in_process=False,
            own_options=frozenset({"max_tasks_per_worker"}),
        ),
        Registration(
            "async",
            "taskfan.backends._async",
            "AsyncBackend",
            lambda: 100,
            coroutines=True,
        ),
        Registration(
            "dask",
            "taskfan.backends._dask",
            "DaskBackend",
            cpu_count,
            in_process=False,
            local=False,
            own_options=frozenset({"address"}),
            missing="backend='dask' is not available in this version of taskfan yet; "
            "use backend='thread' or backend='process'",
        ),
    )
}


def registration(name: str) -> Registration:
    """The entry of the backend called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"no backend named {name!r}; available: {', '.join(REGISTRY)}") from None


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``, imported only when first asked for."""
    return registration(name).load()
