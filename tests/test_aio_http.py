"""A real client end to end: HTTP requests through ``amap`` and ``aimap``.

The server is the standard library's, on 127.0.0.1 in a thread of the test; the client
is a minimal HTTP/1.1 GET over ``asyncio.open_connection``. Some paths are answered with
500 on their first request only, and the runs retry them: every request is accounted
for, on the client's side and on the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import taskfan
from taskfan import Report

REQUESTS = 1000
FAIL_EVERY = 97  # paths /item/0, /item/97, ... get a 500 on their first request


def failing(i: int) -> bool:
    return i % FAIL_EVERY == 0


class Server(ThreadingHTTPServer):
    """Counts the requests of every path; stopping it joins every handler thread."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # 50 clients connect at once: no SYN dropped, no 1 s retry

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.seen[self.path] += 1
            first = self.server.seen[self.path] == 1
        _, _, number = self.path.rpartition("/")
        if first and failing(int(number)):
            self._answer(500, b"try again")
        else:
            self._answer(200, f"item {number}".encode())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line on stderr per request otherwise


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()  # joins the handler threads (block_on_close)
        thread.join(timeout=10)
        assert not thread.is_alive()


class ServerError(Exception):
    """The server answered 500."""


async def get(port: int, path: str) -> str:
    """GET ``path`` on 127.0.0.1:``port``; the body of a 200, ServerError on a 500."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        raw = await reader.read()  # Connection: close: the answer ends at EOF
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status == 500:
        raise ServerError(f"{path}: 500 {body.decode()}")
    if status != 200:
        raise RuntimeError(f"{path}: unexpected status {status}")
    return body.decode()


def paths(n: int) -> list[str]:
    return [f"/item/{i}" for i in range(n)]


def expected_requests(n: int) -> Counter[str]:
    return Counter({f"/item/{i}": 2 if failing(i) else 1 for i in range(n)})


OPTIONS = {"workers": 50, "retries": 2, "retry_on": ServerError, "backoff": 0}


def test_amap_over_http_every_request_accounted_for(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskfan")
    fn = functools.partial(get, server.port)

    async def main() -> list[str]:
        return await taskfan.amap(fn, paths(REQUESTS), progress="log", **OPTIONS)

    bodies = asyncio.run(main())

    fives = sum(failing(i) for i in range(REQUESTS))
    assert fives == 11
    assert bodies == [f"item {i}" for i in range(REQUESTS)]
    assert server.seen == expected_requests(REQUESTS)
    assert sum(server.seen.values()) == REQUESTS + fives
    # amap returns a plain list: its Report is the one on the "taskfan" logger at the end
    reports = [a for r in caplog.records for a in (r.args or ()) if isinstance(a, Report)]
    assert reports, caplog.text
    report = reports[-1]
    assert (report.total, report.ok, report.failed) == (REQUESTS, REQUESTS, 0)
    assert report.retried == fives


def test_aimap_over_http_unordered_with_its_report(server: Server) -> None:
    n = 300
    fn = functools.partial(get, server.port)

    async def main() -> tuple[list[str], Report]:
        async with taskfan.aimap(fn, paths(n), ordered=False, progress=False, **OPTIONS) as it:
            bodies = [body async for body in it]
        return bodies, it.report

    bodies, report = asyncio.run(main())

    fives = sum(failing(i) for i in range(n))
    assert sorted(bodies) == sorted(f"item {i}" for i in range(n))
    assert server.seen == expected_requests(n)
    assert sum(server.seen.values()) == n + fives
    assert (report.total, report.ok, report.failed, report.retried) == (n, n, 0, fives)
