"""Ctrl+C: KeyboardInterrupt from the call within a second, even with tasks stuck, and the
interpreter exits without waiting for abandoned threads. Run in a real child process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from .conftest import read_until, run_script

SCRIPT = """
import logging, sys, time, taskfan

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")

def quick(i):
    return i * 10

def stuck(i):
    time.sleep(1000)

runner = taskfan.Runner(backend={backend!r}, workers=4, progress="log", progress_every=0.05)
for i in range(4):
    runner.add(i, quick, i)
for i in range(4, 8):
    runner.add(i, stuck, i)
try:
    runner.run()
except KeyboardInterrupt:
    print("interrupted", time.monotonic(), dict(runner.results), runner.report.cancelled,
          flush=True)
    raise
print("not interrupted", flush=True)
"""


def test_ctrl_c_raises_keyboardinterrupt_within_a_second(tmp_path: Path) -> None:
    proc = run_script(SCRIPT.format(backend="thread"), tmp_path)
    read_until(proc, lambda line: "4 ok" in line)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    exited = time.monotonic() - sent
    lines = [line for line in out.splitlines() if line.startswith("interrupted")]
    assert lines, f"no KeyboardInterrupt seen: stdout={out!r} stderr={err[-2000:]!r}"
    when = lines[0].split(" ", 2)[1]
    assert float(when) - sent < 1.0
    assert "{0: 0, 1: 10, 2: 20, 3: 30} 4" in lines[0]  # what ended is kept; 4 cancelled
    assert "KeyboardInterrupt" in err
    assert proc.returncode == -signal.SIGINT  # died of SIGINT, as Python does after Ctrl+C
    assert exited < 2.0  # the interpreter did not wait for the stuck threads
