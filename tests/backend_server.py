"""The ML backend's ASGI app under a real uvicorn, on a free loopback port, in a thread (for
tests that talk HTTP to it, or that let Label Studio do so); or ``datatool serve`` itself in a
subprocess (for tests of its limits: open files, memory, its log)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PASSWORD = "a-test-password-for-serve"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_thread(server) -> Iterator[str]:
    """Run a ``uvicorn.Server`` in a thread; yields its base URL; stops it when the block
    ends."""
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://{server.config.host}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def uvicorn_thread(app) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1; yields its base URL; stops it when the block ends."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    with server_thread(uvicorn.Server(config)) as url:
        yield url


@contextmanager
def serve_subprocess(
    root: Path, run: int, log_path: Path, *, nofile: int | None = None, args: tuple = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``datatool serve RUN`` on a free loopback port, its output in ``log_path``, with at most
    ``nofile`` open files; the password is ``PASSWORD`` (user ``datatool``). Yields (base URL,
    process) once ``/health`` answers; stops it with SIGINT when the block ends."""
    import httpx

    port = free_port()
    env = dict(os.environ)
    env.pop("DATATOOL_WORKSPACE", None)
    env.update(DATATOOL_SERVE_PASSWORD=PASSWORD, DATATOOL_SERVE_USER="datatool", COLUMNS="200")

    def limit_files() -> None:
        # Ctrl-C's default action: a test run started in the background by a shell inherits
        # SIGINT ignored, and serve would then not stop on the SIGINT below
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    cmd = [sys.executable, "-m", "datatool", "serve", str(run), "--port", str(port)]
    cmd += ["--device", "cpu", "--workspace", str(root), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=limit_files
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {log_path.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer /health in 180 s")
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
