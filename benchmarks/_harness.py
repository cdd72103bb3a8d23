"""Timing and reporting: interleaved repeats, medians, a table with ratios to the best peer
(or to a reference contender named by the scenario)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

Runner = Callable[[], object]


@dataclass
class Scenario:
    """One workload, several contenders; ``unit`` says what the figures measure."""

    name: str
    unit: str
    higher_is_better: bool
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    #: compare taskfan with this contender rather than with the best peer
    reference: str | None = None

    def _peers(self) -> dict[str, float]:
        """The figures taskfan is compared with: the reference's, or every peer's."""
        names = [self.reference] if self.reference is not None else list(self.figures)
        peers = {k: self.figures.get(k) for k in names if k != "taskfan"}
        return {k: v for k, v in peers.items() if v}

    def ratio(self) -> float | None:
        """taskfan's figure over the best peer's, or the reference's (> 1: taskfan is better)."""
        ours = self.figures.get("taskfan")
        peers = list(self._peers().values())
        if not ours or not peers:
            return None
        if self.higher_is_better:
            return ours / max(peers)
        return min(peers) / ours

    def best_peer(self) -> str:
        peers = self._peers()
        if not peers:
            return "-"
        pick = max if self.higher_is_better else min
        return pick(peers, key=lambda k: peers[k])


def median_times(
    contenders: dict[str, Runner | None],
    repeats: int,
    check: Callable[[str, object], None] | None = None,
    *,
    warmup: bool = True,
) -> dict[str, float | None]:
    """Median wall time of each contender, runs interleaved so drift hits all alike.

    Each contender first has a warm-up run, checked. Runs that take seconds can do
    without it (``warmup=False``): the first timed run is checked instead, off the clock.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    if warmup:
        for name, run in contenders.items():  # a warm-up run each, checked
            if run is not None:
                result = run()
                if check is not None:
                    check(name, result)
    for repeat in range(repeats):
        for name, run in contenders.items():
            if run is None:
                continue
            checked = check is not None and not warmup and repeat == 0
            before = set(threading.enumerate()), _children()
            t0 = time.perf_counter()
            result = run()
            if not checked:
                result = None  # dropped on the clock, as an unused result always was
            times[name].append(time.perf_counter() - t0)
            if checked and check is not None:
                check(name, result)
            result = None
            settle(*before)
    return {name: statistics.median(ts) if ts else None for name, ts in times.items()}


def _children() -> set[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the dev extra
        return set()
    return {p.pid for p in psutil.Process().children(recursive=True)}


def settle(
    before: set[threading.Thread], children: Collection[int] = (), timeout: float = 10.0
) -> None:
    """Wait, off the clock, until the threads and processes a run started are gone.

    Some pools return before their workers have exited (ThreadPool leaves its threads
    to finish on their own, a reusable executor keeps its processes). Left running,
    they would slow whichever contender is timed next. Processes in ``children`` were
    there before the run (a resource tracker, a fork server, which live as long as the
    benchmark): waiting for them would only add seconds after every run.
    """
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - before:
        if thread.daemon or thread.name.startswith(("Thread-", "taskfan", "Dummy")):
            thread.join(max(0.0, deadline - time.monotonic()))
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the dev extra
        return
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in children]
    psutil.wait_procs(started, timeout=max(0.0, min(2.0, deadline - time.monotonic())))


def format_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("items/s", "rows/s"):
        return f"{value / 1e6:.2f}M/s" if value >= 1e6 else f"{value / 1e3:.0f}k/s"
    if unit == "efficiency":
        return f"{value:.0%}"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "results":
        return f"{value:.0f}"
    return f"{value:.4g} {unit}"


def table(scenarios: list[Scenario]) -> str:
    """A Markdown table: one row per scenario, taskfan then each peer, and the ratio."""
    peers: list[str] = []
    for s in scenarios:
        peers += [k for k in s.figures if k != "taskfan" and k not in peers]
    head = ["scenario", "taskfan", *peers, "vs best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in scenarios:
        ratio = s.ratio()
        ours = format_figure(s.figures.get("taskfan"), s.unit)
        ours += f" ({s.notes['taskfan']})" if "taskfan" in s.notes else ""
        cells = [f"{s.name} ({s.unit})", ours]
        for p in peers:
            cell = format_figure(s.figures[p], s.unit) if p in s.figures else ""
            cells.append(cell + (f" ({s.notes[p]})" if p in s.notes else ""))
        best = s.best_peer() + (" (reference)" if s.reference is not None else "")
        cells.append(f"{ratio:.2f}x {best}" if ratio is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: for the scripts that measure memory in a fresh process: ``status("VmRSS:")`` in MB
RSS_STATUS = """
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024  # kB -> MB
"""
