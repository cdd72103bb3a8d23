"""The journal: a SQLite file (WAL mode) recording every finished task, and reading it back.

One row per task key, holding the last way that task ended:
status, value, error, traceback, attempts, timings, and the run that wrote it. A run
writes through :class:`Recorder`: the engine hands it ended pieces (one queue put per
piece), and a thread of its own turns them into rows and commits them in small
transactions, so the engine never waits on the disk. A killed run loses only the tasks in
flight and the rows not yet committed (at most one batch, a few milliseconds of results).

How keys, values and errors are stored is ``_records``'s business: values as JSON when
they round-trip, else pickled, so a journal is trusted input, like a pickle file. A value
that cannot be pickled either keeps only its repr, and its key runs again next time.

Only one run writes a journal at a time: it holds an OS lock on ``<journal>-lock`` for
the whole run (released by the OS if the process dies). Readers (:class:`Journal`, a
second ``taskfan status``) never wait: WAL lets them read while the run writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from ._errors import TaskfanError
from ._interrupts import leave_ctrl_c_to_the_main_thread
from ._outcome import STATUSES, Outcome
from ._records import (
    INT64_END,
    INT64_MIN,
    Cell,
    Row,
    encode_value,
    key_from_cell,
    outcome_from_row,
)

__all__ = ["Entry", "Journal", "JournalError", "JournalSummary", "Recorder", "Store"]

logger = logging.getLogger("taskfan")

#: PRAGMA application_id of a taskfan journal ("TFJN"): tells ours from other SQLite files
APPLICATION_ID = 0x54464A4E
SCHEMA_VERSION = 1
#: most rows in one transaction; a batch also ends whenever the queue runs dry
BATCH_ROWS = 4096
#: seconds a connection waits for a lock SQLite holds briefly (a checkpoint, a reader)
BUSY_SECONDS = 30.0


_SQLITE_MAGIC = b"SQLite format 3\x00"
_FAILED = ("failed", "timeout", "crashed")

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    function TEXT NOT NULL,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    ended REAL,
    pid INTEGER,
    host TEXT
);
CREATE TABLE outcomes (
    key PRIMARY KEY,
    status TEXT NOT NULL,
    value,
    attempts INTEGER NOT NULL,
    started REAL NOT NULL,
    duration REAL NOT NULL,
    worker TEXT NOT NULL,
    run INTEGER NOT NULL,
    error_type TEXT,
    error_text TEXT,
    error BLOB,
    traceback TEXT
);
"""

# Tasks that ended ok bind 7 values, those that failed 12: most rows are ok, and binding
# is most of the cost of a row.
_UPSERT_OK = """
INSERT INTO outcomes (key, status, value, attempts, started, duration, worker, run)
VALUES (?, 'ok', ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    status = 'ok', value = excluded.value, attempts = excluded.attempts,
    started = excluded.started, duration = excluded.duration, worker = excluded.worker,
    run = excluded.run, error_type = NULL, error_text = NULL, error = NULL, traceback = NULL
"""

_UPSERT_FAILED = """
INSERT INTO outcomes VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET
    status = excluded.status, value = NULL, attempts = excluded.attempts,
    started = excluded.started, duration = excluded.duration, worker = excluded.worker,
    run = excluded.run, error_type = excluded.error_type, error_text = excluded.error_text,
    error = excluded.error, traceback = excluded.traceback
"""

_COLUMNS = (
    "key, status, value, attempts, started, duration, worker, error_type, error_text, "
    "error, traceback"
)
#: a value stored in full (not only its repr): such a key can be resumed
_STORED = "(typeof(value) != 'blob' OR substr(value, 1, 1) = x'80')"


class JournalError(TaskfanError):
    """The journal cannot be used: not a taskfan journal, corrupt, or in use by another run."""


# --- the file -----------------------------------------------------------------------------


def _check_file(path: str, *, must_exist: bool) -> bool:
    """Is there a database at ``path`` (False: nothing there yet)? Raise if it is none.

    Looks at the file's first bytes only: a file that is not a database is never opened
    by SQLite, so it is left exactly as it was. Whether it is a taskfan journal is asked
    of SQLite (:func:`_check_schema`): in WAL mode the header on disk may lag.
    """
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        if must_exist:
            raise JournalError(f"no journal at {path!r}: the file does not exist") from None
        return False
    except IsADirectoryError:
        raise JournalError(f"journal {path!r} is a directory; give a file path") from None
    except OSError as error:
        raise JournalError(f"cannot read the journal {path!r}: {error}") from None
    if not header:
        return False  # an empty file (made by mkstemp, say) becomes a new journal
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise JournalError(
            f"{path!r} is not a taskfan journal (not even a SQLite database); it was left "
            "untouched. Pass another journal path, or move that file away."
        )
    return True


