"""Workspaces: init, discovery, key handling, migrations, SQLite settings."""

from __future__ import annotations

import os
import stat

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from datatool.core.catalogue import Base
from datatool.core.errors import DatatoolError, WorkspaceNotFound
from datatool.core.workspace import find_workspace, init_workspace, open_workspace


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
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0007"


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
