"""Is a line of the main script inside an ``if __name__ == "__main__":`` block?

Apart from :mod:`taskfan._start` because it reads the script with :mod:`ast` (about 3 ms
to import), which only a call made from the script's own top level needs, and only when
workers import the script again (spawn, forkserver).
"""

from __future__ import annotations

import ast

__all__ = ["guarded"]


def guarded(path: str, line: int) -> bool:
    """Is ``line`` of the script inside an ``if __name__ == "__main__":`` block?"""
    try:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return True  # cannot tell: say nothing rather than something wrong
    for statement in tree.body:
        end = statement.end_lineno or statement.lineno
        if statement.lineno <= line <= end:
            return isinstance(statement, ast.If) and _is_main_test(statement.test)
    return True


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = {_name_or_text(test.left), _name_or_text(test.comparators[0])}
    return isinstance(test.ops[0], ast.Eq) and sides == {"name:__name__", "text:__main__"}


def _name_or_text(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return f"name:{node.id}"
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return f"text:{node.value}"
    return ""
