"""SafeCounter / SafeDict under concurrent workers; add_arguments / options_from_args."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

import taskfan


def test_safe_counter_never_loses_an_update(opts: dict[str, Any], backend: str) -> None:
    counter = taskfan.SafeCounter.make(backend)

    def bump(_: int) -> None:
        for _ in range(10_000):
            counter.increment("hits")
        counter.increment("tasks")

    with counter:
        taskfan.map(bump, range(4), chunksize=1, **opts)
        assert counter.get("hits") == 40_000
        assert counter.as_dict() == {"hits": 40_000, "tasks": 4}
        assert counter.get("never") == 0


def test_safe_dict(opts: dict[str, Any], backend: str) -> None:
    with taskfan.SafeDict.make(backend) as shared:
        taskfan.map(lambda i: shared.set(i, i * i), range(100), **opts)
        assert shared.as_dict() == {i: i * i for i in range(100)}
        assert shared[7] == 49 and shared.get(1000, "none") == "none"
        with pytest.raises(KeyError):
            shared[1000]


def test_safe_make_names_a_bad_backend() -> None:
    with pytest.raises(ValueError, match=r"SafeCounter\.make"):
        taskfan.SafeCounter.make("gpu")


def test_add_arguments_round_trip() -> None:
    parser = taskfan.add_arguments(argparse.ArgumentParser(prog="tool"))
    parser.add_argument("--mine", default=1)
    args = parser.parse_args(
        [
            "-j",
            "8",
            "--retries",
            "2",
            "--timeout",
            "1.5",
            "--rate",
            "10/min",
            "--no-progress",
            "--backend",
            "thread",
        ]
    )
    options = taskfan.options_from_args(args)
    assert options == {
        "workers": 8,
        "retries": 2,
        "timeout": 1.5,
        "rate": pytest.approx(1 / 6),
        "progress": False,
        "backend": "thread",
    }
    options.pop("rate")
    assert taskfan.map(abs, [-1, -2], **options) == [1, 2]
    assert taskfan.options_from_args(parser.parse_args([])) == {}
    assert taskfan.options_from_args(parser.parse_args(["--parallel", "3"])) == {"workers": 3}


def test_add_arguments_rejects_bad_values(capsys: Any) -> None:
    parser = taskfan.add_arguments(argparse.ArgumentParser(prog="tool"))
    for argv, message in (
        (["-j", "0"], "expected an integer >= 1"),
        (["--rate", "fast"], "rate must be"),
        (["--timeout", "-1"], "expected seconds > 0"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err
