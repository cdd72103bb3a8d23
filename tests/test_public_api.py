"""The public surface: exactly the names of ``__all__``, each importable and documented."""

from __future__ import annotations

import subprocess
import sys

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
