"""The credentials of ``datatool serve``: HTTP Basic auth (Label Studio's ``BASIC_AUTH`` for
ML backends) on every route but ``/health``. They come from ``DATATOOL_SERVE_USER`` /
``DATATOOL_SERVE_PASSWORD``, or a random password is made for the run and written to a file
only its owner can read, kept across restarts (a second ``serve`` of the run reuses it).
Beyond loopback, a password from the environment needs ``MIN_PASSWORD`` characters."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from datatool.core.atomic import write_text_atomic
from datatool.core.errors import UsageError
from datatool.core.workspace import Workspace

USER_ENV = "DATATOOL_SERVE_USER"
PASSWORD_ENV = "DATATOOL_SERVE_PASSWORD"
DEFAULT_USER = "datatool"
DEFAULT_HOST = "127.0.0.1"
MIN_PASSWORD = 12  # characters of a password from the environment
# the addresses a generated password may listen on: the loopback addresses themselves, not a
# name such as localhost that the system resolves (and a hosts file may point elsewhere)
LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Credentials:
    """The HTTP Basic credentials every request but ``/health`` must carry."""

    user: str
    password: str = field(repr=False)
    source: str  # "environment" or the file a generated password was written to

    def accepts(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        ok_user = secrets.compare_digest(user.encode(), self.user.encode())
        ok_password = secrets.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and ok_user and ok_password

    def header(self) -> str:
        """The ``Authorization`` header value (for clients and tests)."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return f"Basic {token}"


def credentials_from_env(host: str = DEFAULT_HOST) -> Credentials | None:
    """The credentials set in the environment, or None when no password is set. Beyond
    loopback the password must have at least ``MIN_PASSWORD`` characters, not all blank."""
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        return None
    if not password.strip():
        raise UsageError(f"{PASSWORD_ENV} is blank: set a real password, or unset it")
    if host not in LOOPBACK and len(password) < MIN_PASSWORD:
        raise UsageError(
            f"{PASSWORD_ENV} has {len(password)} characters: a backend listening beyond this "
            f"machine needs at least {MIN_PASSWORD}"
        )
    user = os.environ.get(USER_ENV, "").strip() or DEFAULT_USER
    if ":" in user:
        raise UsageError(f"{USER_ENV} must not contain ':' (HTTP Basic auth)")
    return Credentials(user, password, "environment")


def credentials_file(ws: Workspace, run_id: int) -> Path:
    return ws.meta_dir / "serve" / f"run-{int(run_id)}.credentials.json"


def generate_credentials(ws: Workspace, run_id: int, url: str) -> Credentials:
    """The run's generated password: the one in its credentials file when there is one (so a
    second or failed ``serve`` never orphans a running server's password), else a new random
    one written (mode 0600, in a folder of mode 0700) to that file: the one place to read it."""
    path = credentials_file(ws, run_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # whatever the umask, and for a folder made before
    if path.exists():
        try:
            kept = read_credentials_file(path)
        except UsageError:
            kept = None  # unreadable: replaced below
        if kept is not None and kept.password.strip() and ":" not in kept.user:
            os.chmod(path, 0o600)
            return kept
    password = secrets.token_urlsafe(24)
    write_text_atomic(
        path,
        json.dumps({"user": DEFAULT_USER, "password": password, "url": url}, indent=2) + "\n",
        mode=0o600,
    )
    return Credentials(DEFAULT_USER, password, str(path))


def read_credentials_file(path: Path) -> Credentials:
    """Credentials from a file ``datatool serve`` wrote."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Credentials(str(data["user"]), str(data["password"]), str(path))
    except FileNotFoundError:
        raise UsageError(f"no credentials file {path}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not a credentials file written by 'datatool serve'") from None


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_USER",
    "LOOPBACK",
    "MIN_PASSWORD",
    "PASSWORD_ENV",
    "USER_ENV",
    "Credentials",
    "credentials_file",
    "credentials_from_env",
    "generate_credentials",
    "read_credentials_file",
]
