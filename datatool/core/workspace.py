"""Workspaces: find, create and open one (catalogue, store, secret key).

A workspace is a folder holding ``.datatool/``, like git's ``.git/``::

    .datatool/
      catalogue.sqlite   the catalogue (unless DATATOOL_DB_URL points elsewhere)
      store/             content-addressed derived images and masks
      secret.key         the pseudonym key (mode 0600); DATATOOL_KEY_FILE may keep it apart
      workspace.json     settings (protocol, creation time)

Commands find the workspace from the current folder upwards, or take ``--workspace`` /
``DATATOOL_WORKSPACE``. Opening one applies pending Alembic migrations.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.catalogue import make_engine
from datatool.core.errors import DatatoolError, WorkspaceNotFound
from datatool.core.protocol import DEFAULT_PROTOCOL
from datatool.core.store import Store

MARKER = ".datatool"
KEY_BYTES = 32


def migrations_dir() -> Path:
    from datatool import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def find_workspace(start: Path | None = None, explicit: Path | str | None = None) -> Path:
    """The workspace root: ``explicit``, else ``$DATATOOL_WORKSPACE``, else the first folder
    from ``start`` (the current folder) upwards that holds ``.datatool/``."""
    given = explicit or os.environ.get("DATATOOL_WORKSPACE")
    if given:
        root = Path(given).expanduser().resolve()
        if not (root / MARKER).is_dir():
            raise WorkspaceNotFound(
                f"{root} is not a datatool workspace: run 'datatool init {given}' first"
            )
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / MARKER).is_dir():
            return folder
    raise WorkspaceNotFound(
        f"no datatool workspace in {here} or above: run 'datatool init' here, "
        "or pass --workspace DIR"
    )


@dataclass
class Workspace:
    root: Path
    engine: Engine = field(repr=False)
    key: bytes = field(repr=False)
    settings: dict

    @property
    def meta_dir(self) -> Path:
        return self.root / MARKER

    @property
    def store(self) -> Store:
        return self._store

    @property
    def protocol_name(self) -> str:
        return self.settings.get("protocol", DEFAULT_PROTOCOL)

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._store = Store(self.meta_dir / "store")  # one per workspace: it caches folders

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def db_url_for(root: Path) -> str:
    return os.environ.get("DATATOOL_DB_URL") or f"sqlite:///{root / MARKER / 'catalogue.sqlite'}"


def key_path_for(root: Path) -> Path:
    env = os.environ.get("DATATOOL_KEY_FILE")
    return Path(env).expanduser() if env else root / MARKER / "secret.key"


def read_key(path: Path) -> bytes:
    if not path.exists():
        raise DatatoolError(
            f"{path}: the pseudonym key is missing. Restore it from your backup (without it the "
            "same patients get new pseudonyms), or set DATATOOL_KEY_FILE to where it is kept"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise DatatoolError(
            f"{path}: the pseudonym key is readable by others (mode {mode:o}); "
            f"run 'chmod 600 {path}'"
        )
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise DatatoolError(f"{path}: the pseudonym key is too short")
    return key


@dataclass
class InitResult:
    root: Path
    created: bool  # False: it was a workspace already (nothing changed but migrations)
    protocol: str
    key_file: Path


def init_workspace(root: Path, protocol: str = DEFAULT_PROTOCOL) -> InitResult:
    """Create a workspace in ``root`` (made if missing). Running it on an existing workspace
    changes nothing but applies pending migrations."""
    root = Path(root).expanduser().resolve()
    meta = root / MARKER
    created = not meta.exists()
    (meta / "store").mkdir(parents=True, exist_ok=True)
    key_path = key_path_for(root)
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(key_path, secrets.token_hex(KEY_BYTES).encode() + b"\n", mode=0o600)
    settings_path = meta / "workspace.json"
    if not settings_path.exists():
        write_text_atomic(settings_path, json.dumps({"protocol": protocol, "format": 1}, indent=2))
    ws = open_workspace(root, announce=False)
    ws.close()
    return InitResult(root, created, ws.protocol_name, key_path)


def migrate(engine: Engine, url: str, announce: bool = True) -> tuple[str | None, str | None]:
    """Bring the catalogue schema to the newest migration; returns (from, to) revisions."""
    cfg = alembic_config(url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        if announce:
            print(
                f"datatool: upgrading the catalogue schema {current or '(new)'} -> {head}",
                file=sys.stderr,
            )
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            alembic_command.upgrade(cfg, "head")
    return current, head


def open_workspace(
    root: Path | str | None = None, start: Path | None = None, announce: bool = True
) -> Workspace:
    """Open a workspace, applying pending migrations (announced on stderr)."""
    root = find_workspace(start=start, explicit=root)
    url = db_url_for(root)
    engine = make_engine(url)
    migrate(engine, url, announce=announce)
    settings_path = root / MARKER / "workspace.json"
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    return Workspace(root=root, engine=engine, key=read_key(key_path_for(root)), settings=settings)
