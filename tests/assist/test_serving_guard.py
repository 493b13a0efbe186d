"""datatool.assist.serving_guard: the header timeout, the connection cap and throttled logs
of the ML backend's server, on real loopback sockets (a tiny ASGI app under the guarded
uvicorn in a thread); and ``datatool serve`` itself, in a subprocess with 128 open files,
against more idle sockets than its cap (tests/backend_server.serve_subprocess)."""

from __future__ import annotations

import errno
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from datatool.assist import serving_guard
from datatool.assist.serving_guard import Guard, Throttle, connection_cap, make_server
from datatool.core.errors import UsageError
from tests.backend_server import free_port, serve_subprocess, server_thread


async def _hello(scope, receive, send):
    """The smallest ASGI app: 200 'ok' to every request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reads until EOF)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def test_throttle_logs_a_kind_once_per_interval_with_the_count_left_out(caplog):
    now = [0.0]
    throttle = Throttle(interval=60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "datatool.serve")
    logged = []
    for step in range(1000):
        now[0] = step * 0.1  # 1000 events in 100 s
        logged.append(throttle.note("emfile", "accept failed"))
    assert sum(logged) == 2 and logged[0] and logged[600]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["accept failed", "accept failed (599 more like it in the last 60 s)"]
    assert throttle.note("other", "another kind")  # another kind has its own interval
    assert caplog.records[-1].getMessage() == "another kind"


def test_accept_errors_reach_the_log_once_per_interval_without_a_traceback(caplog):
    guard = Guard(throttle=Throttle(interval=60))
    caplog.set_level(logging.DEBUG)
    exc = OSError(errno.EMFILE, "Too many open files")
    for _ in range(10_000):  # what a flood of failing accepts hands the loop's handler
        guard.exception_handler(
            None, {"message": "socket.accept() out of system resource", "exception": exc}
        )
    records = [r for r in caplog.records if r.name == "datatool.serve"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "Too many open files" in records[0].getMessage()
    assert len(caplog.text) < 500


def test_connections_without_a_request_are_closed_after_the_header_timeout():
    guard = Guard(max_connections=50, header_timeout=1.0)
    server = make_server(_hello, "127.0.0.1", free_port(), guard, keep_alive=1, log_level="warning")
    with server_thread(server) as url:
        silent = _connect(url)
        half = _connect(url)
        half.sendall(b"GET /hea")  # half a request line, then nothing
        slow = _connect(url)
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        kept = _connect(url)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        for sock in (silent, half, slow, kept):
            assert _closed_by_server(sock, within=5), sock
            sock.close()
        assert time.monotonic() - started < 5
        assert guard.closed["timeout"] >= 3
        # a connection that keeps sending requests is not cut by the header timeout
        with httpx.Client(base_url=url) as client:
            for _ in range(6):
                assert client.get("/").status_code == 200
                time.sleep(0.3)


def test_over_the_cap_the_longest_idle_connections_are_closed_and_requests_still_answer():
    guard = Guard(max_connections=10, header_timeout=60)
    server = make_server(_hello, "127.0.0.1", free_port(), guard, log_level="warning")
    with server_thread(server) as url:
        idle = [_connect(url) for _ in range(40)]
        for k, sock in enumerate(idle):
            if k % 2:
                sock.sendall(b"POST /predict HTT")
        time.sleep(0.5)
        for _ in range(5):
            started = time.monotonic()
            answer = httpx.get(url + "/", timeout=5)
            assert answer.status_code == 200 and time.monotonic() - started < 1
        # the oldest were closed; the server holds at most its cap
        assert all(_closed_by_server(sock, within=2) for sock in idle[:25])
        assert guard.closed["cap"] >= 30
        for sock in idle:
            sock.close()


def test_the_cap_fits_under_the_open_file_limit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (128, 4096))
    monkeypatch.setattr(serving_guard, "open_descriptors", lambda: 20)
    assert connection_cap(1000) == 128 - 20 - 32 - 32 and connection_cap(10) == 10
    assert connection_cap(1) == 1  # a cap asked for below the minimum is the user's choice
    monkeypatch.setattr(resource, "getrlimit", lambda _: (64, 4096))
    with pytest.raises(UsageError, match="ulimit -n"):
        connection_cap(64)


def test_serve_with_128_open_files_answers_health_under_a_flood_of_idle_sockets(trained, tmp_path):
    ws, run = trained
    log_path = tmp_path / "serve.log"
    with serve_subprocess(ws.root, run, log_path, nofile=128) as (url, proc):
        banner = log_path.read_text()
        assert "limits:" in banner and "headers within 10 s" in banner
        sockets = []
        try:
            for k in range(200):  # more than the cap, more than the open-file limit
                sock = _connect(url)
                if k % 2:
                    sock.sendall(b"GET /heal")
                sockets.append(sock)
            worst = 0.0
            deadline = time.monotonic() + 4
            with httpx.Client(base_url=url, timeout=5) as client:
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    assert (
                        client.get("/health", headers={"Connection": "close"}).json()["status"]
                        == "UP"
                    )
                    worst = max(worst, time.monotonic() - started)
                    time.sleep(0.1)
            assert worst < 1.0, worst
            assert proc.poll() is None
        finally:
            for sock in sockets:
                sock.close()
    size = log_path.stat().st_size
    assert size < 64 * 1024, size
    assert "Traceback" not in log_path.read_text()


SERVER = """
import asyncio, resource, sys
from datatool.assist.serving_guard import Guard, make_server, serve
from tests.assist.test_serving_guard import _hello

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
guard = Guard(max_connections=1000, header_timeout=60)  # a cap above the limit: accepts fail
asyncio.run(serve(make_server(_hello, "127.0.0.1", int(sys.argv[1]), guard), guard))
"""


def test_failed_accepts_are_logged_once_per_interval_by_a_running_server(tmp_path):
    """With its cap above the open-file limit, the server's accepts fail with EMFILE for as
    long as the idle sockets stay: one log line, no traceback."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
    sockets = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        for _ in range(120):  # more than the 64 files the server may open
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=3))
            except TimeoutError:  # the listen queue is full: the server no longer accepts
                break
        assert len(sockets) > 64
        time.sleep(4)  # asyncio retries a failed accept every second
        assert proc.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    text = log_path.read_text()
    assert text.count("out of system resource") == 1, text
    assert "Too many open files" in text and "Traceback" not in text
    assert len(text) < 4096, len(text)
