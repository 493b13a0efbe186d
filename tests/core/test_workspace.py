"""Workspaces: init, discovery, key handling, migrations, SQLite settings."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from datatool.core.catalogue import Base, Patient, Setting
from datatool.core.errors import DatatoolError, UsageError, WorkspaceNotFound
from datatool.core.workspace import (
    KEY_FINGERPRINT,
    find_workspace,
    init_workspace,
    key_fingerprint,
    open_workspace,
)


def test_init_makes_catalogue_store_and_private_key(tmp_path):
    made = init_workspace(tmp_path / "w")
    root, created = made.root, made.created
    assert created
    meta = root / ".datatool"
    assert (meta / "catalogue.sqlite").is_file() and (meta / "store").is_dir()
    assert stat.S_IMODE((meta / "secret.key").stat().st_mode) == 0o600
    key = (meta / "secret.key").read_text()
    created_again = init_workspace(tmp_path / "w").created
    assert not created_again and (meta / "secret.key").read_text() == key


def test_found_from_a_subfolder_and_by_environment(tmp_path, monkeypatch):
    root = init_workspace(tmp_path / "w").root
    sub = root / "a" / "b"
    sub.mkdir(parents=True)
    assert find_workspace(start=sub) == root
    with pytest.raises(WorkspaceNotFound, match="datatool init"):
        find_workspace(start=tmp_path)
    monkeypatch.setenv("DATATOOL_WORKSPACE", str(root))
    assert find_workspace(start=tmp_path) == root


def test_migrations_match_the_models_and_sqlite_is_wal_with_foreign_keys(ws):
    with ws.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], "models changed without a migration: run alembic revision"
        assert conn.execute(text("pragma journal_mode")).scalar() == "wal"
        assert conn.execute(text("pragma foreign_keys")).scalar() == 1
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0014"


def test_opening_an_unmigrated_catalogue_upgrades_it_with_a_message(tmp_path, capsys):
    root = init_workspace(tmp_path / "w").root
    capsys.readouterr()
    (root / ".datatool" / "catalogue.sqlite").unlink()
    open_workspace(root).close()
    assert "upgrading the catalogue schema" in capsys.readouterr().err


def test_key_kept_apart_and_unsafe_key_refused(tmp_path, monkeypatch):
    key_file = tmp_path / "vault" / "datatool.key"
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(key_file))
    root = init_workspace(tmp_path / "w").root
    assert key_file.is_file() and not (root / ".datatool" / "secret.key").exists()
    os.chmod(key_file, 0o644)
    with pytest.raises(DatatoolError, match="chmod 600"):
        open_workspace(root)
    key_file.unlink()
    with pytest.raises(DatatoolError, match="key is missing"):
        open_workspace(root)


def _fingerprint(root):
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    try:
        row = con.execute("select value from settings where name = ?", (KEY_FINGERPRINT,))
        return (row.fetchone() or [None])[0]
    finally:
        con.close()


def test_the_catalogue_records_a_fingerprint_never_the_key(tmp_path):
    root = init_workspace(tmp_path / "w").root
    key = bytes.fromhex((root / ".datatool" / "secret.key").read_text().strip())
    recorded = _fingerprint(root)
    assert recorded == key_fingerprint(key) and key.hex() not in recorded
    assert key.hex().encode() not in (root / ".datatool" / "catalogue.sqlite").read_bytes()


def test_init_never_replaces_the_key_of_a_workspace_with_pseudonyms(tmp_path):
    root = init_workspace(tmp_path / "w").root
    key_file = root / ".datatool" / "secret.key"
    key_file.unlink()
    with pytest.raises(DatatoolError, match=r"init never makes a new key.*backup"):
        init_workspace(root)
    assert not key_file.exists()
    with pytest.raises(DatatoolError, match=r"key is missing.*backup"):
        open_workspace(root)


def test_a_legacy_catalogue_with_pseudonyms_but_no_fingerprint_keeps_its_key(tmp_path):
    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    with ws.session() as s:
        s.add(Patient(pseudonym="P-AAAAAAAAAA"))
        s.delete(s.get(Setting, KEY_FINGERPRINT))
    ws.close()
    (root / ".datatool" / "secret.key").unlink()
    with pytest.raises(DatatoolError, match="init never makes a new key"):
        init_workspace(root)


def test_an_empty_workspace_whose_init_was_cut_short_gets_a_key(tmp_path):
    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    with ws.session() as s:
        s.delete(s.get(Setting, KEY_FINGERPRINT))
    ws.close()
    (root / ".datatool" / "secret.key").unlink()
    init_workspace(root)  # nothing was pseudonymised with the lost key: a new one is safe
    assert (root / ".datatool" / "secret.key").is_file() and _fingerprint(root)


def test_another_valid_key_is_refused(tmp_path, monkeypatch):
    root = init_workspace(tmp_path / "w").root
    other = init_workspace(tmp_path / "other").root / ".datatool" / "secret.key"
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(other))
    with pytest.raises(DatatoolError, match="not the pseudonym key of this workspace") as exc:
        open_workspace(root)
    message = str(exc.value)
    assert "\n" not in message and "DATATOOL_KEY_FILE names another key" in message
    # that file may be the other workspace's only key: never told to restore over it
    assert "restore" not in message and "backup to" not in message
    with pytest.raises(DatatoolError, match="not the pseudonym key"):
        init_workspace(root)
    # the same key copied into the workspace's own key file: restore the right one there
    monkeypatch.delenv("DATATOOL_KEY_FILE")
    own = root / ".datatool" / "secret.key"
    own.write_bytes(other.read_bytes())
    with pytest.raises(DatatoolError, match="not the pseudonym key") as exc:
        open_workspace(root)
    assert f"restore the workspace's key from your backup to {own}" in str(exc.value)


def test_legacy_catalogue_gets_its_fingerprint_on_first_open_said_once(tmp_path, capsys):
    root = init_workspace(tmp_path / "w").root
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    con.execute("delete from settings")
    con.commit()
    con.close()
    capsys.readouterr()
    open_workspace(root).close()
    first = capsys.readouterr().err
    assert "recorded the fingerprint of the pseudonym key" in first
    open_workspace(root).close()
    assert capsys.readouterr().err == ""
    assert _fingerprint(root)


@pytest.mark.parametrize("kind", ["not hex", "folder", "binary", "empty"])
def test_a_key_file_that_is_no_key_is_one_line(tmp_path, monkeypatch, kind):
    root = init_workspace(tmp_path / "w").root
    bad = tmp_path / "bad.key"
    if kind == "folder":
        bad.mkdir(mode=0o700)
    else:
        bad.write_bytes(
            {"not hex": b"secret words\n", "binary": b"\xff\xfe\x00", "empty": b""}[kind]
        )
        os.chmod(bad, 0o600)
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(bad))
    with pytest.raises(DatatoolError) as exc:
        open_workspace(root)
    message = str(exc.value)
    assert "\n" not in message and "secret words" not in message and str(bad) in message


def test_init_onto_a_file_is_a_usage_error(tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        init_workspace(target)


def test_under_umask_000_the_workspace_is_private(tmp_path, pydicom_data, cli_env):
    """init and ingest under umask 000 once left .datatool, the store and workspace.json
    world-writable. The workspace's own folders are 0750 and its files 0640 (the key 0600)
    whatever the umask; nothing under .datatool is open to others."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(pydicom_data / "OBXXXX1A.dcm", src / "a.dcm")
    root = tmp_path / "ws"
    datatool = f"{shlex.quote(sys.executable)} -m datatool"
    script = (
        f"umask 000 && {datatool} init {shlex.quote(str(root))} && "
        f"{datatool} ingest {shlex.quote(str(src))} -j 1 --allow-burned-in "
        f"--workspace {shlex.quote(str(root))}"
    )
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=cli_env)
    assert res.returncode == 0, res.stderr
    meta = root / ".datatool"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root) == 0o750 and mode(meta) == 0o750 and mode(meta / "store") == 0o750
    assert mode(meta / "workspace.json") == 0o640
    assert mode(meta / "catalogue.sqlite") == 0o640
    assert mode(meta / "secret.key") == 0o600
    pngs = list((meta / "store").rglob("*.png"))
    assert pngs and all(mode(p) == 0o640 and mode(p.parent) == 0o750 for p in pngs)
    open_to_others = [str(p) for p in [meta, *meta.rglob("*")] if mode(p) & 0o007]
    assert not open_to_others


@pytest.mark.parametrize("name", ["a?b", "50%", "x#y", "p%3Fq"])
def test_a_workspace_path_with_url_characters_works(tmp_path, name):
    """'?' once ended the SQLite URL's path ('unable to open database file', a traceback)."""
    root = tmp_path / name / "ws"
    init_workspace(root)
    assert (root / ".datatool" / "catalogue.sqlite").stat().st_size > 0
    assert not (tmp_path / name / ".datatool").exists()
    ws = open_workspace(root)
    with ws.session() as s:
        assert s.query(Patient).count() == 0
    ws.close()
