"""``python -m benchmarks [--quick] [--only NAME...]``: run, print and save the table."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from . import threads
from ._harness import Scenario, table

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, and skip the minute-long ThreadPoolExecutor run",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these scenario groups: tiny, io, memory"
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    wanted = set(args.only or ["tiny", "io", "memory"])

    scenarios: list[Scenario] = []
    if "tiny" in wanted:
        scenarios.append(_show(threads.tiny_calls(repeats)))
    if "io" in wanted:
        scenarios.append(_show(threads.sleeping_io(max(3, repeats // 2))))
    if "memory" in wanted:
        skip = ("ThreadPoolExecutor.map",) if args.quick else ()
        scenarios.append(_show(threads.memory(skip=skip)))

    text = table(scenarios)
    header = (
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"medians of {repeats} interleaved runs\n\n"
    )
    print("\n" + header + text)
    (HERE / "results.md").write_text(header + text + "\n")
    return 0


def _show(scenario: Scenario) -> Scenario:
    print(
        f"{scenario.name}: "
        + ", ".join(
            f"{k}={v:.4g}" if v is not None else f"{k}=n/a" for k, v in scenario.figures.items()
        ),
        file=sys.stderr,
        flush=True,
    )
    return scenario


if __name__ == "__main__":
    sys.exit(main())
