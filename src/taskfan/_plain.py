"""Record classes without :mod:`dataclasses`: slotted values, shown and compared by field.

Every call imports the engine, its options and its results. With dataclasses, that import
also pulled in :mod:`inspect` (about 8 ms here), and each class ran generated code (about
1 ms each, a dozen classes): a third of the time a program's first call spent importing,
before its first worker could start. The records on that path are written out instead,
each with its fields in ``__slots__`` (in order) and its ``__init__`` by hand; these bases
give them what dataclasses did besides: ``repr``, ``==``, and for :class:`Frozen` ones
immutability and a hash, and pickling.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Frozen", "Plain"]


class Plain:
    """A mutable record whose fields are its class's ``__slots__``; unhashable, like a
    dataclass with ``eq``."""

    __slots__: tuple[str, ...] = ()
    __hash__: Any = None

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def _fill(self, *values: Any) -> None:
        """Set every field, in ``__slots__`` order (a Frozen's ``__init__`` does so)."""
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Plain)
        return self._values() == other._values()

    def __reduce__(self) -> tuple[Any, ...]:
        # (pickle's default would set the fields with setattr, which a Frozen refuses)
        return (_rebuild, (type(self), self._values()))


class Frozen(Plain):
    """An immutable record: its ``__init__`` sets its fields with :meth:`Plain._fill`."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __hash__(self) -> int:
        return hash(self._values())


def _rebuild(cls: type[Plain], values: tuple[Any, ...]) -> Plain:
    record = cls.__new__(cls)
    record._fill(*values)
    return record
