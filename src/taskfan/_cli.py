"""The ``taskfan`` command (also ``python -m taskfan``): run a function over JSON lines.

    taskfan run TARGET [--input FILE|-] [--output FILE|-] [--key FIELD] [options]
    taskfan status JOURNAL
    taskfan results JOURNAL [--status S]
    taskfan demo [--dir DIR]

Results go to standard output (or ``--output``), one JSON object per task, written as
tasks end; progress and messages go to standard error. Exit codes: 0 every task
succeeded, 1 some failed, 2 a usage or input error (nothing ran), 130 Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

from ._args import add_arguments, options_from_args
from ._journal import Journal, JournalError
from ._outcome import STATUSES, Outcome
from ._records import key_cell

__all__ = ["main"]

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad command line or input: said on stderr, exit code 2, nothing runs."""


@dataclass(frozen=True, slots=True)
class Task:
    key: Hashable
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def main(argv: list[str] | None = None) -> int:
    """Run the ``taskfan`` command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE
    with _plain_warnings():
        try:
            return int(args.command(args))
        except (UsageError, JournalError) as error:
            _say(f"error: {error}")
            return USAGE
        except KeyboardInterrupt:
            _say("interrupted (Ctrl+C); the tasks that had ended are in the output and journal")
            return INTERRUPTED


def _say(text: str) -> None:
    print(f"taskfan: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """Warnings as one line each on stderr, not with the source line of taskfan's code."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")

        def show(message: Any, *rest: Any, **kwargs: Any) -> None:
            _say(f"warning: {str(message).removeprefix('taskfan: ')}")

        warnings.showwarning = show
        yield


# --- the parser ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskfan",
        description="Run a Python function over many inputs at once, and never lose a result.",
    )
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run TARGET once per line of JSON input",
        description="Each input line is JSON: an object becomes keyword arguments, an array "
        "positional arguments, anything else the single argument. A task's key is its line "
        "number, or --key FIELD of its object.",
    )
    run.add_argument("target", metavar="TARGET", help="package.module:function or file.py:function")
    run.add_argument("--input", default="-", metavar="FILE", help="JSON lines (default: stdin)")
    run.add_argument("--output", default="-", metavar="FILE", help="results (default: stdout)")
    run.add_argument("--key", metavar="FIELD", help="the field of each object that is its key")
    run.add_argument(
        "--dry-run", action="store_true", help="list what would run (and what would resume)"
    )
    add_arguments(run)
    run.set_defaults(command=_run)

    status = commands.add_parser("status", help="what a journal holds: counts, failures")
    status.add_argument("journal", metavar="JOURNAL")
    status.set_defaults(command=_status)

    results = commands.add_parser("results", help="the outcomes in a journal, as JSON lines")
    results.add_argument("journal", metavar="JOURNAL")
    results.add_argument("--status", choices=STATUSES, help="only the outcomes with this status")
    results.set_defaults(command=_results)

    demo = commands.add_parser("demo", help="a real run: failures, a retry, a resumed re-run")
    demo.add_argument("--dir", metavar="DIR", help="where to leave its files (default: a new "
                      "temporary folder)")  # fmt: skip
    demo.set_defaults(command=_demo)
    return parser


# --- taskfan run --------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    fn = load_target(args.target)
    tasks = read_tasks(args.input, args.key)
    options = options_from_args(args)
    options.setdefault("desc", _describe(fn))
    if args.dry_run:
        return _dry_run(tasks, options, args.output)
    from ._api import Runner

    try:
        runner = Runner(**options)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    for task in tasks:
        runner.add(task.key, fn, *task.args, **task.kwargs)
    with _opened(args.output) as out:
        write = _line_writer(out)
        try:
            results = runner._run(write)
        except (TypeError, ValueError, NotImplementedError) as error:
            if runner.report.total:
                raise
            raise UsageError(str(error)) from None  # a bad key or option: nothing ran
    report = results.report
    _say(str(report) + (f"; journal {options['journal']}" if "journal" in options else ""))
    _say_failures(results.outcomes.values())
    return FAILED if report.failed else OK


