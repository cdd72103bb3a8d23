"""Every Python example in the README runs as written and prints what its comments say.

A ``print(...)`` with a comment on the line where the call ends claims that the comment is
what that print shows. Each block runs on its own, as ``__main__``, with ``print``
replaced by one that records which README line called it and what it printed (and then
prints as usual). Everything a commented print printed while its block ran, joined, must
match its comment:

* ``...`` in the comment stands for any text, line breaks included (a message, a
  timing, the body of a traceback); it is always a wildcard, never literal dots;
* a run of whitespace in the comment stands for any run of whitespace, line breaks
  included, so a one-line comment can stand for an output of several lines;
* everything else must be there as written; whitespace at either end is ignored, and
  the whole output must match, not just a part of it.

A print in a loop (or in a function called several times) prints more than once: its
comment stands for all of it, in order (``# 0 1 2``), with ``...`` where runs differ.
A print in a conditional (an ``except``, ``if __name__ == "__main__":``) must run: a
comment that promises output the example never prints fails. A print without a comment
claims nothing and is held to the looser rule of every example: it must run without an
error. Prints inside tasks that run in worker processes are not seen (the README has none).
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import sys
import tokenize
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).parent.parent / "README.md"
TEXT = README.read_text()
# (README line of the block's first line of code, the code)
BLOCKS = [
    (TEXT.count("\n", 0, m.start(1)) + 1, m[1])
    for m in re.finditer(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)
]


def matches(comment: str, output: str) -> bool:
    """True if ``output`` is what ``comment`` says, by the rules in the module docstring."""
    parts = re.split(r"(\.\.\.|\s+)", comment.strip())
    pattern = "".join(
        ".*" if part == "..." else r"\s+" if part.isspace() else re.escape(part)
        for part in parts
        if part
    )
    return re.fullmatch(pattern, output.strip(), flags=re.DOTALL) is not None


def claims(code: str) -> dict[tuple[int, int], str | None]:
    """Each ``print(...)`` call: (first line, last line) -> the comment on its last line."""
    comments = {
        token.start[0]: token.string.removeprefix("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(code).readline)
        if token.type == tokenize.COMMENT
    }
    found: dict[tuple[int, int], str | None] = {}
    for node in ast.walk(ast.parse(code)):
        match node:
            case ast.Call(func=ast.Name(id="print"), lineno=first, end_lineno=last):
                found[first, last or first] = comments.get(last or first)
    return found


def run(code: str, filename: str) -> dict[int, list[str]]:
    """Run ``code`` as ``__main__``: line of each print call -> what it printed, in order."""
    printed: dict[int, list[str]] = defaultdict(list)

    def recording_print(*args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1)
        if caller.f_code.co_filename == filename:
            text = io.StringIO()
            builtins.print(*args, **{**kwargs, "file": text, "flush": False})
            printed[caller.f_lineno].append(text.getvalue())
        builtins.print(*args, **kwargs)

    exec(compile(code, filename, "exec"), {"__name__": "__main__", "print": recording_print})
    return printed


def check(code: str, first_line: int, filename: str = str(README)) -> list[str]:
    """Run a block that starts at ``first_line``; a message for each comment it belies."""
    code = "\n" * (first_line - 1) + code  # line numbers are the file's own
    calls = claims(code)
    printed = run(code, filename)
    heard: dict[tuple[int, int], list[str]] = defaultdict(list)
    for line in sorted(printed):  # by line, then in order: a call's own lines are together
        # The line a frame reports for a running call lies within it; the innermost wins.
        call = max((c for c in calls if c[0] <= line <= c[1]), key=lambda c: c[0], default=None)
        if call is not None:  # None: print under another name; it claims nothing
            heard[call] += printed[line]
    problems = []
    for call, comment in sorted(calls.items()):
        where = f"{Path(filename).name}:{call[1]}"
        if comment is None:
            continue  # claims nothing
        if call not in heard:
            problems.append(f"{where}: the print never ran; its comment says {comment!r}")
        elif not matches(comment, got := "".join(heard[call])):
            problems.append(f"{where}: the comment says {comment!r}, the print showed {got!r}")
    return problems


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 6
    commented = [c for _, code in BLOCKS for c in claims(code).values() if c is not None]
    assert len(commented) >= 8  # the check below sees the README's expected outputs


@pytest.mark.parametrize(
    ("first_line", "code"), BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))]
)
def test_readme_example_runs_and_prints_what_it_says(first_line: int, code: str) -> None:
    problems = check(code, first_line)
    assert not problems, "\n".join(problems)


SAMPLE = """\
def shout(word):
    print(word.upper())  # HI HO
for word in ["hi", "ho"]:
    shout(word)
print([1, ValueError("three"), 4])  # [1, ValueError(...), 4]
print("3 tasks: 2 ok, 1 failed in 0.65 s (4.6/s)")  # 3 tasks: 2 ok, 1 failed in ...
print(
    "first line",
    "and more",
)  # first line ...
print("Traceback:\\n  line 1\\nValueError: no")  # Traceback: ... ValueError: ...
print("uncommented: claims nothing")
if False:
    print("never")  # never
print([1, 2, 4, 5])  # [1, 2, 4]
print("3 tasks: 3 ok in 0.01 s")  # 3 tasks: 2 ok, ...
"""


def test_the_check_catches_a_comment_that_is_not_the_output() -> None:
    assert check(SAMPLE, 1, "sample.py") == [
        "sample.py:14: the print never ran; its comment says 'never'",
        "sample.py:15: the comment says '[1, 2, 4]', the print showed '[1, 2, 4, 5]\\n'",
        "sample.py:16: the comment says '3 tasks: 2 ok, ...', "
        "the print showed '3 tasks: 3 ok in 0.01 s\\n'",
    ]
