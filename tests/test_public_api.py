"""The public surface: exactly the names of ``__all__``, each importable and documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

import taskfan

EXPECTED = {
    "map",
    "imap",
    "amap",
    "aimap",
    "AsyncResultIterator",
    "starmap",
    "Runner",
    "Parallelized",
    "ResultIterator",
    "Outcome",
    "Results",
    "Report",
    "SafeCounter",
    "SafeDict",
    "add_arguments",
    "options_from_args",
    "TaskfanError",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
    "Cancelled",
    "TaskTraceback",
    "Journal",
    "__version__",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(taskfan.__all__) == EXPECTED
    for name in taskfan.__all__:
        assert hasattr(taskfan, name), name
    public = {n for n in vars(taskfan) if not n.startswith("_")}
    assert public <= EXPECTED | {"backends"}, public - EXPECTED


def test_public_names_have_docstrings() -> None:
    for name in taskfan.__all__:
        obj = getattr(taskfan, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree() -> None:
    for cls in (taskfan.TaskError, taskfan.TaskTimeout, taskfan.WorkerCrashed, taskfan.Cancelled):
        assert issubclass(cls, taskfan.TaskfanError)
    assert issubclass(taskfan.TaskTimeout, TimeoutError)
    assert "signal SIGKILL (9)" in str(taskfan.WorkerCrashed(-9))
    assert "exited with code 3" in str(taskfan.WorkerCrashed(3))


def test_import_is_light() -> None:
    code = (
        "import sys, taskfan; heavy = {'multiprocessing', 'asyncio', 'dask', 'tqdm', "
        "'concurrent.futures'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_outcome_and_report_are_frozen_values() -> None:
    # Written out on taskfan._plain rather than with dataclasses (see its docstring): they
    # keep what the dataclasses gave, field-wise repr and equality, immutability, a hash
    # (the report's), and a pickle that rebuilds them.
    import copy
    import pickle

    outcome = taskfan.Outcome("k", "ok", 4, attempts=2, worker="thread-1")
    assert repr(outcome).startswith("Outcome(key='k', status='ok', value=4, error=None")
    assert outcome == taskfan.Outcome("k", "ok", 4, None, None, 2, 0.0, 0.0, "thread-1")
    assert outcome != taskfan.Outcome("k", "ok", 5, attempts=2, worker="thread-1")
    with pytest.raises(AttributeError, match="frozen"):
        outcome.value = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del outcome.value  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    assert copy.deepcopy(outcome) == outcome
    report = taskfan.Report(total=3, ok=2, failed=1, elapsed=1.5)
    assert report == taskfan.Report(3, 2, 1, 0, 0, 0, 0, 0, 1.5)
    assert hash(report) == hash(taskfan.Report(total=3, ok=2, failed=1, elapsed=1.5))
    assert pickle.loads(pickle.dumps(report)) == report
    assert report.tasks_per_s == 2.0


def test_options_default_and_unknown_fields() -> None:
    from taskfan._options import Options

    assert Options().retries == 0 and Options(retries=2).retries == 2
    with pytest.raises(TypeError, match="unknown fields: retrys"):
        Options(retrys=2)