def _describe(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _say_failures(outcomes: Any) -> None:
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed[:10]:
        _say(f"{json.dumps(outcome.key)} {outcome.status}: {_error_line(outcome)}")
    if len(failed) > 10:
        _say(f"... and {len(failed) - 10} more failed")


def _line_writer(out: TextIO) -> Callable[[Outcome], None]:
    def write(outcome: Outcome) -> None:
        out.write(outcome_json(outcome) + "\n")
        out.flush()  # a reader of the output sees each task as it ends

    return write


def outcome_json(outcome: Outcome) -> str:
    """One output line: key, status, value, error, attempts, duration."""
    record = {
        "key": outcome.key,
        "status": outcome.status,
        "value": outcome.value,
        "error": _error_line(outcome) if outcome.error is not None else None,
        "attempts": outcome.attempts,
        "duration": round(outcome.duration, 6),
    }
    return json.dumps(record, default=_jsonable, ensure_ascii=False)


def _error_line(outcome: Outcome) -> str:
    error = outcome.error
    if error is None:
        return ""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _jsonable(value: Any) -> Any:
    """What JSON cannot hold as is: sets as lists, bytes as text, anything else its repr."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise UsageError(f"cannot write the output file {path!r}: {error.strerror}") from None
    with out:
        yield out


def _dry_run(tasks: list[Task], options: dict[str, Any], output: str) -> int:
    resumed = _resumable_keys(options.get("journal"), options.get("rerun", "failed"))
    to_run = 0
    with _opened(output) as out:
        for task in tasks:
            action = "resume" if task.key in resumed else "run"
            to_run += action == "run"
            record = {"key": task.key, "action": action, "args": task.args, "kwargs": task.kwargs}
            out.write(json.dumps(record, default=_jsonable, ensure_ascii=False) + "\n")
    _say(f"dry run: {to_run} of {len(tasks)} tasks would run, {len(tasks) - to_run} resumed "
         "from the journal; nothing ran")  # fmt: skip
    return OK


def _resumable_keys(journal: str | None, rerun: str) -> set[Hashable]:
    if journal is None or rerun == "all" or not os.path.exists(journal):
        return set()
    outcomes = Journal(journal).outcomes()
    return {k for k, o in outcomes.items() if o.ok or rerun == "missing"}


# --- the target ---------------------------------------------------------------------------


def load_target(spec: str) -> Callable[..., Any]:
    """The function ``module:function`` or ``path/to/file.py:function`` names."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UsageError(
            f"TARGET {spec!r} must be package.module:function or path/to/file.py:function"
        )
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    module = _load_file(where) if is_file else _import(where, spec)
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and n[0] != "_")
            raise UsageError(
                f"TARGET {spec!r}: {where} has no {name!r}; its functions are: "
                f"{', '.join(names[:30]) or 'none'}"
            )
        found = getattr(found, part)
    if not callable(found):
        raise UsageError(f"TARGET {spec!r}: {name} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


def _import(module: str, spec: str) -> Any:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of this folder
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and module.startswith(error.name):
            raise UsageError(
                f"TARGET {spec!r}: no module named {error.name!r} (looked in the current "
                "folder and on sys.path)"
            ) from None
        raise UsageError(f"TARGET {spec!r}: importing {module} failed: {error}") from error
    except Exception as error:
        raise UsageError(
            f"TARGET {spec!r}: importing {module} failed: {type(error).__name__}: {error}"
        ) from error


def _load_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"TARGET file {path!r} does not exist")
    name = file.stem if file.stem.isidentifier() else "taskfan_target"
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(file.resolve()):
        return loaded
    spec = importlib.util.spec_from_file_location(name, file.resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.resolve().parent))  # its own imports, as for a script
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise UsageError(f"running {path} failed: {type(error).__name__}: {error}") from error
    import cloudpickle

    # Worker processes may not find the file by its module name: send its functions whole.
    cloudpickle.register_pickle_by_value(module)
    return module


# --- the input ----------------------------------------------------------------------------


def read_tasks(source: str, key_field: str | None) -> list[Task]:
    """Every task of the JSON-lines input; UsageError naming the file and line if one is bad."""
    name = "<stdin>" if source == "-" else source
    tasks: list[Task] = []
    lines: dict[Hashable, int] = {}
    with _input(source) as stream:
        for number, line in _numbered(stream, name):
            task = _task(json_line(line, name, number), number, key_field, name)
            first = lines.setdefault(task.key, number)
            if first != number:
                raise UsageError(
                    f"{name}:{number}: key {json.dumps(task.key)} again (first on line {first});"
                    " each task needs its own key"
                )
            tasks.append(task)
    return tasks


@contextlib.contextmanager
def _input(source: str) -> Iterator[IO[str]]:
    if source == "-":
        yield sys.stdin
        return
    try:
        stream = open(source, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise UsageError(f"cannot read the input file {source!r}: {error.strerror}") from None
    with stream:
        yield stream


def _numbered(stream: IO[str], name: str) -> Iterator[tuple[int, str]]:
    number = 0
    try:
        for number, line in enumerate(stream, 1):
            if line.strip():
                yield number, line
    except UnicodeDecodeError:
        raise UsageError(f"{name}:{number + 1}: not UTF-8 text") from None


def json_line(line: str, name: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"{name}:{number}: not valid JSON ({error.msg} at column {error.colno}): "
            f"{line.strip()[:80]}"
        ) from None


def _task(item: Any, number: int, key_field: str | None, name: str) -> Task:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    if isinstance(item, dict):
        args, kwargs = (), item
    elif isinstance(item, list):
        args, kwargs = tuple(item), {}
    else:
        args, kwargs = (item,), {}
    if key_field is None:
        return Task(number, args, kwargs)
    if not isinstance(item, dict) or key_field not in item:
        raise UsageError(
            f"{name}:{number}: --key {key_field}: this line has no field {key_field!r}"
        )
    key = item[key_field]
    if isinstance(key, list):
        key = _tuples(key)
    try:
        key_cell(key)
    except TypeError:
        raise UsageError(
            f"{name}:{number}: --key {key_field}: the key {json.dumps(key)} is an object; a key "
            "must be a string, a number, or an array of them"
        ) from None
    return Task(key, args, kwargs)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# --- status, results, demo ----------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    print(Journal(args.journal).summary())
    return OK


def _results(args: argparse.Namespace) -> int:
    for outcome in Journal(args.journal).iter_outcomes(args.status):
        print(outcome_json(outcome))
    return OK


def _demo(args: argparse.Namespace) -> int:
    from ._demo import demo

    return demo(args.dir)
