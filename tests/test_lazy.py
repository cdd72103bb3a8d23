"""Input is pulled only as capacity frees: endless generators work, memory stays bounded."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

import taskfan


class Counted:
    """An endless input that counts how many items were pulled from it."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.pulled = i + 1
            yield i


def test_imap_over_an_endless_generator(opts: dict[str, Any]) -> None:
    source = Counted()
    # A window of its own: the automatic one lets small results run far ahead of a head
    # task that is slow to come back (on a worker that started last, say).
    it = taskfan.imap(lambda x: x * 2, source, **{**opts, "window": 1000})
    assert list(itertools.islice(it, 10)) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    it.close()
    assert source.pulled <= 10 + 1000


def test_window_bounds_what_is_pulled_ahead(opts: dict[str, Any]) -> None:
    source = Counted()
    it = taskfan.imap(lambda x: x, source, window=50, **opts)
    taken = list(itertools.islice(it, 5))
    assert taken == [0, 1, 2, 3, 4]
    # pulled - handed back never exceeds the window
    assert source.pulled <= 5 + 50
    it.close()


def test_window_holds_with_a_slow_consumer(opts: dict[str, Any]) -> None:
    source = Counted()
    it = taskfan.imap(lambda x: x, source, window=100, **opts)
    highest = 0
    for i, value in enumerate(it):
        assert value == i
        highest = max(highest, source.pulled - (i + 1))
        if i == 2000:
            break
    it.close()
    assert highest <= 100


def test_breaking_out_of_imap_stops_the_input(
    opts: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    source = Counted()
    numbers = iter(source)  # kept here, so we can see where the engine left it
    # A window of its own: it bounds what is taken and not handed back (the automatic
    # one lets small finished results run far ahead of a slow head task).
    logged = {**opts, "progress": "log", "progress_every": 3600, "window": 1000}
    with caplog.at_level(logging.INFO, logger="taskfan"):
        for value in taskfan.imap(lambda x: x, numbers, **logged):
            if value == 3:
                break
        # Leaving the loop ended the run there and then: its final report is logged.
        lines = [r.getMessage() for r in caplog.records if r.name == "taskfan"]
    assert len(lines) == 1, lines
    final = re.fullmatch(r"taskfan: (\d+) tasks: (\d+) ok(?:, (\d+) cancelled)? in .*", lines[0])
    assert final is not None, lines[0]
    total, ok, cancelled = (int(n or 0) for n in final.groups())
    pulled = source.pulled
    assert total == pulled and ok + cancelled == total  # what had not ended was cancelled
    assert 4 <= pulled <= 1000 + 4  # the window, and the four handed back
    time.sleep(0.05)  # an intake still going on would pull more meanwhile
    assert next(numbers) == pulled  # the input is where the run left it: nothing pulled since


def test_dropping_an_unfinished_iterator_cleans_up(opts: dict[str, Any]) -> None:
    source = Counted()
    # A window of its own: the automatic one lets small results run far ahead of a head
    # task that is slow to come back (its worker the last to start, say).
    it = taskfan.imap(lambda x: x, source, **{**opts, "window": 1000})
    assert next(it) == 0
    del it  # the autouse fixture checks that no worker is left behind
    assert source.pulled <= 1000 + 1


def test_progress_bar_counts_items_not_chunks(backend: str, capsys: Any) -> None:
    it = taskfan.imap(lambda x: x, range(1001), backend=backend, progress=True, desc="items")
    assert sum(1 for _ in it) == 1001
    err = capsys.readouterr().err
    assert "1001/1001" in err and "ok=1001 failed=0" in err and "items" in err


def test_progress_off_when_stderr_is_not_a_terminal(backend: str, capsys: Any) -> None:
    taskfan.map(lambda x: x, range(10), backend=backend)
    assert capsys.readouterr().err == ""
