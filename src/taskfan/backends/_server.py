"""taskfan's own fork server: where worker processes come from when forking this one is not safe.

A program that runs other threads must not fork itself (a lock held by another thread at
that instant stays held in the child forever), so its workers are forked from a small
single-threaded process started once, the server. multiprocessing has one
(``forkserver``), but its first call costs a program about three times what a forked
``Pool`` does: the program imports ``multiprocessing.forkserver`` first, then the server
boots all of multiprocessing, and a second fresh Python (the resource tracker) boots next
to it on the same cores. This server is a fresh Python that imports only what a worker
runs (``_worker``); the program starts it before importing anything else it needs, so
both boot at the same time. Each worker imports the main script after its fork, as
multiprocessing's do: never the server, which must stay single-threaded, and a script's
top level may start a thread.

The protocol, over one Unix socket per server:

- a request is a 4-byte length, sent with the worker's file descriptors (SCM_RIGHTS),
  then that many bytes: a pickle of what the worker starts with;
- the server forks; the child becomes the worker (``_worker.worker_main``). The server
  writes the child's pid on the request's ``pid`` pipe and, once it has reaped the child,
  its exit code (as ``os.waitstatus_to_exitcode`` gives it) on the ``status`` pipe, which
  it then closes: the status pipe's read end is the worker's sentinel, readable exactly
  when the worker is gone;
- the server exits when the socket closes: when this program exits or dies.

This module is the server's entry point too, so it imports little at its top: the
server's own start is on the clock of a program's first call.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading  # (a worker needs it anyway: the server imports it either way)
from typing import Any

__all__ = [
    "ServerChild",
    "SharedSlots",
    "fork_worker",
    "serving",
    "shut_down",
    "usable",
    "warm_up",
]

#: True in the server process, and in a worker while it imports the main script: a call
#: made by the script's unguarded top level there must not start a server of its own.
serving = False

#: descriptors a request carries, in this order (see ``_run_worker``)
_FDS = ("conn", "dump", "control", "lifeline", "slots", "pid", "status")
_CHILD_FD = 3  # where the server finds its end of the socket


def usable() -> bool:
    """Can workers come from this server here (a POSIX system, a Python to start)?"""
    return (
        bool(sys.executable)
        and hasattr(os, "posix_spawn")
        and hasattr(os, "fork")
        and hasattr(os, "waitstatus_to_exitcode")
    )


# --- the program's side ---------------------------------------------------------------------


class _Server:
    """A running server, seen from the program: its pid and its socket."""

    def __init__(self, by_value: bool) -> None:
        import _socket

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self.pid = _spawn(theirs.fileno(), by_value)
        finally:
            theirs.close()
        self.sock = ours
        self.owner = os.getpid()  # a forked child inherits this object, not the server

    def alive(self) -> bool:
        """False once it has exited. (Not known for sure if something else reaped it, as
        with SIGCHLD ignored: then a request to a dead server fails, and a fresh one is
        started.)"""
        return _running_child(self.pid, unknown=True)

    def request(self, fds: list[int], payload: bytes) -> None:
        import _socket

        header = len(payload).to_bytes(4, "little")
        ancillary = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
        quiet = getattr(_socket, "MSG_NOSIGNAL", 0)  # a dead server: an error, not SIGPIPE
        self.sock.sendmsg([header], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, ancillary)], quiet)
        self.sock.sendall(payload, quiet)

    def close(self) -> None:
        """End the server: it exits when its socket closes (killed if it has not in 1 s)."""
        import time

        self.sock.close()
        deadline = time.monotonic() + 1.0
        while _running_child(self.pid, unknown=False):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                deadline = float("inf")
            time.sleep(0.001)


def _running_child(pid: int, *, unknown: bool) -> bool:
    """Has the child ``pid`` not exited yet? ``unknown`` if something else reaped it."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        return unknown


_server: _Server | None = None
_lock = threading.Lock()  # taken to start the server or send it a request (threads share it)


def shut_down() -> None:
    """End the server, if one runs: at the program's exit, once its workers have ended."""
    global _server
    server, _server = _server, None
    if server is not None and server.owner == os.getpid():
        server.close()


def warm_up(by_value: bool) -> None:
    """Start the server now (if it does not run yet): it boots while the call sets up."""
    with _lock:
        _running(by_value)


