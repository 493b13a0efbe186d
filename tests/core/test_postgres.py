"""The catalogue on a real PostgreSQL server (DATATOOL_DB_URL): migrations against the
models, ingest (also two at once), re-run, conflict, label sync, agreement, split create and
check. One server is started by the tests in a temporary folder (Debian's server programs)
and stopped afterwards; each test gets a database of its own. Where the programs are not
installed the tests skip, except under CI=true, where a missing server is a failure (.ci/run
installs Debian's postgresql when initdb is absent)."""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from datatool.core.catalogue import Annotation, Image, SourceFile
from datatool.core.errors import DatatoolError
from datatool.core.workspace import KEY_BYTES, init_workspace, open_workspace
from datatool.ingest.pipeline import ingest
from tests.ci import unavailable


def _unavailable(reason: str):
    """Skip, or under CI (tests/ci.py's rule) fail: CI must test PostgreSQL."""
    unavailable(f"{reason}: PostgreSQL must be tested in CI")


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
def postgres_server():
    """A server for this module's tests: ``new_url()`` makes a fresh database on it."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL server programs (initdb) are not installed")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server")
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
    counter = itertools.count()

    def new_url() -> str:
        name = f"catalogue{next(counter)}"
        subprocess.run(
            [*run_as, str(bin_dir / "createdb"), "-h", str(sock), "-p", str(port), "-U",
             "datatool", name],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return f"postgresql+psycopg://datatool@/{name}?host={sock}&port={port}"

    try:
        yield new_url
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


@pytest.fixture()
def postgres_url(postgres_server, monkeypatch):
    """A fresh database, the catalogue of every workspace this test opens."""
    url = postgres_server()
    monkeypatch.setenv("DATATOOL_DB_URL", url)
    return url


def test_catalogue_on_postgresql(postgres_url, monkeypatch, tmp_path, us_file):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from datatool.core.catalogue import Base

    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    assert ws.engine.dialect.name == "postgresql"
    assert not (root / ".datatool" / "catalogue.sqlite").exists()
    with ws.engine.connect() as conn:  # the migrations build what the models describe
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
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


def test_two_ingests_at_once_on_postgresql(postgres_url, tmp_path, demo_dir, cli_env):
    """Two processes ingest the same folder at the same time: each file is catalogued once
    (the loser of a unique-key race writes its batch again), none is a conflict."""
    root = init_workspace(tmp_path / "w").root
    env = dict(cli_env, DATATOOL_DB_URL=postgres_url)
    command = [sys.executable, "-m", "datatool", "ingest", str(demo_dir / "dicom"), "--json",
               "--workers", "1", "--batch", "2", "--workspace", str(root)]  # fmt: skip
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out))
    files = len(list((demo_dir / "dicom").rglob("*.dcm")))
    assert sum(r["ingested"] for r in reports) == files
    assert sum(r["ingested"] + r["already_present"] for r in reports) == 2 * files
    assert all(not r["conflicts"] and not r["rejected"] for r in reports)
    ws = open_workspace(root)
    with ws.session() as s:
        assert s.scalar(select(func.count(SourceFile.id))) == files
        assert s.scalar(select(func.count(Image.id))) == files
    ws.close()


def test_sync_agreement_and_splits_on_postgresql(postgres_url, tmp_path, demo_dir):
    from datatool.analysis.agreement import run_agreement
    from datatool.analysis.consensus import make_consensus
    from datatool.labels.annotations import add_rater
    from datatool.labels.itksnap.sync import sync_itksnap
    from datatool.learning.splits import check_split, create_split

    root = init_workspace(tmp_path / "w").root
    ws = open_workspace(root)
    assert ingest(ws, [demo_dir / "dicom"], workers=0).ingested == 12
    for rater in ("rater1", "rater2"):
        add_rater(ws, rater)
        report = sync_itksnap(ws, demo_dir / "labels" / rater, rater, dicom_root=demo_dir / "dicom")
        assert (report.new_versions, report.rejected) == (12, [])
        again = sync_itksnap(ws, demo_dir / "labels" / rater, rater, dicom_root=demo_dir / "dicom")
        assert (again.new_versions, again.unchanged) == (0, 12)
    first = run_agreement(ws, out_dir=tmp_path / "a", plots=False)
    assert first.sample.images == 12 and first.overall_icc is not None
    second = run_agreement(ws, out_dir=tmp_path / "b", plots=False)
    assert second.sample.reused and second.structures == first.structures
    assert make_consensus(ws, "majority").new_versions == 12
    info = create_split(ws, "pg", ratios="1:1:1", folds=0, seed=2)
    assert sum(c.images for c in info.subsets.values()) == 12
    check = check_split(ws, "pg")
    assert check.ok and check.hash_ok and check.images == 12
    with ws.session() as s:
        assert s.scalar(select(func.count(Annotation.id))) == 36
    ws.close()


def test_a_missing_server_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must be tested in CI"):
        _unavailable("initdb is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("initdb is missing")