def _corrupt(path: str, error: sqlite3.Error) -> JournalError:
    return JournalError(
        f"the journal {path!r} cannot be read ({error}); it may be corrupt. It was left as "
        "it is: move it away to start afresh, or pass another journal path."
    )


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        uri = "file:" + _uri_path(path) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_SECONDS, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None)
    return conn


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _check_schema(conn: sqlite3.Connection, path: str) -> None:
    """Raise unless the database on ``conn`` is a taskfan journal this version can use."""
    if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise JournalError(
            f"{path!r} is a SQLite database, but not a taskfan journal; it was left "
            "untouched. Pass another journal path."
        )
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path!r} was written by a newer taskfan (format {version}); "
            "upgrade taskfan to read it"
        )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"runs", "outcomes"} <= tables:
        raise JournalError(f"{path!r} is damaged: it lacks the tables of a taskfan journal")


# --- the lock: one writing run per journal ------------------------------------------------

_held_here: set[str] = set()  # journals a run of this process writes now (real paths)
_held_lock = threading.Lock()


class _WriterLock:
    """An OS lock on ``<journal>-lock``, held by the run writing the journal.

    The OS drops it when the process dies, however it dies, so a killed run never leaves
    a stale lock. A lock is per process, so runs of this process are tracked too.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = path + "-lock"
        self._fd: int | None = None
        self._real = os.path.realpath(path)

    def acquire(self) -> None:
        with _held_lock:
            if self._real in _held_here:
                raise JournalError(_busy(self.path, "another run of this process"))
            _held_here.add(self._real)
        try:
            self._fd = self._lock_file()
        except BaseException:
            with _held_lock:
                _held_here.discard(self._real)
            raise

    def _lock_file(self) -> int:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise JournalError(
                f"cannot create the journal's lock {self.lock_path!r}: {error}"
            ) from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise JournalError(_busy(self.path, holder or "another process"))
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays for the next run
            self._fd = None
        with _held_lock:
            _held_here.discard(self._real)


def _busy(path: str, holder: str) -> str:
    return (
        f"the journal {path!r} is being written by {holder}: two runs writing one journal "
        "would run the same tasks twice. Wait for that run to end, or pass another journal."
    )


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except (OSError, AttributeError):
        return ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        # A POSIX record lock, not flock: a forked worker does not inherit it, so a
        # killed run's workers (which exit within a second) never keep it held.
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


# --- a run's store ------------------------------------------------------------------------


@dataclass
class Store:
    """One run's hold on its journal: the lock, the run's row, and lookups of past outcomes."""

    path: str
    function: str
    rerun: str
    run_id: int = 0
    recorded: int = 0  # rows there before this run
    last_function: str | None = None
    _conn: sqlite3.Connection | None = None
    _lock: _WriterLock | None = None

    def open(self) -> None:
        """Lock the journal, check or create it, and start this run's row."""
        self._lock = _WriterLock(self.path)
        existed = _check_file(self.path, must_exist=False)
        self._lock.acquire()
        try:
            self._conn = _connect(self.path)
            if existed:
                _check_schema(self._conn, self.path)
            self._start_run(existed)
        except sqlite3.Error as error:
            self.close()
            raise _corrupt(self.path, error) from None
        except BaseException:
            self.close()
            raise

    def _start_run(self, existed: bool) -> None:
        conn = self._conn
        assert conn is not None
        if existed:  # read all it needs before it writes anything: a corrupt file stays as is
            self.recorded = conn.execute("SELECT count(*) FROM outcomes").fetchone()[0]
            last = conn.execute(
                "SELECT function FROM runs "
                "WHERE id = (SELECT run FROM outcomes ORDER BY rowid DESC LIMIT 1)"
            ).fetchone()
            self.last_function = last[0] if last else None
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not existed:
            conn.executescript("BEGIN; " + _SCHEMA + " COMMIT;")
        now = time.time()
        cursor = conn.execute(
            "INSERT INTO runs (function, started, updated, pid, host) VALUES (?, ?, ?, ?, ?)",
            (self.function, now, now, os.getpid(), socket.gethostname()),
        )
        self.run_id = int(cursor.lastrowid or 0)

    @property
    def lookups(self) -> bool:
        """Can a key of this run have been recorded and be resumed?"""
        return self.recorded > 0 and self.rerun != "all"

    def recorded_rows(self, cells: Sequence[Cell]) -> dict[Cell, Row]:
        """The rows of the keys among ``cells`` that the journal holds in full."""
        conn = self._conn
        assert conn is not None
        found: dict[Cell, Row] = {}
        for start in range(0, len(cells), 2000):
            part = cells[start : start + 2000]
            marks = ",".join("?" * len(part))
            sql = f"SELECT {_COLUMNS} FROM outcomes WHERE key IN ({marks}) AND {_STORED}"
            try:
                for row in conn.execute(sql, part):
                    found[row[0]] = row
            except sqlite3.Error as error:
                raise _corrupt(self.path, error) from None
        return found

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


