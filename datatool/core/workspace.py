"""Workspaces: find, create and open one (catalogue, store, secret key).

A workspace is a folder holding ``.datatool/``, like git's ``.git/``::

    .datatool/
      catalogue.sqlite   the catalogue (unless DATATOOL_DB_URL points elsewhere)
      store/             content-addressed derived images and masks
      secret.key         the pseudonym key (mode 0600); DATATOOL_KEY_FILE may keep it apart
      workspace.json     settings (protocol, creation time)

Commands find the workspace from the current folder upwards, or take ``--workspace`` /
``DATATOOL_WORKSPACE``. Opening one applies pending Alembic migrations.

The catalogue records a fingerprint of the pseudonym key (a keyed hash of a fixed text, from
which the key cannot be found): a workspace opens only with its own key, since another key
would give the same patients new pseudonyms, and ``init`` never makes a new key for a
workspace that has pseudonyms already. Catalogues made before the fingerprint existed get it
on their first open (said once on stderr).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from datatool.core.atomic import (
    PRIVATE_FILE,
    make_private_dirs,
    write_bytes_atomic,
    write_text_atomic,
)
from datatool.core.catalogue import Patient, Setting, make_engine
from datatool.core.errors import DatatoolError, UsageError, WorkspaceNotFound
from datatool.core.protocol import DEFAULT_PROTOCOL
from datatool.core.store import Store

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MARKER = ".datatool"
# The newest migration (migrations/versions/): a catalogue at this revision is opened without
# loading Alembic (about a quarter of a second of every command's start); any other revision,
# or none, is upgraded by Alembic. tests/core/test_migrations.py checks it is Alembic's head.
SCHEMA_HEAD = "0014"
KEY_BYTES = 32
KEY_FINGERPRINT = "key_fingerprint"  # the settings row holding it
_FINGERPRINT_TEXT = b"datatool pseudonym key fingerprint v1"


def migrations_dir() -> Path:
    from datatool import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser syntax
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
    """The catalogue's URL. In a SQLite file's path '?' would start the URL's query and '%'
    an escape: both are escaped (SQLAlchemy unescapes the path)."""
    env = os.environ.get("DATATOOL_DB_URL")
    if env:
        return env
    path = str(root / MARKER / "catalogue.sqlite").replace("%", "%25").replace("?", "%3F")
    return f"sqlite:///{path}"


def key_path_for(root: Path) -> Path:
    env = os.environ.get("DATATOOL_KEY_FILE")
    return Path(env).expanduser() if env else root / MARKER / "secret.key"


def _restore_hint(path: Path) -> str:
    return (
        f"restore the workspace's key from your backup to {path}, or set DATATOOL_KEY_FILE "
        "to where it is kept"
    )


def _wrong_key_hint(path: Path) -> str:
    """What to do about a valid key of another workspace. Named by DATATOOL_KEY_FILE, it may
    be that workspace's only copy: the hint never says to overwrite it."""
    if os.environ.get("DATATOOL_KEY_FILE"):
        return (
            "DATATOOL_KEY_FILE names another key (leave that file as it is): point it at "
            "this workspace's own key, or unset it if the workspace keeps its key in "
            f"{MARKER}/secret.key"
        )
    return _restore_hint(path)


