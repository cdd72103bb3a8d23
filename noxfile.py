"""The test matrix: the test suite on every Python that pyproject.toml claims and this
machine has.

The versions are the `Programming Language :: Python :: 3.X` classifiers of pyproject.toml
that its requires-python admits; nothing else lists them. Interpreters are found here, not
by nox: a pyenv shim such as `python3.12` sits on PATH but fails unless that version is
pyenv's global one. So every candidate (each `python3.X` on PATH, then pyenv's
`versions/3.X.*/bin/python3.X`, newest first) is run once and kept only if it answers as
3.X, and each session gets the explicit path of the interpreter that answered. A version
with no working interpreter is no session: it is reported as not found and does not fail
the run.

    nox                             # every version found (what `make matrix` runs)
    nox -s 'tests(3.12)' -- -x -k t # one version, with extra pytest arguments
    python noxfile.py summary       # after nox: what ran, its counts, what was not found
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import nox
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent
REPORT = ROOT / ".nox" / "report.json"  # nox's own JSON report of the last run
RESULTS = ROOT / ".nox" / "results"  # one JUnit XML file per version, written by pytest

nox.options.sessions = ["tests"]
nox.options.report = str(REPORT)
# Missing interpreters are skipped and reported, never an error (nox makes them one when
# CI is set). Nothing is downloaded either: only the interpreters found below run.
nox.options.error_on_missing_interpreters = False
nox.options.download_python = "never"

_PROBE = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"


@dataclass(frozen=True)
class Interpreter:
    version: str  # "3.12"
    path: str  # the interpreter's own path, as it reports it (never a shim)


def claimed_versions() -> list[str]:
    """The 3.X versions pyproject.toml's classifiers list and requires-python admits."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    admitted = SpecifierSet(project.get("requires-python", ""))
    versions = set()
    for classifier in project.get("classifiers", []):
        match = re.fullmatch(r"Programming Language :: Python :: (\d+\.\d+)", classifier)
        if match and match.group(1) in admitted:
            versions.add(match.group(1))
    return sorted(versions, key=Version)


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        try:
            answer = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            answer = None
        if answer is not None and answer.returncode == 0 and answer.stdout.strip():
            return Path(answer.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _release(directory: Path) -> Version:
    try:
        return Version(directory.name)
    except InvalidVersion:
        return Version("0")


def _candidates(version: str) -> list[str]:
    """Every file that may be a python<version>: PATH first, then pyenv's installs."""
    name = f"python{version}"
    found = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(directory) / name
        if directory and path.is_file() and os.access(path, os.X_OK):
            found.append(str(path))
    if (root := _pyenv_root()) is not None:
        installs = sorted((root / "versions").glob(f"{version}.*"), key=_release, reverse=True)
        found += [str(d / "bin" / name) for d in installs if (d / "bin" / name).is_file()]
    return found


def _answers_as(candidate: str, version: str) -> str | None:
    """The interpreter's own path if `candidate` runs and is Python `version`, else None."""
    try:
        answer = subprocess.run(
            [candidate, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = answer.stdout.splitlines()
    if answer.returncode == 0 and len(lines) == 2 and lines[0] == version and lines[1]:
        return lines[1]
    return None


def discover() -> tuple[list[Interpreter], list[str]]:
    """(the interpreters found, one per claimed version; the versions not found)."""
    found: list[Interpreter] = []
    missing: list[str] = []
    for version in claimed_versions():
        path = next((p for c in _candidates(version) if (p := _answers_as(c, version))), None)
        if path is None:
            missing.append(version)
        else:
            found.append(Interpreter(version, path))
    return found, missing


FOUND, MISSING = discover()


def _describe(found: list[Interpreter], missing: list[str]) -> str:
    listed = ", ".join(f"{i.version} ({i.path})" for i in found) or "none"
    return f"found: {listed}; not found: {', '.join(missing) or 'none'}"


@nox.session
@nox.parametrize("python", [i.path for i in FOUND], ids=[i.version for i in FOUND])
def tests(session: nox.Session) -> None:
    """The test suite, against taskfan installed (not editable) with its test extra."""
    version = next(i.version for i in FOUND if i.path == session.python)
    junit = RESULTS / f"{version}.xml"
    junit.unlink(missing_ok=True)
    session.install(".[test]")
    session.run("pytest", f"--junitxml={junit}", *session.posargs)


def _outcomes(junit: Path) -> tuple[dict[str, int], list[str]] | None:
    """pytest's outcome counts and its FAILED and ERROR lines, from its JUnit XML file, or
    None if there is none."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, "0"))
    counts = {
        "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
        "failed": total["failures"],
        "skipped": total["skipped"],
        "errors": total["errors"],
    }
    failed = [
        f"{'FAILED' if case.find('failure') is not None else 'ERROR'} "
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts, failed


def _say(counts: dict[str, int]) -> str:
    """'206 passed, 2 failed', then skipped and errors when there are any."""
    said = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        said += f", {counts['skipped']} skipped"
    if counts["errors"]:
        said += f", {counts['errors']} error{'s' if counts['errors'] > 1 else ''}"
    return said


def summary() -> None:
    """Print which interpreters ran (with their outcome and counts) and which were not
    found, from the last nox run's report and pytest's JUnit files."""
    try:
        sessions = json.loads(REPORT.read_text())["sessions"]
    except (OSError, ValueError, KeyError):
        sessions = []
    results = {name: s.get("result") for s in sessions for name in s.get("signatures", [])}
    ran: list[Interpreter] = []
    not_run: list[str] = []
    rows: list[str] = []
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for interpreter in FOUND:
        result = results.get(f"tests({interpreter.version})")
        if result is None:
            not_run.append(interpreter.version)
            continue
        ran.append(interpreter)
        outcomes = _outcomes(RESULTS / f"{interpreter.version}.xml")
        if outcomes is None:
            rows.append(f"  {interpreter.version}  {result:<8} no test results (the session")
            rows.append("        failed before pytest ended: see its log above)")
            continue
        counts, failed = outcomes
        for key in totals:
            totals[key] += counts[key]
        rows.append(f"  {interpreter.version}  {result:<8} {_say(counts)}  [{interpreter.path}]")
        rows += [f"        {test}" for test in failed]
    print("== test matrix (noxfile.py) ==")
    print(*rows, sep="\n")
    listed = ", ".join(f"{i.version} ({i.path})" for i in ran) or "none"
    line = f"ran: {listed}; not found: {', '.join(MISSING) or 'none'}"
    if not_run:
        line += f"; found but not run: {', '.join(not_run)}"
    print(line)
    # All versions added up, as the plain closing line CI reads: N passed, N failed.
    failures = totals["failed"] + totals["errors"]
    print(f"matrix: {totals['passed']} passed, {failures} failed, {totals['skipped']} skipped")


if __name__ == "__main__":
    if sys.argv[1:] == ["summary"]:
        summary()
    else:
        sys.exit(f"usage: {sys.argv[0]} summary   (run the matrix itself with nox)")
else:
    print(f"nox matrix: {_describe(FOUND, MISSING)}", file=sys.stderr, flush=True)