def _running(by_value: bool) -> _Server:
    global _server
    server = _server
    if server is not None and server.owner != os.getpid():
        # Inherited by a fork (a forked worker whose task calls taskfan, say): the socket
        # is its parent's, whose requests would interleave with this process's. A server
        # of its own; the copy of the socket goes (the parent keeps its own).
        server.sock.close()
        server = _server = None
    if server is not None and not server.alive():
        server.sock.close()
        server = _server = None
    if server is None:
        server = _server = _Server(by_value)
    return server


def _spawn(fd: int, by_value: bool) -> int:
    """Start a server on the socket ``fd``: a fresh Python of the same interpreter."""
    preload = ["taskfan.backends._worker", "runpy"]  # (runpy: the main script's import)
    if by_value or "cloudpickle" in sys.modules:
        preload.append("cloudpickle")  # functions go by value: the workers need it
    preload += _preload_asked() + _standard_library_in_use()
    code = (
        f"import sys; sys.path[:] = {_child_path()!r}; "
        f"from taskfan.backends._server import serve; serve({_CHILD_FD}, {_main()!r}, "
        f"{preload!r})"
    )
    args = [sys.executable, *_interpreter_flags(), "-c", code]
    source = fd
    if fd == _CHILD_FD:  # dup2 onto itself would leave it closed on exec
        source = os.dup(fd)
    try:
        return os.posix_spawn(
            sys.executable,
            args,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, source, _CHILD_FD),
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            ],
            setpgroup=0,  # Ctrl+C at the terminal is for the program, not its server
            setsigmask=(),  # a call from a thread that holds SIGINT back (see _interrupts)
        )
    finally:
        if source != fd:
            os.close(source)


def _interpreter_flags() -> list[str]:
    """The command-line options of this interpreter that a fresh one should get too.

    What ``subprocess._args_from_interpreter_flags`` gives, without importing subprocess
    before the server starts (about 4 ms of a first call).
    """
    flags = sys.flags
    args = ["-" + "O" * flags.optimize] if flags.optimize else []
    if flags.isolated:
        args.append("-I")  # (-E and -s with it)
    else:
        args += [f"-{letter}" for name, letter in _ISOLATION if getattr(flags, name)]
    args += [
        f"-{letter * getattr(flags, name)}"
        for name, letter in _FLAGS
        if getattr(flags, name) and not (flags.isolated and name == "safe_path")  # (-I has it)
    ]
    implied = []  # what -b, -bb and -X dev put into sys.warnoptions themselves
    if flags.bytes_warning:
        implied.append(("default" if flags.bytes_warning == 1 else "error") + "::BytesWarning")
    if flags.dev_mode:
        implied.append("default")
    options = list(sys.warnoptions)
    for option in implied:
        if option in options:
            options.remove(option)
    args += [f"-W{option}" for option in options]
    for key, value in sys._xoptions.items():
        args += ["-X", key if value is True else f"{key}={value}"]
    return args


_ISOLATION = (("ignore_environment", "E"), ("no_user_site", "s"))
_FLAGS = (
    ("dont_write_bytecode", "B"),
    ("no_site", "S"),
    ("verbose", "v"),
    ("bytes_warning", "b"),
    ("quiet", "q"),
    ("safe_path", "P"),
)


def _child_path() -> list[str]:
    """The program's import path, as a fresh process sees it (the current directory kept)."""
    mp = sys.modules.get("multiprocessing.process")
    here = getattr(mp, "ORIGINAL_DIR", None) or os.getcwd()
    return [here if entry == "" else entry for entry in sys.path]


def _main() -> tuple[str, str] | None:
    """How the server imports the main script: ``("name", module)``, ``("path", file)``.

    As multiprocessing does in its children: a script by its path, ``python -m`` by its
    module name, except a package's ``__main__``; nothing for a program read from
    standard input, ``-c`` or an interactive session (its functions travel by value).
    """
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return None if name == "__main__" or name.endswith(".__main__") else ("name", name)
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    return ("path", os.path.abspath(path))