def read_key(path: Path) -> bytes:
    """The pseudonym key in ``path`` (hex); every problem with it is one DatatoolError line
    that never shows the file's content."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DatatoolError(
            f"{path}: the pseudonym key is missing (without it the same patients get new "
            f"pseudonyms): {_restore_hint(path)}"
        ) from None
    except OSError as exc:
        raise DatatoolError(
            f"{path}: cannot read the pseudonym key ({exc.strerror or exc})"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise DatatoolError(
            f"{path}: the pseudonym key file is {what}; point DATATOOL_KEY_FILE at the key "
            "file itself"
        )
    mode = info.st_mode & 0o777
    if mode & 0o077:
        raise DatatoolError(
            f"{path}: the pseudonym key is readable by others (mode {mode:o}); "
            f"run 'chmod 600 {path}'"
        )
    try:
        key = bytes.fromhex(path.read_bytes().decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DatatoolError(
            f"{path}: not a datatool pseudonym key (expected {2 * KEY_BYTES} hexadecimal "
            f"digits); {_restore_hint(path)}"
        ) from None
    except OSError as exc:
        raise DatatoolError(
            f"{path}: cannot read the pseudonym key ({exc.strerror or exc})"
        ) from None
    if len(key) < 16:
        raise DatatoolError(f"{path}: the pseudonym key is too short; {_restore_hint(path)}")
    return key


def key_fingerprint(key: bytes) -> str:
    """A keyed hash of a fixed text: tells keys apart without revealing them."""
    return hmac.new(key, _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()


def recorded_fingerprint(engine: Engine) -> str | None:
    with Session(engine) as s:
        row = s.get(Setting, KEY_FINGERPRINT)
        return row.value if row is not None else None


def check_key(engine: Engine, key: bytes, key_path: Path, announce: bool = True) -> None:
    """Refuse a key whose fingerprint is not the one the catalogue recorded; record it in a
    catalogue that has none yet (made before fingerprints existed), saying so once."""
    fingerprint = key_fingerprint(key)
    for attempt in range(2):
        try:
            with Session(engine) as s, s.begin():
                row = s.get(Setting, KEY_FINGERPRINT)
                if row is None:
                    s.add(Setting(name=KEY_FINGERPRINT, value=fingerprint))
                    recorded = True
                else:
                    recorded = False
                    if not hmac.compare_digest(row.value, fingerprint):
                        raise DatatoolError(
                            f"{key_path}: this is not the pseudonym key of this workspace "
                            "(its fingerprint differs from the one the catalogue recorded; "
                            "with another key the same patients would get new pseudonyms): "
                            + _wrong_key_hint(key_path)
                        )
            break
        except IntegrityError:  # another process recorded it first (PostgreSQL)
            if attempt:
                raise
    if recorded and announce:
        print(
            f"datatool: recorded the fingerprint of the pseudonym key {key_path} in the "
            "catalogue; from now on the workspace opens only with this key",
            file=sys.stderr,
        )


@dataclass
class InitResult:
    root: Path
    created: bool  # False: it was a workspace already (nothing changed but migrations)
    protocol: str
    key_file: Path


def init_workspace(root: Path, protocol: str = DEFAULT_PROTOCOL) -> InitResult:
    """Create a workspace in ``root`` (made if missing). Running it on an existing workspace
    changes nothing but applies pending migrations; it never replaces the key of a workspace
    whose catalogue has recorded one or holds pseudonyms."""
    root = Path(root).expanduser().resolve()
    meta = root / MARKER
    for folder in (root, meta):
        if folder.exists() and not folder.is_dir():
            raise UsageError(
                f"{folder} is a file, not a folder: choose another place for the workspace"
            )
    created = not meta.exists()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)  # the user's folders: their umask
        make_private_dirs(meta / "store")  # the workspace's own: PRIVATE_DIR, whatever the umask
        _create_private_catalogue(root)
    except OSError as exc:
        raise DatatoolError(
            f"{meta}: cannot make the workspace here ({exc.strerror or exc}); choose a "
            "writable folder"
        ) from None
    key_path = key_path_for(root)
    if not key_path.exists() and not key_path.is_symlink():
        _refuse_new_key_for_used_catalogue(root, key_path)
        try:
            make_private_dirs(key_path.parent, 0o700)
            write_bytes_atomic(key_path, secrets.token_hex(KEY_BYTES).encode() + b"\n", mode=0o600)
        except OSError as exc:
            raise DatatoolError(
                f"{key_path}: cannot write the pseudonym key ({exc.strerror or exc})"
            ) from None
    settings_path = meta / "workspace.json"
    if not settings_path.exists():
        write_text_atomic(
            settings_path,
            json.dumps({"protocol": protocol, "format": 1}, indent=2),
            mode=PRIVATE_FILE,
        )
    ws = open_workspace(root, announce=False)
    ws.close()
    return InitResult(root, created, ws.protocol_name, key_path)


def _create_private_catalogue(root: Path) -> None:
    """Make the SQLite catalogue file PRIVATE_FILE before SQLite creates it with the umask's
    mode (its -wal and -shm files take the mode of the catalogue file)."""
    if os.environ.get("DATATOOL_DB_URL"):
        return
    path = root / MARKER / "catalogue.sqlite"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.fchmod(fd, PRIVATE_FILE)
    os.close(fd)


def _refuse_new_key_for_used_catalogue(root: Path, key_path: Path) -> None:
    """A catalogue that recorded a key fingerprint, or holds pseudonyms, had a key: a new one
    would give its patients second pseudonyms. Its own key must be restored instead."""
    url = db_url_for(root)
    engine = make_engine(url)
    try:
        migrate(engine, url, announce=False)
        with Session(engine) as s:
            had_key = (
                s.get(Setting, KEY_FINGERPRINT) is not None
                or (s.scalar(select(func.count(Patient.id))) or 0) > 0
            )
    finally:
        engine.dispose()
    if had_key:
        raise DatatoolError(
            f"{key_path}: the pseudonym key of this existing workspace is missing, and init "
            "never makes a new key for a workspace that had one (its patients would get "
            f"second pseudonyms): {_restore_hint(key_path)}"
        )


def schema_revision(engine: Engine) -> str | None:
    """The catalogue's migration revision (Alembic's ``alembic_version`` row), None when the
    catalogue has none (a new one)."""
    with engine.connect() as conn:
        try:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        except (OperationalError, ProgrammingError):  # no such table: nothing migrated yet
            return None
    return rows[0][0] if len(rows) == 1 else None


def migrate(engine: Engine, url: str, announce: bool = True) -> tuple[str | None, str | None]:
    """Bring the catalogue schema to the newest migration; returns (from, to) revisions."""
    current = schema_revision(engine)
    if current == SCHEMA_HEAD:
        return current, SCHEMA_HEAD
    from alembic import command as alembic_command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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
        with engine.connect() as conn:
            # SQLite alters a table by copying it and dropping the old one, which foreign
            # keys from other tables' rows would refuse: they are switched off for the
            # migration (outside its transaction, where SQLite allows it), then checked
            raw = conn.connection.dbapi_connection if engine.dialect.name == "sqlite" else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    alembic_command.upgrade(cfg, "head")
                    if raw is not None:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise DatatoolError(
                                f"the catalogue migration to {head} left {len(broken)} broken "
                                "reference(s); nothing was changed (restore from a backup if "
                                "this repeats)"
                            )
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")
    return current, head


def open_workspace(
    root: Path | str | None = None, start: Path | None = None, announce: bool = True
) -> Workspace:
    """Open a workspace, applying pending migrations (announced on stderr)."""
    root = find_workspace(start=start, explicit=root)
    url = db_url_for(root)
    key_path = key_path_for(root)
    key = read_key(key_path)
    engine = make_engine(url)
    try:
        migrate(engine, url, announce=announce)
        check_key(engine, key, key_path, announce=announce)
    except BaseException:
        engine.dispose()
        raise
    settings_path = root / MARKER / "workspace.json"
    try:
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    except (OSError, ValueError):
        engine.dispose()
        raise DatatoolError(
            f"{settings_path}: not readable workspace settings (JSON); restore it from a "
            'backup or write {"protocol": "anterior_sciatic", "format": 1} into it'
        ) from None
    return Workspace(root=root, engine=engine, key=key, settings=settings)
