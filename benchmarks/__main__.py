"""``python -m benchmarks [--quick] [--only NAME...]``: run, print and save the table and chart."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from . import asyncio_bench, journal, processes, scheduler, threads
from ._chart import write_chart
from ._harness import Scenario, table

HERE = Path(__file__).parent
GROUPS = ("tiny", "io", "memory", "process", "mixed", "retries", "cold", "journal", "asyncio")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, and skip the minute-long ThreadPoolExecutor run",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        choices=GROUPS,
        default=None,
        help="run only these scenario groups (default: all)",
    )
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    wanted = set(args.only or GROUPS)

    scenarios: list[Scenario] = []
    if "tiny" in wanted:
        scenarios.append(_show(threads.tiny_calls(repeats)))
    if "io" in wanted:
        scenarios.append(_show(threads.sleeping_io(max(3, repeats // 2))))
    if "memory" in wanted:
        skip = ("ThreadPoolExecutor.map",) if args.quick else ()
        scenarios.append(_show(threads.memory(skip=skip)))
    if "process" in wanted:
        scenarios += _process_group(repeats)
    if "mixed" in wanted:
        scenarios += _mixed_group(repeats)
    if "retries" in wanted:
        scenarios += _retries_group(repeats)
    if "cold" in wanted:
        scenarios += _cold_group(repeats)
    if "journal" in wanted:
        scenarios += [_show(journal.rows(repeats)), _show(journal.sleep(repeats))]
    if "asyncio" in wanted:
        scenarios += _asyncio_group(repeats, args.quick)

    text = table(scenarios)
    header = (
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"medians of {repeats} interleaved runs\n\n"
    )
    if "process" in wanted:
        header += (
            f"Process CPU tasks: medians of {_cpu_repeats(repeats)} runs. Crash and Ctrl+C: "
            f"one run per contender in a fresh subprocess, killed after "
            f"{processes.HARD_TIMEOUT:.0f} s.\n\n"
        )
    if "mixed" in wanted:
        header += (
            f"Mixed slow and instant tasks: medians of {_seconds_repeats(repeats)} runs "
            f"({_tail_repeats(repeats)} for the 20-task row); the ratio is to the reference "
            f"that hands out one task at a time.\n\n"
        )
    if "retries" in wanted:
        header += (
            "Retries: the same taskfan run with 1% of the tasks failing on their first "
            "attempt, and with none failing; the ratio is to the run without failures.\n\n"
        )
    if "cold" in wanted:
        header += (
            f"Cold start: each run a fresh Python process running a small script with one "
            f"extra thread (benchmarks/cold_program.py), the first call timed inside it, "
            f"taskfan byte-compiled as an install has it; medians of {_cold_runs(repeats)} "
            f"processes each.\n\n"
        )
    if "journal" in wanted:
        header += (
            "Journal: the same taskfan call with journal= on (a fresh file each run) and "
            "off; the ratio is to the run without a journal.\n\n"
        )
    if "asyncio" in wanted:
        header += (
            f"asyncio: every async contender in a new asyncio.run each run (taskfan.map runs "
            f"a loop of its own in a thread); 100,000-coroutine row: medians of "
            f"{_seconds_repeats(repeats)} runs; RSS row: one fresh process per contender, "
            f"killed after {asyncio_bench.MEMORY_TIMEOUT:.0f} s.\n\n"
        )
    print("\n" + header + text)
    (HERE / "results.md").write_text(header + text + "\n")
    write_chart(scenarios, HERE / "results.png")
    return 0


def _process_group(repeats: int) -> list[Scenario]:
    return [
        _show(processes.tiny_calls(repeats)),
        _show(processes.cpu_bound(_cpu_repeats(repeats))),
        _show(processes.crash_resilience()),
        _show(processes.ctrl_c_exit()),
    ]


def _mixed_group(repeats: int) -> list[Scenario]:
    return [
        _show(scheduler.mixed_threads(_seconds_repeats(repeats))),
        _show(scheduler.mixed_processes(_seconds_repeats(repeats))),
        _show(scheduler.mixed_tail(_tail_repeats(repeats))),
    ]


def _retries_group(repeats: int) -> list[Scenario]:
    return [
        _show(scheduler.retries_threads(repeats, 4000, 8, scheduler.nap_1ms, "sleep(1 ms)")),
        _show(scheduler.retries_threads(repeats, 100_000, 2, processes.square, "tiny")),
        _show(scheduler.retries_processes(repeats)),
    ]


def _cold_group(repeats: int) -> list[Scenario]:
    return [
        _show(scheduler.cold_start(_cold_runs(repeats))),
        _show(scheduler.tiny_calls_list(repeats, 1_000_000)),
        _show(scheduler.tiny_calls_list(repeats, 100_000)),
    ]


def _asyncio_group(repeats: int, quick: bool) -> list[Scenario]:
    # --quick skips the peer that makes a task of every one of the million items at once
    skip = (asyncio_bench.GATHER,) if quick else ()
    return [
        *(_show(s) for s in asyncio_bench.sleeping(repeats)),
        _show(asyncio_bench.many(_seconds_repeats(repeats))),
        _show(asyncio_bench.memory(skip=skip)),
    ]


def _seconds_repeats(repeats: int) -> int:
    # a run of the mixed group takes seconds per contender: fewer repeats keep it short
    return max(2, repeats // 2)


def _tail_repeats(repeats: int) -> int:
    return min(3, _seconds_repeats(repeats))


def _cold_runs(repeats: int) -> int:
    # each run is a fresh process of a fraction of a second, and the first call of a
    # program is the row most sensitive to this machine's drift: three times the repeats
    return max(3, 3 * repeats)


def _cpu_repeats(repeats: int) -> int:
    # a CPU-bound run takes a second per contender: half the repeats keep the group short
    return max(2, repeats // 2)


def _show(scenario: Scenario) -> Scenario:
    print(
        f"{scenario.name}: " + ", ".join(_cell(scenario, k) for k in scenario.figures),
        file=sys.stderr,
        flush=True,
    )
    return scenario


def _cell(scenario: Scenario, name: str) -> str:
    value = scenario.figures[name]
    text = f"{name}={value:.4g}" if value is not None else f"{name}=n/a"
    return text + (f" ({scenario.notes[name]})" if name in scenario.notes else "")


if __name__ == "__main__":
    sys.exit(main())
