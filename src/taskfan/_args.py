"""``add_arguments`` / ``options_from_args``: taskfan's standard flags in a user's argparse."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ._options import BACKENDS, parse_rate

__all__ = ["add_arguments", "options_from_args"]

_DESTS = {
    "taskfan_workers": "workers",
    "taskfan_backend": "backend",
    "taskfan_retries": "retries",
    "taskfan_timeout": "timeout",
    "taskfan_rate": "rate",
    "taskfan_progress": "progress",
    "taskfan_journal": "journal",
    "taskfan_rerun": "rerun",
}


def _typed(
    kind: Callable[[str], Any], check: Callable[[Any], bool], what: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        rate = parse_rate(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    assert rate is not None
    return rate


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-j/--workers``, ``--backend``, ``--retries``, ``--timeout``, ``--rate``,
    ``--progress/--no-progress``, ``--journal`` and ``--rerun`` to ``parser``.

    Read them back with :func:`options_from_args`. Returns the parser.
    """
    group = parser.add_argument_group("taskfan options")
    group.add_argument(
        "-j",
        "--workers",
        "--parallel",
        dest="taskfan_workers",
        metavar="N",
        type=_typed(int, lambda v: v >= 1, "an integer >= 1"),
        help="tasks running at once (default: per backend)",
    )
    group.add_argument(
        "--backend",
        dest="taskfan_backend",
        choices=BACKENDS,
        help="where tasks run (default: auto)",
    )
    group.add_argument(
        "--retries",
        dest="taskfan_retries",
        metavar="N",
        type=_typed(int, lambda v: v >= 0, "an integer >= 0"),
        help="extra attempts after a failed attempt (default: 0)",
    )
    group.add_argument(
        "--timeout",
        dest="taskfan_timeout",
        metavar="SECONDS",
        type=_typed(float, lambda v: 0 < v < float("inf"), "seconds > 0"),
        help="seconds one attempt may run",
    )
    group.add_argument(
        "--rate",
        dest="taskfan_rate",
        metavar="RATE",
        type=_rate,
        help="most task starts per second: N, N/s, N/min or N/h",
    )
    group.add_argument(
        "--progress",
        dest="taskfan_progress",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    group.add_argument(
        "--journal",
        dest="taskfan_journal",
        metavar="FILE",
        help="SQLite file recording every finished task",
    )
    group.add_argument(
        "--rerun",
        dest="taskfan_rerun",
        choices=("failed", "missing", "all"),
        help="with --journal: which recorded tasks run again (default: failed)",
    )
    return parser


def options_from_args(namespace: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as ``**options`` for any entry point.

    Flags left out are left out here too, so each entry point's defaults apply.
    """
    options = {}
    for dest, name in _DESTS.items():
        value = getattr(namespace, dest, None)
        if value is not None:
            options[name] = value
    return options
