"""A traceback that crosses a process boundary as data and becomes text where it is read.

Formatting a traceback is the dearest part of a task's failure (about 100 µs: every
frame's source line is read and, since Python 3.11, parsed for its carets), while
most failures that are retried are never looked at. A worker therefore sends what
the text is made of: per exception of the chain, its frames (file, line, columns,
function) and its own closing lines. The caller's process turns that into the same
text ``traceback.format_exception`` gives, when it is first read; the source lines
come from the same files, through ``linecache``.

Exception groups keep their nested layout only in ``traceback``'s own formatter: a
chain holding one is formatted at once, in the worker, as before.
"""

from __future__ import annotations

import itertools
import traceback
from types import CodeType, TracebackType

__all__ = ["Trace", "render", "summarize"]

# (first line, last line, first column, last column) of an instruction
Position = tuple[int | None, int | None, int | None, int | None]
# (file, first line, last line, first column, last column, function)
Frame = tuple[str, int | None, int | None, int | None, int | None, str]
# per exception, from the first cause to the error itself: (what links it to the one
# before, its frames, its closing lines)
Trace = tuple[tuple[str, tuple[Frame, ...], tuple[str, ...]], ...]

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def summarize(error: BaseException, tb: TracebackType | None) -> Trace | str:
    """What the text of ``error``'s traceback (starting at ``tb``) is made of, or the
    text itself for a chain holding an exception group."""
    chain: list[tuple[str, tuple[Frame, ...], tuple[str, ...]]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    link = ""
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseExceptionGroup):
            return "".join(traceback.format_exception(type(error), error, error.__traceback__))
        seen.add(id(current))
        only = _closing_lines(current)
        chain.append((link, _frames(tb), only))
        cause, context = current.__cause__, current.__context__
        if cause is not None:
            current, link = cause, _CAUSE
        elif context is not None and not current.__suppress_context__:
            current, link = context, _CONTEXT
        else:
            break
        tb = current.__traceback__
    # Printed from the first cause on: each one's link goes before the next one.
    out: list[tuple[str, tuple[Frame, ...], tuple[str, ...]]] = []
    for i in range(len(chain) - 1, -1, -1):
        _, frames, only = chain[i]
        before = chain[i + 1][0] if i + 1 < len(chain) else ""
        out.append((before, frames, only))
    return tuple(out)


def render(trace: Trace | str) -> str:
    """The text of a traceback described by :func:`summarize`."""
    if isinstance(trace, str):
        return trace
    parts: list[str] = []
    for link, frames, only in trace:
        parts.append(link)
        if frames:
            parts.append("Traceback (most recent call last):\n")
            summary = traceback.StackSummary.from_list(
                [
                    traceback.FrameSummary(
                        file,
                        line,
                        name,
                        lookup_line=False,
                        end_lineno=end_line,
                        colno=col,
                        end_colno=end_col,
                    )
                    for file, line, end_line, col, end_col, name in frames
                ]
            )
            parts.extend(summary.format())
        parts.extend(only)
    return "".join(parts)


def _closing_lines(error: BaseException) -> tuple[str, ...]:
    """``traceback.format_exception_only``, without its cost in the common case."""
    kind = type(error)
    if getattr(error, "__notes__", None) is None and not isinstance(error, _DECORATED):
        try:
            text = str(error)
        except Exception:
            pass
        else:
            name, module = kind.__qualname__, kind.__module__
            if module not in ("__main__", "builtins"):
                name = f"{module}.{name}"
            return (f"{name}: {text}\n" if text else f"{name}\n",)
    return tuple(traceback.format_exception_only(kind, error))


# Their closing lines say more than the message: the line at fault, "Did you mean...?"
_DECORATED = (SyntaxError, NameError, AttributeError, ImportError)

# A failing line of a task usually fails again (the same bug, a retried call): its
# position is looked up once. Keys hold the code object alive, so its id stays its own.
_positions: dict[tuple[int, int], tuple[CodeType, Position]] = {}
_POSITIONS_MAX = 1024


def _frames(tb: TracebackType | None) -> tuple[Frame, ...]:
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (id(code), tb.tb_lasti)
        known = _positions.get(key)
        if known is None:
            if len(_positions) >= _POSITIONS_MAX:
                _positions.clear()
            known = _positions[key] = (code, _position(code, tb.tb_lasti))
        line, end_line, col, end_col = known[1]
        if line is None:
            line = tb.tb_lineno
        frames.append((code.co_filename, line, end_line, col, end_col, code.co_name))
        tb = tb.tb_next
    return tuple(frames)


def _position(code: CodeType, lasti: int) -> Position:
    # co_positions() has one entry per two-byte code unit.
    if lasti < 0:
        return None, None, None, None
    entry = next(itertools.islice(code.co_positions(), lasti // 2, None), None)
    return entry if entry is not None else (None, None, None, None)
