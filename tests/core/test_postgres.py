"""The catalogue on a real PostgreSQL server (DATATOOL_DB_URL): migrations, ingest, re-run,
conflict. The server is started by the test in a temporary folder and stopped afterwards;
the test is skipped where PostgreSQL's server programs are not installed."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from datatool.core.catalogue import Image, SourceFile
from datatool.core.errors import DatatoolError
from datatool.core.workspace import KEY_BYTES, init_workspace, open_workspace
from datatool.ingest.pipeline import ingest


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server programs (initdb) are not installed")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="datatool-pg-"))
    os.chmod(base, 0o777)
    data, sock, port = base / "data", base / "sock", _free_port()
    sock.mkdir()
    os.chmod(sock, 0o777)
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "datatool",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "log"),
            "-o",
            f"-k {sock} -p {port} -c listen_addresses=''",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "createdb"),
                "-h",
                str(sock),
                "-p",
                str(port),
                "-U",
                "datatool",
                "catalogue",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://datatool@/catalogue?host={sock}&port={port}"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def init_key(path: Path) -> Path:
    """A valid pseudonym key file that is not the workspace's."""
    path.write_text(os.urandom(KEY_BYTES).hex() + "\n")
    os.chmod(path, 0o600)
    return path


def test_catalogue_on_postgresql(postgres_url, monkeypatch, tmp_path, us_file):
    monkeypatch.setenv("DATATOOL_DB_URL", postgres_url)
    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    assert ws.engine.dialect.name == "postgresql"
    assert not (root / ".datatool" / "catalogue.sqlite").exists()
    folder = us_file("OBXXXX1A.dcm").parent
    us_file("gdcm-US-ALOKA-16.dcm")
    us_file("OBXXXX1A_2frame.dcm")
    first = ingest(ws, [folder], workers=2)
    assert first.ingested == 2 and len(first.conflicts) == 1  # 2-frame shares a SOP UID
    second = ingest(ws, [folder], workers=1)
    assert second.ingested == 0 and second.already_present == 3
    with ws.session() as s:
        assert s.scalar(select(func.count(Image.id))) == 2
        assert s.scalar(select(func.count(SourceFile.id))) == 3
    ws.close()
    # the key's fingerprint lives in the catalogue: another folder on the same database
    # cannot make a key of its own, nor open it with another workspace's key
    with pytest.raises(DatatoolError, match="init never makes a new key"):
        init_workspace(tmp_path / "other")
    monkeypatch.setenv("DATATOOL_KEY_FILE", str(init_key(tmp_path / "elsewhere")))
    with pytest.raises(DatatoolError, match="not the pseudonym key of this workspace"):
        open_workspace(root)