# --- the writer ---------------------------------------------------------------------------

#: What the engine hands the writer per ended piece: first position, key texts (None:
#: the positions themselves), values, values encoded already, failures by offset (None
#: for one that is retried, so not ended), attempt, worker, started, duration per item.
Entry = tuple[
    int,
    Sequence[Cell] | None,
    Sequence[Any],
    dict[int, Any] | None,
    dict[int, tuple[str, str, str, bytes | None, str] | None] | None,
    int,
    str,
    float,
    float,
]


@dataclass
class Recorder:
    """Writes ended tasks to the journal from a thread of its own, in small transactions.

    :meth:`put` only queues (the engine never waits on the disk); :meth:`close` writes
    what is queued, ends the run's row and joins the thread. The thread starts at the
    first put: by then the first worker processes exist, so they were started from a
    process with a single thread (see ``_start``).
    """

    path: str
    run_id: int
    _queue: queue.SimpleQueue[Entry | None] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None
    written: int = 0

    def put(self, entry: Entry) -> None:
        if self._error is not None:
            raise self._failed()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_all, name="taskfan-journal", daemon=True
            )
            self._thread.start()
        self._queue.put(entry)

    def close(self) -> None:
        """Write everything queued, mark the run ended, stop the thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_all, name="taskfan-journal", daemon=True
            )
            self._thread.start()  # still needed: it ends the run's row
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._failed()

    def _failed(self) -> JournalError:
        error = JournalError(f"writing the journal {self.path!r} failed: {self._error}")
        error.__cause__ = self._error
        return error

    def _write_all(self) -> None:
        leave_ctrl_c_to_the_main_thread()
        try:
            conn = _connect(self.path)
        except BaseException as error:
            self._error = error
            self._drain()
            return
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            self._loop(conn)
        except BaseException as error:
            self._error = error
            self._drain()
        finally:
            conn.close()

    def _drain(self) -> None:
        while self._queue.get() is not None:
            pass

    def _loop(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        done = False
        while not done:
            ok: list[Row] = []
            failed: list[Row] = []
            entry = get()
            while True:
                if entry is None:
                    done = True
                    break
                _rows(entry, self.run_id, ok, failed)
                if len(ok) + len(failed) >= BATCH_ROWS:
                    break
                try:
                    entry = get_nowait()
                except queue.Empty:
                    break
            self._commit(conn, ok, failed, ended=done)

    def _commit(
        self, conn: sqlite3.Connection, ok: list[Row], failed: list[Row], *, ended: bool
    ) -> None:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if ok:
                conn.executemany(_UPSERT_OK, ok)
            if failed:
                conn.executemany(_UPSERT_FAILED, failed)
            column = "ended = ?, updated" if ended else "updated"
            params = (now, now, self.run_id) if ended else (now, self.run_id)
            conn.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.written += len(ok) + len(failed)


def _rows(entry: Entry, run: int, ok: list[Row], failed: list[Row]) -> None:
    """Append the rows of ``entry`` to ``ok`` and ``failed``."""
    seq, cells, values, encoded, failures, attempt, worker, started, per_item = entry
    n = len(values)
    keys: Sequence[Cell] = cells if cells is not None else range(seq, seq + n)
    if not failures and not encoded:  # the common case, without a call per row
        stored = [
            v if type(v) is int and INT64_MIN <= v < INT64_END else encode_value(v) for v in values
        ]
        starts = [started + i * per_item for i in range(n)]
        ok.extend(zip(keys, stored, repeat(attempt), starts, repeat(per_item), repeat(worker),
                      repeat(run)))  # fmt: skip
        return
    for i, value in enumerate(values):
        when = started + i * per_item
        if failures and i in failures:
            failure = failures[i]
            if failure is not None:  # None: it goes on to a retry, so it has not ended
                status, etype, etext, blob, tb = failure
                failed.append((keys[i], status, attempt, when, per_item, worker, run, etype,
                               etext, blob, tb))  # fmt: skip
            continue
        cell = encoded[i] if encoded and i in encoded else encode_value(value)
        ok.append((keys[i], cell, attempt, when, per_item, worker, run))


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalSummary:
    """What a journal holds: counts per status, the runs, and the failed keys' errors."""

    path: str
    functions: tuple[str, ...]
    counts: dict[str, int]
    runs: int
    elapsed: float
    failed: dict[Hashable, str]

    @property
    def total(self) -> int:
        """Keys recorded."""
        return sum(self.counts.values())

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n) or "nothing yet"
        lines = [
            f"journal {self.path}: {self.total} tasks recorded ({counts})",
            f"function: {', '.join(self.functions) or '-'}",
            f"runs: {self.runs}, {self.elapsed:.2f} s in all",
        ]
        if self.failed:
            lines.append(f"failed keys ({len(self.failed)}):")
            shown = list(self.failed.items())[:50]
            lines += [f"  {json.dumps(k)}: {line}" for k, line in shown]
            if len(self.failed) > len(shown):
                lines.append(f"  ... and {len(self.failed) - len(shown)} more")
        return "\n".join(lines)