def _standard_library_in_use() -> list[str]:
    """The standard library's modules this program has imported: the server imports them
    too, so that a worker finds them there, as a forked worker would in its parent.

    Each worker imports the main script after its fork, and with it what the script
    imports: multiprocessing, say, is 6-10 ms a worker, a whole run of tiny tasks. The
    standard library's modules start no thread and open nothing when imported, unlike
    the program's own or other packages', which a worker imports itself (list them in
    ``multiprocessing.set_forkserver_preload`` to have the server import them).
    """
    standard: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    return [
        name
        for name in list(sys.modules)
        if name.partition(".")[0] in standard and name.partition(".")[0] not in _NOT_PRELOADED
    ]


#: Modules of the standard library whose import does something (print, open a window or
#: a browser, change the terminal), or that a worker has no use for.
_NOT_PRELOADED = frozenset(
    {"__main__", "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
    | {"readline", "rlcompleter", "pdb", "ensurepip", "venv", "test", "pydoc", "pydoc_data"}
)


def _preload_asked() -> list[str]:
    """What the program asked multiprocessing's fork server to import, kept for ours."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    asked = getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or []
    return [name for name in asked if isinstance(name, str) and name != "__main__"]


def fork_worker(
    fds: dict[str, int], start: tuple[Any, ...], name: str, by_value: bool
) -> ServerChild:
    """Have the server fork a worker on ``fds`` (see ``_FDS``; the caller closes them).

    ``start`` is what the worker starts with, ``name`` its name in multiprocessing.
    """
    pid_r, pid_w = os.pipe()
    status_r, status_w = os.pipe()
    sent = {**fds, "pid": pid_w, "status": status_w}
    import pickle

    mp = sys.modules.get("multiprocessing")
    authkey = None if mp is None else bytes(mp.current_process().authkey)
    here = (os.getcwd(), _child_path(), name, authkey)
    payload = pickle.dumps((start, here), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        with _lock:
            _request([sent[name] for name in _FDS], payload, by_value)
    except BaseException:
        os.close(pid_r)
        os.close(status_r)
        raise
    finally:
        os.close(pid_w)
        os.close(status_w)
    return ServerChild(pid_r, status_r)


def _request(fds: list[int], payload: bytes, by_value: bool) -> None:
    global _server
    for attempt in (1, 2):
        server = _running(by_value)
        try:
            server.request(fds, payload)
            return
        except OSError:  # the server died since it was looked at: a fresh one
            server.sock.close()
            _server = None
            if attempt == 2:
                raise


class ServerChild:
    """A worker forked by the server, as the backend sees a ``multiprocessing.Process``.

    ``sentinel`` is readable once the worker is gone; ``pid`` is read from the server
    when first needed, so that starting a worker never waits for the server's boot.
    """

    def __init__(self, pid_fd: int, sentinel: int) -> None:
        self._pid_fd: int | None = pid_fd
        self._pid: int | None = None
        self.sentinel: int | None = sentinel
        self._ended = False
        self.exitcode: int | None = None

    @property
    def pid(self) -> int | None:
        if self._pid is None and self._pid_fd is not None:
            # (Not known within a second: the server is not done booting; a worker it
            # forks later finds its pipes closed, and ends at once.)
            data = _read_within(self._pid_fd, 8, 1.0)
            if len(data) == 8:
                self._pid = int.from_bytes(data, "little", signed=True)
            if data or _readable(self._pid_fd, 0):
                os.close(self._pid_fd)  # the pid, or EOF: never a fork (the server died)
                self._pid_fd = None
        return self._pid

    def join(self, timeout: float | None = None) -> None:
        if not self._ended and self.sentinel is not None and _readable(self.sentinel, timeout):
            data = _read_within(self.sentinel, 8, 1.0)
            self._ended = True
            if len(data) == 8:
                self.exitcode = int.from_bytes(data, "little", signed=True)
            else:  # the server died: its child lives on, unwatched, unless killed
                self.kill()

    def is_alive(self) -> bool:
        self.join(0)
        return not self._ended

    def kill(self) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(OSError):  # gone already
            os.kill(pid, 9)

    def close(self) -> None:
        """Free the pipes (the backend's, once the worker has ended or been killed)."""
        for fd in (self._pid_fd, self.sentinel):
            if fd is not None:
                os.close(fd)
        self._pid_fd = self.sentinel = None


def _readable(fd: int, timeout: float | None) -> bool:
    import select

    poller = select.poll()  # (not select.select: a descriptor may be past 1024)
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _read_within(fd: int, size: int, timeout: float) -> bytes:
    """Up to ``size`` bytes of ``fd``: fewer at its end or when ``timeout`` passes."""
    data = b""
    while len(data) < size and _readable(fd, timeout):
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class SharedSlots:
    """The workers' shared slots: memory that a worker forked by the server maps too."""

    def __init__(self, size: int) -> None:
        import mmap

        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("taskfan-slots", os.MFD_CLOEXEC)
        else:  # pragma: no cover - no memfd (macOS): a file unlinked at once
            import tempfile

            self.fd, name = tempfile.mkstemp(prefix="taskfan-slots-")
            os.unlink(name)
        os.ftruncate(self.fd, size)
        self.size = size
        self._map: Any = mmap.mmap(self.fd, size)

    def create_memoryview(self) -> memoryview:
        return memoryview(self._map)

    def close(self) -> None:
        """Free the memory (every view of it must be released first)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._map.close()


# --- the server's side ----------------------------------------------------------------------


def serve(fd: int, main: tuple[str, str] | None, preload: list[str]) -> None:
    """The server: import what workers need, then fork one per request until the end."""
    global serving
    serving = True
    import _socket
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a deprecated module: the program was told)
        for name in preload:
            with contextlib.suppress(Exception):  # (a worker then says what is missing)
                __import__(name)
    global _main_script
    _main_script = main
    sock = _socket.socket(fileno=fd)
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.signal(signal.SIGCHLD, _wake)
    signal.set_wakeup_fd(sig_w)
    statuses: dict[int, int] = {}  # a child's pid: the pipe its exit code goes to
    try:
        _serve_requests(sock, sig_r, statuses, (sock.fileno(), sig_r, sig_w))
    finally:
        _flush()
        os._exit(0)  # not the main script's exit hooks: they are the program's own


#: How a worker imports the main script (see serve): each worker does, after its fork.
_main_script: tuple[str, str] | None = None


def _wake(signum: int, frame: Any) -> None:
    """SIGCHLD: its only purpose is the wakeup fd's byte."""


def _serve_requests(sock: Any, sig_r: int, statuses: dict[int, int], own: tuple[int, ...]) -> None:
    import select

    while True:
        ready = select.select([sock, sig_r], [], [])[0]
        if sig_r in ready:
            with contextlib.suppress(BlockingIOError):  # (all read)
                while len(os.read(sig_r, 4096)) == 4096:
                    pass
            _reap(statuses)
        if sock in ready:
            request = _receive(sock)
            if request is None:
                return  # the program closed its end, or died
            fds, payload = request
            pid = os.fork()
            if pid == 0:
                _run_worker(fds, payload, [*own, *statuses.values()])  # never returns
            statuses[pid] = fds[_FDS.index("status")]
            pid_w = fds[_FDS.index("pid")]
            for kept in fds:
                if kept != statuses[pid] and kept != pid_w:
                    os.close(kept)
            _write_quietly(pid_w, pid)
            os.close(pid_w)


def _reap(statuses: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is not None:
            _write_quietly(fd, os.waitstatus_to_exitcode(status))
            os.close(fd)


def _write_quietly(fd: int, number: int) -> None:
    with contextlib.suppress(OSError):  # the program has closed its end: nobody to tell
        os.write(fd, number.to_bytes(8, "little", signed=True))


def _receive(sock: Any) -> tuple[list[int], bytes] | None:
    """The next request: its descriptors and its payload; None at the socket's end."""
    import _socket

    space = _socket.CMSG_SPACE(len(_FDS) * 4)
    header, ancillary, _, _ = sock.recvmsg(4, space)
    if not header:
        return None
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(data[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, len(data) - len(data) % 4, 4)
            ]
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    size = int.from_bytes(header, "little")
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    if len(fds) != len(_FDS):
        raise RuntimeError(f"taskfan's fork server got {len(fds)} descriptors, not {len(_FDS)}")
    return fds, b"".join(chunks)


def _run_worker(fds: list[int], payload: bytes, close: list[int]) -> None:
    """In the forked child: become a worker on ``fds``, then exit."""
    global serving
    serving = False
    code = 1
    try:
        import signal

        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        named = dict(zip(_FDS, fds, strict=True))
        os.close(named["pid"])
        os.close(named["status"])  # only the server may close it: at this child's end
        import pickle

        from ._worker import WorkerSpec, worker_main

        start, (cwd, path, name, authkey) = pickle.loads(payload)
        slot, init_blob, max_tasks, slots_size = start
        with contextlib.suppress(OSError):  # gone since: the server's, then
            os.chdir(cwd)
        sys.path[:] = path  # the program's now, as multiprocessing gives its children
        if authkey is not None:
            _take_identity(name, authkey)
        if _main_script is not None:
            serving = True
            _import_main(*_main_script)
            serving = False
        spec = WorkerSpec(
            _Pipe(named["conn"]),
            _Pipe(named["lifeline"]),
            None,
            _Slots(named["slots"], slots_size),
            slot,
            init_blob,
            max_tasks,
            _Pipe(named["dump"]),
            _Pipe(named["control"]),
        )
        worker_main(spec)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        _flush()
        os._exit(code)


def _take_identity(name: str, authkey: bytes) -> None:
    """Give this worker the program's identity in multiprocessing, as its own children
    have: the same authentication key (else a Manager's proxies, taskfan.SafeCounter's or
    a user's queue, are refused here), and the worker's name.

    The server does not import multiprocessing (about 6 ms of its boot) and neither does a
    worker, unless a task needs it: the identity is given the moment its process module
    is imported, by a finder that wraps that import.
    """
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None:  # imported already (by the main script, say)
        me = mp.current_process()
        me.name, me.authkey = name, authkey
        return
    sys.meta_path.insert(0, _IdentityOnImport(name, authkey))


class _IdentityOnImport:
    """A finder that runs once: after ``multiprocessing.process`` is executed, it sets the
    current process's name and authentication key (see ``_take_identity``)."""

    def __init__(self, name: str, authkey: bytes) -> None:
        self.name, self.authkey = name, authkey

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "multiprocessing.process":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        name, authkey = self.name, self.authkey

        def exec_module(module: Any) -> None:
            run(module)
            me = module.current_process()
            me.name, me.authkey = name, authkey

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass


def _import_main(how: str, what: str) -> None:
    """Import the program's main script as ``__mp_main__``, as multiprocessing's children
    do, so that its functions and classes pickled as ``__main__.name`` are found here."""
    import runpy
    import types

    try:
        if how == "name":
            found = runpy.run_module(what, run_name="__mp_main__", alter_sys=True)
        else:
            found = runpy.run_path(what, run_name="__mp_main__")
    except BaseException:
        # Said here; the tasks that need the script then fail with what is missing.
        import traceback

        print(f"taskfan: the worker processes could not import {what}:", file=sys.stderr)
        traceback.print_exc()
        return
    main = types.ModuleType("__mp_main__")
    main.__dict__.update(found)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main


class _Pipe:
    """A worker's end of a pipe or socket, with the message framing of
    ``multiprocessing.connection.Connection`` (the program's end is one): a 4-byte
    big-endian length (-1, then 8 bytes, past 2 GiB), then the bytes."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        if n > 0x7FFFFFFF:
            self._write((-1).to_bytes(4, "big", signed=True) + n.to_bytes(8, "big"))
            self._write(data)
        elif n > 16384:
            self._write(n.to_bytes(4, "big", signed=True))
            self._write(data)
        else:
            self._write(n.to_bytes(4, "big", signed=True) + data)

    def recv_bytes(self) -> bytes:
        size = int.from_bytes(self._read(4), "big", signed=True)
        if size == -1:
            size = int.from_bytes(self._read(8), "big")
        return self._read(size)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _read(self, size: int) -> bytes:
        if size == 0:
            return b""
        first = os.read(self._fd, size)
        if len(first) == size:
            return first
        if not first:
            raise EOFError
        buffer = bytearray(first)
        while len(buffer) < size:
            chunk = os.read(self._fd, size - len(buffer))
            if not chunk:
                raise EOFError
            buffer += chunk
        return bytes(buffer)


class _Slots:
    """The shared slots, mapped in a worker (see SharedSlots)."""

    def __init__(self, fd: int, size: int) -> None:
        import mmap

        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def create_memoryview(self) -> memoryview:
        return memoryview(self._map)
