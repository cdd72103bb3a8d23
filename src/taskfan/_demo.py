"""``taskfan demo``: the command line on a real workload, in a folder it leaves behind.

It writes 200 small CSV files and a ``tasks.py`` that checks one file (rows, total, a
SHA-256). One file is corrupt, and the first read of three others fails as a network
disk would. The first run shows the progress bar, the failure with its traceback and
the retries, all recorded in a journal; the corrupt file is then mended, and the same
command run again resumes every finished file and checks only the one that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ._journal import Journal

__all__ = ["demo"]

FILES = 200
CORRUPT = "data/file-037.csv"
FLAKY = ("file-011.csv", "file-099.csv", "file-150.csv")

TASKS = '''"""The demo's task: check one data file (run by `taskfan run tasks.py:checksum`)."""

import hashlib
import pathlib
import time


def checksum(path):
    file = pathlib.Path(path)
    with open("ran.log", "a") as log:  # how often each file was read, for the demo's check
        log.write(path + "\\n")
    flaky = pathlib.Path("flaky") / file.name
    if flaky.exists():  # the first read of a few files fails, as on a network disk
        flaky.unlink()
        raise ConnectionError(f"reading {file.name} was interrupted; try again")
    data = file.read_bytes()
    total = 0
    for line in data.decode().splitlines()[1:]:
        total += int(line.split(",")[1])  # a corrupt row fails here
    time.sleep(0.02)  # a little work, to see the bar move
    return {"rows": len(data.splitlines()) - 1, "total": total,
            "sha256": hashlib.sha256(data).hexdigest()[:16]}
'''


def demo(folder: str | None = None) -> int:
    """Run the demonstration; 0 when everything happened as it should."""
    where = Path(folder or tempfile.mkdtemp(prefix="taskfan-demo-")).resolve()
    where.mkdir(parents=True, exist_ok=True)
    print(f"taskfan demo: working in {where}\n")
    with _inside(where):
        _write_files()
        first, second, ran_first, ran_second = _two_runs()
        print("\n$ taskfan status demo.db", flush=True)
        from ._cli import main

        status = main(["status", "demo.db"])
    as_intended = _check(where, first, second, ran_first, ran_second) and status == 0
    verdict = "ran as intended" if as_intended else "did NOT run as intended"
    print(f"\ntaskfan demo {verdict}; its files are in {where}")
    return 0 if as_intended else 1


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _write_files() -> None:
    rng = random.Random(2026)
    Path("data").mkdir(exist_ok=True)
    Path("flaky").mkdir(exist_ok=True)
    for stale in ("demo.db", "ran.log", "results-1.jsonl", "results-2.jsonl"):
        Path(stale).unlink(missing_ok=True)
    lines = []
    for n in range(FILES):
        rows = [f"{i},{rng.randint(0, 1000)}" for i in range(rng.randint(50, 500))]
        path = f"data/file-{n:03}.csv"
        Path(path).write_text("row,amount\n" + "\n".join(rows) + "\n")
        lines.append(json.dumps({"path": path}))
    Path(CORRUPT).write_text("row,amount\n1,12\n2,n/a\n3,7\n")
    for name in FLAKY:
        (Path("flaky") / name).write_text("")
    Path("tasks.jsonl").write_text("\n".join(lines) + "\n")
    Path("tasks.py").write_text(TASKS)
    print(f"wrote {FILES} CSV files in data/ ({CORRUPT} is corrupt), tasks.py and tasks.jsonl")


COMMAND = [
    "run", "tasks.py:checksum", "--input", "tasks.jsonl", "--key", "path",
    "--journal", "demo.db", "--retries", "2", "-j", "8", "--progress", "--output",
]  # fmt: skip


def _two_runs() -> tuple[int, int, Counter[str], Counter[str]]:
    from ._cli import main

    print(f"\n$ taskfan {' '.join(COMMAND)} results-1.jsonl", flush=True)
    first = main([*COMMAND, "results-1.jsonl"])
    ran_first = _ran()
    _show_first(first)
    print("\n$ taskfan status demo.db", flush=True)
    main(["status", "demo.db"])
    print(f"\nmending {CORRUPT}, then the same command again: only what failed runs")
    Path(CORRUPT).write_text("row,amount\n1,12\n2,30\n3,7\n")
    print(f"$ taskfan {' '.join(COMMAND)} results-2.jsonl", flush=True)
    second = main([*COMMAND, "results-2.jsonl"])
    print(f"exit code {second}; results-2.jsonl has {_lines('results-2.jsonl')} lines "
          "(resumed tasks included)")  # fmt: skip
    return first, second, ran_first, _ran() - ran_first


def _show_first(code: int) -> None:
    print(f"exit code {code} (1: some tasks failed); results-1.jsonl, the first 2 lines:")
    for line in Path("results-1.jsonl").read_text().splitlines()[:2]:
        print(f"  {line}")
    outcomes = Journal("demo.db").outcomes()
    failed = outcomes.get(CORRUPT)
    if failed is not None and not failed.ok:
        print(f"\n{CORRUPT} {failed.status} after {failed.attempts} attempts; its traceback "
              f"from the journal:\n{failed.traceback}")  # fmt: skip
    retried = sorted(str(k) for k, o in outcomes.items() if o.ok and o.attempts > 1)
    print(f"retried and recovered: {', '.join(retried)}")


def _ran() -> Counter[str]:
    log = Path("ran.log")
    return Counter(log.read_text().split()) if log.exists() else Counter()


def _lines(path: str) -> int:
    return len(Path(path).read_text().splitlines())


def _check(
    where: Path, first: int, second: int, ran_first: Counter[str], ran_second: Counter[str]
) -> bool:
    outcomes = Journal(where / "demo.db").outcomes()
    flaky = {f"data/{name}" for name in FLAKY}
    return (
        first == 1
        and second == 0
        and ran_first[CORRUPT] == 3  # retried twice: a corrupt file stays corrupt
        and all(ran_first[f] == 2 for f in flaky)  # failed once, then recovered
        and list(ran_second) == [CORRUPT]  # the second run read only the mended file
        and len(outcomes) == FILES
        and all(o.ok for o in outcomes.values())
        and _lines(str(where / "results-2.jsonl")) == FILES
    )