class Journal:
    """Read a journal, also while a run writes it: ``outcomes()`` and ``summary()``.

    Opening it checks that the file is a taskfan journal; it is never written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        _check_file(self.path, must_exist=True)
        with self._reading() as conn:
            _check_schema(conn, self.path)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = _connect(self.path, readonly=True)
        except sqlite3.Error as error:
            raise _corrupt(self.path, error) from None
        try:
            yield conn
        except sqlite3.Error as error:
            raise _corrupt(self.path, error) from None
        finally:
            conn.close()

    def outcomes(self, status: str | None = None) -> dict[Hashable, Outcome]:
        """Key -> :class:`Outcome` of every recorded task (only ``status`` if given), in
        the order the keys were first recorded."""
        return {o.key: o for o in self.iter_outcomes(status)}

    def iter_outcomes(self, status: str | None = None) -> Iterator[Outcome]:
        """The recorded outcomes one by one (for journals too big to hold at once)."""
        if status is not None and status not in STATUSES:
            raise ValueError(
                f"status must be one of {', '.join(repr(s) for s in STATUSES)}; got {status!r}"
            )
        where = "" if status is None else " WHERE status = ?"
        with self._reading() as conn:
            cursor = conn.execute(f"SELECT {_COLUMNS} FROM outcomes{where} ORDER BY rowid",
                                  () if status is None else (status,))  # fmt: skip
            for row in cursor:
                yield outcome_from_row(row)

    def summary(self) -> JournalSummary:
        """Counts per status, the functions and runs, and the error line of each failure."""
        with self._reading() as conn:
            counts: dict[str, int] = {s: 0 for s in STATUSES if s != "cancelled"}
            for status, n in conn.execute("SELECT status, count(*) FROM outcomes GROUP BY 1"):
                counts[status] = n
            functions = tuple(
                r[0] for r in conn.execute("SELECT DISTINCT function FROM runs ORDER BY id")
            )
            runs, elapsed = conn.execute(
                "SELECT count(*), coalesce(sum(coalesce(ended, updated) - started), 0) FROM runs"
            ).fetchone()
            failed = {
                key_from_cell(k): f"{t}: {m}" if m else str(t)
                for k, t, m in conn.execute(
                    "SELECT key, error_type, error_text FROM outcomes WHERE status != 'ok' "
                    "ORDER BY rowid"
                )
            }
        return JournalSummary(self.path, functions, counts, runs, float(elapsed), failed)

    def __repr__(self) -> str:
        return f"Journal({self.path!r})"
