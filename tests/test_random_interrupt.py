"""Ctrl+C in the middle of random mixed workloads, on every backend.

``test_interrupt`` pins the cases one by one; here each seed draws a workload (quick
tasks, slow ones, failures retried after a backoff of seconds, workers that die, tasks
stuck for 1000 s, a journal or not, in order or not) and a moment for the SIGINT: after
a few tasks have begun, once or twice in a row. Whatever was drawn, the program must
raise KeyboardInterrupt promptly, leave no process behind, and leave its journal
readable, every recorded value right. Each case runs in a real child process that gets
a real SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from taskfan import Journal
from taskfan.backends._registry import REGISTRY

from .conftest import read_until, run_script, still_running

SEEDS = range(3)

SCRIPT = """
import os, random, sys, time, taskfan

SEED, BACKEND, JOURNAL = {seed}, {backend!r}, {journal!r}
rng = random.Random(SEED)
plan = {{}}
for x in range(rng.randint(20, 60)):
    roll = rng.random()
    if roll < 0.5:
        plan[x] = ("ok", 0.0)
    elif roll < 0.65:
        plan[x] = ("ok", rng.choice([0.01, 0.05]))
    elif roll < 0.8:
        plan[x] = ("raise", 0.0)
    elif roll < 0.88 and BACKEND == "process":
        plan[x] = ("crash", 0.0)
    else:
        plan[x] = ("stuck", 1000.0)

def say(text):
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()

def task(x):
    say("begun")
    kind, seconds = plan[x]
    if kind == "raise":
        raise ValueError(x)
    if kind == "crash":
        os._exit(3)
    if seconds:
        time.sleep(seconds)
    return x * 10

async def atask(x):
    import asyncio
    say("begun")
    kind, seconds = plan[x]
    if kind == "raise":
        raise ValueError(x)
    if seconds:
        await asyncio.sleep(seconds)
    return x * 10

WORKERS = rng.randint(2, 6)
options = dict(backend=BACKEND, workers=WORKERS, errors="return",
               retries=rng.randint(0, 2), backoff=rng.choice([0.01, 5.0]), progress=False)
if JOURNAL:
    options["journal"] = JOURNAL
if rng.random() < 0.3:
    options["timeout"] = 30.0
if __name__ == "__main__":
    fn = atask if BACKEND == "async" else task
    say(f"started {{WORKERS}}")
    for n, value in enumerate(taskfan.imap(fn, range(len(plan)),
                                           ordered=rng.random() < 0.5, **options)):
        say(f"result {{n}}")
    say("not interrupted")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", SEEDS)
def test_ctrl_c_in_a_random_workload(backend: str, seed: int, tmp_path: Path) -> None:
    if not REGISTRY[backend].many_workers:
        pytest.skip("one worker: a stuck task holds everything, test_interrupt covers it")
    rng = random.Random(seed)
    journal = str(tmp_path / "run.db") if rng.random() < 0.5 else ""
    code = SCRIPT.format(seed=seed, backend=backend, journal=journal)
    proc = run_script(code, tmp_path)
    # The SIGINT goes after some tasks have begun: at least one per worker always does
    # (whatever is stuck or waiting out a backoff), so this never waits on luck.
    wanted = rng.randint(1, 6)
    begun = 0

    def ready(line: str) -> bool:
        nonlocal begun, wanted
        if line.startswith("started"):
            wanted = min(wanted, int(line.split()[1]))
        begun += line.startswith("begun")
        return begun >= wanted or "not interrupted" in line

    lines = read_until(proc, ready)
    if any("not interrupted" in line for line in lines):
        proc.communicate(timeout=30)
        pytest.skip("the workload drew nothing stuck and ended before the SIGINT")
    descendants = psutil.Process(proc.pid).children(recursive=True)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    if rng.random() < 0.5:
        proc.send_signal(signal.SIGINT)  # an impatient user: the cleanup must still finish
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        for process in [proc, *descendants]:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
        _, err = proc.communicate()
        message = f"the Ctrl+C was lost: the run went on; stderr={err[-3000:]!r}"
        raise AssertionError(message) from None
    exited = time.monotonic() - sent
    assert "KeyboardInterrupt" in err, f"stdout={out[-1000:]!r} stderr={err[-2000:]!r}"
    assert "not interrupted" not in out
    assert exited < 15, f"{exited:.1f} s from SIGINT to exit"
    alive = still_running(descendants, timeout=10)
    assert not alive, f"left running after Ctrl+C: {[p.pid for p in alive]}"
    if journal and Path(journal).exists():
        for key, outcome in Journal(journal).outcomes().items():
            if outcome.status == "ok":
                assert outcome.value == key * 10, (key, outcome)


def test_the_script_is_valid_python() -> None:
    compile(SCRIPT.format(seed=0, backend="thread", journal=""), "script", "exec")
    assert sys.version_info >= (3, 11)
