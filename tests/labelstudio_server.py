"""A real Label Studio server for the tests, one per test session.

The server runs from its own virtual environment (``.lsvenv``, built by ``make test``; or
``$DATATOOL_LS_VENV``): it pins its own label-studio-sdk, which must not meet the project's.
It listens on 127.0.0.1 only, on a free port, with a fresh data folder, offline settings,
local files serving from a temp document root, and a random legacy API token.

Binding: ``--host`` only sets the hostname Label Studio writes into URLs; the address it
binds is ``--internal-host``, which defaults to 0.0.0.0 (every interface). The fixture passes
``--internal-host 127.0.0.1`` and checks the listening sockets in /proc/net/tcp{,6}.
Label Studio also silently moves to the next port when the asked one is busy; the fixture
detects that in the log and retries on another port.

The ML backend tests make the server call a backend on 127.0.0.1: Label Studio refuses
loopback addresses for ML backends unless ``ML_BLOCK_LOCAL_IP=false``, and for webhooks
unless ``SSRF_PROTECTION_ENABLED=false``; both are set (this server is reachable from this
machine only).

The fixture is imported once, in tests/conftest.py: a test module that imported it too would
get a server of its own.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from datatool.demo.labelstudio import server_healthy, stop_process_group
from tests.ci import unavailable

START_TIMEOUT_S = 240
OFFLINE_ENV = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
}
LOCAL_BACKEND_ENV = {"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}


@dataclass
class LabelStudioServer:
    url: str
    token: str = field(repr=False)
    local_root: Path
    data_dir: Path
    log: Path
    username: str
    password: str = field(repr=False)


def ls_venv() -> Path:
    given = os.environ.get("DATATOOL_LS_VENV")
    return Path(given) if given else Path(__file__).resolve().parents[1] / ".lsvenv"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex as in /proc/net/tcp*) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            address, hex_port = cols[1].rsplit(":", 1)
            if cols[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


def _start(exe: Path, base: Path, attempt: int) -> tuple[subprocess.Popen, LabelStudioServer]:
    port = _free_port()
    data_dir = base / f"data{attempt}"
    local_root = base / "files"
    local_root.mkdir(exist_ok=True)
    log = base / f"server{attempt}.log"
    token = secrets.token_hex(20)
    password = secrets.token_urlsafe(12)
    username = "datatool-tests@example.org"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(OFFLINE_ENV)
    env.update(LOCAL_BACKEND_ENV)
    env.update(
        {
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(local_root),
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "PATH": f"{exe.parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    cmd = [
        str(exe),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        username,
        f"--password={password}",  # one word: a password may start with "-" (token_urlsafe)
        "--user-token",
        token,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=base,
            start_new_session=True,
        )
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}",
        token=token,
        local_root=local_root,
        data_dir=data_dir,
        log=log,
        username=username,
        password=password,
    )
    return proc, server


# A server started as soon as the session knows it will need one (see ``start_early``), so
# that its start (about 40 s of Django set-up) overlaps the tests that run before the first
# one that needs it; the fixture takes it over as its first attempt.
_early: dict[str, tuple[Path, subprocess.Popen, LabelStudioServer]] = {}


def start_early(session: pytest.Session) -> None:
    """Start the server in the background when a selected test will ask for it."""
    if not any("labelstudio_server" in item.fixturenames for item in session.items):
        return
    exe = ls_venv() / "bin" / "label-studio"
    if not exe.exists():
        return  # the fixture says why, where a test needs it
    base = session.config._tmp_path_factory.mktemp("labelstudio")  # tmp_path_factory's own
    proc, server = _start(exe, base, 0)
    _early["server"] = (base, proc, server)


def stop_early() -> None:
    """Stop a server started early that no test took over (say, after an early failure)."""
    started = _early.pop("server", None)
    if started is not None:
        stop_process_group(started[1])


def _installed() -> Path:
    exe = ls_venv() / "bin" / "label-studio"
    if not exe.exists():
        message = (
            f"the Label Studio server is not installed ({exe} is missing): run "
            "'make test', which builds .lsvenv"
        )
        unavailable(message)
    return exe


@contextmanager
def running_server(
    exe: Path, base: Path, early: tuple[subprocess.Popen, LabelStudioServer] | None = None
) -> Iterator[LabelStudioServer]:
    """A server started in ``base`` (or ``early``'s, taken over), healthy and listening on
    loopback only; stopped on leaving."""
    proc = server = None
    try:
        for attempt in range(3):
            if early and attempt == 0:
                proc, server = early
            else:
                proc, server = _start(exe, base, attempt)
            deadline = time.monotonic() + START_TIMEOUT_S
            moved = False
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if "is in use" in server.log.read_text(errors="replace"):
                    moved = True  # it went to another port than ours
                    break
                if server_healthy(server.url):
                    break
                time.sleep(1)
            if moved:
                stop_process_group(proc)
                continue
            if proc.poll() is not None or not server_healthy(server.url):
                tail = server.log.read_text(errors="replace")[-3000:]
                pytest.fail(
                    f"Label Studio did not start within {START_TIMEOUT_S} s "
                    f"(exit code {proc.poll()}); log:\n{tail}"
                )
            break
        else:
            pytest.fail("Label Studio kept finding its port in use")
        port = int(server.url.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
        if addresses and not addresses <= LOOPBACK:
            pytest.fail(f"Label Studio listens beyond loopback on port {port}: {addresses}")
        yield server
    finally:
        if proc is not None:
            stop_process_group(proc)


@pytest.fixture(scope="session")
def labelstudio_server(tmp_path_factory):
    """A running Label Studio server: ``.url``, ``.token``, ``.local_root``."""
    exe = _installed()
    early = _early.pop("server", None)
    base = early[0] if early else tmp_path_factory.mktemp("labelstudio")
    with running_server(exe, base, (early[1], early[2]) if early else None) as server:
        yield server


@pytest.fixture(scope="module")
def second_labelstudio_server(tmp_path_factory):
    """Another server, of the importing test module's own (e.g. a second rater's): its own
    data folder, port, token and local files root."""
    exe = _installed()
    with running_server(exe, tmp_path_factory.mktemp("labelstudio-b")) as server:
        yield server
