"""``datatool pull`` against a real PACS: Debian's Orthanc (tests/orthanc_server.py), filled
with the demo's exams over REST and real pydicom-data ultrasound sent by dcmtk's storescu in
their own compressed and uncompressed syntaxes; pulled by DICOMweb and by DIMSE (C-GET back
to datatool's AE title, registered as an Orthanc modality). Retrievals are counted in
Orthanc's own verbose log: a WADO-RS request per study or instance, a C-GET per resource."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from datatool.core.catalogue import Patient, SourceFile, Study
from datatool.core.dimse import Peer
from datatool.core.workspace import init_workspace
from datatool.demo.orthanc import free_port
from datatool.ingest import deid
from datatool.ingest.pull import DicomWebSource, make_query, pull
from datatool.ingest.pull_dimse import DimseSource
from tests.ci import unavailable
from tests.interrupt import integrity
from tests.orthanc_server import orthanc

# (file, storescu's option proposing its syntax): JPEG 2000 lossless, explicit VR little
# endian, JPEG baseline (a multi-frame cine)
SENT_BY_STORESCU = [
    ("US1_J2KR.dcm", "-xv"),
    ("OBXXXX1A.dcm", "-xe"),
    ("color3d_jpeg_baseline.dcm", "-xy"),
]
WADO_RE = re.compile(
    r"\(http\) GET /dicom-web/studies/[0-9.]+(/series/[0-9.]+/instances/[0-9.]+)?$"
)
ME = {"datatool": ("DATATOOL", "127.0.0.1", 104)}  # may find and get (Orthanc checks the host)


def storescu(server, files: list[tuple[Path, str]]) -> None:
    if shutil.which("storescu") is None:
        unavailable("dcmtk's storescu is not installed (apt-get install dcmtk)")
    for path, option in files:
        cmd = [
            "storescu",
            option,
            "-aec",
            server.aet,
            "127.0.0.1",
            str(server.dicom_port),
            str(path),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def fill(server, demo_dir: Path, pydicom_data: Path) -> list[Path]:
    """The demo's exams over REST, the pydicom-data ultrasound by storescu; the files sent."""
    demo = sorted((demo_dir / "dicom").rglob("*.dcm"))
    for path in demo:
        assert server.upload(path)["Status"] == "Success"
    storescu(server, [(pydicom_data / name, option) for name, option in SENT_BY_STORESCU])
    return demo + [pydicom_data / name for name, _ in SENT_BY_STORESCU]


def headers(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def retrievals(server) -> int:
    return sum(bool(WADO_RE.search(line)) for line in server.log.read_text().splitlines())


def c_gets(server) -> int:
    return server.log.read_text().count("C-GET: Sending resource")


def identities(dsets: list[pydicom.Dataset]) -> set[str]:
    found = set()
    for ds in dsets:
        for value in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))):
            if len(value) >= 4:
                found.add(value)
        for part in str(ds.get("PatientName", "")).split("^"):
            if len(part) >= 5:
                found.add(part)
    return found


def assert_no_identity(ws, dsets, extra: list[str] = ()) -> None:
    blobs = b"".join(
        p.read_bytes() for p in ws.meta_dir.rglob("*") if p.is_file() and "store" not in p.parts
    )
    for value in identities(dsets) | {str(ds.StudyInstanceUID) for ds in dsets} | set(extra):
        assert value.encode() not in blobs, value


def test_dicomweb_pull_catalogues_pseudonyms_and_resumes(ws, demo_dir, pydicom_data, tmp_path):
    with orthanc(tmp_path / "pacs", dicom_port=0, verbose=True) as server:
        files = fill(server, demo_dir, pydicom_data)
        dsets = headers(files)
        study_uids = sorted({str(ds.StudyInstanceUID) for ds in dsets})
        assert len(study_uids) == 6

        first = study_uids[0]
        first_files = sum(str(ds.StudyInstanceUID) == first for ds in dsets)
        report = pull(ws, DicomWebSource(server.dicomweb_url), make_query([first]), workers=0)
        assert (report.studies_found, report.studies_retrieved) == (1, 1)
        assert report.instances_retrieved == first_files
        assert retrievals(server) == 1

        report = pull(ws, DicomWebSource(server.dicomweb_url), make_query(), workers=0)
        assert report.studies_found == 6
        assert report.studies_skipped == 1  # the one pulled first: not retrieved again
        assert report.studies_retrieved == 5
        assert report.instances_retrieved == len(files) - first_files
        assert retrievals(server) == 1 + 5
        assert report.failed == []
        # one pydicom-data file has no ultrasound region: quarantined; the others ingested
        assert len(report.ingest.quarantined) == 1
        assert report.ingest.ingested == len(files) - first_files - 1

        with ws.session() as s:
            catalogued = set(s.scalars(select(Study.uid)))
            sops = set(s.scalars(select(SourceFile.sop_uid)))
            pseudonyms = list(s.scalars(select(Patient.pseudonym)))
        assert sops == {deid.uid_for(ws.key, str(ds.SOPInstanceUID)) for ds in dsets}
        # the quarantined file's study has no Study row (nothing of it was filed)
        aside = report.ingest.quarantined[0][0].split()[1]
        assert catalogued == {deid.uid_for(ws.key, u) for u in study_uids} - {aside}
        assert len(pseudonyms) == 5 and all(p.startswith("P-") for p in pseudonyms)
        assert_no_identity(ws, dsets)

        again = pull(ws, DicomWebSource(server.dicomweb_url), make_query(), workers=0)
        assert again.studies_skipped == 6  # the quarantined study's file is catalogued too
        assert again.studies_retrieved == 0 and again.instances_retrieved == 0
        assert retrievals(server) == 6  # nothing retrieved a third time
        assert again.exit_code == 0
    assert not list((ws.meta_dir / "spool").glob("pull-*"))  # the spool is cleaned up


def test_filters_modality_and_dates(ws, demo_dir, pydicom_data, tmp_path):
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    with orthanc(tmp_path / "pacs", verbose=True) as server:
        demo = sorted((demo_dir / "dicom").rglob("*.dcm"))
        for path in [*demo, ct]:
            server.upload(path)
        dsets = headers(demo)
        dates = sorted({ds.StudyDate for ds in dsets})
        assert len(dates) >= 2

        source = DicomWebSource(server.dicomweb_url)
        assert len(source.search(make_query())) == len(dates) + 1  # the CT too
        us_only = source.search(make_query(modality="us"))
        assert len(us_only) == len(dates)
        ct_uid = pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID
        assert ct_uid not in {s.uid for s in us_only}

        cut = dates[1]  # the studies on or after the second date
        iso = f"{cut[:4]}-{cut[4:6]}-{cut[6:]}"
        report = pull(ws, source, make_query(modality="US", since=iso), workers=0)
        expected = {ds.StudyInstanceUID for ds in dsets if ds.StudyDate >= cut}
        assert report.studies_found == len(expected)
        with ws.session() as s:
            assert set(s.scalars(select(Study.uid))) == {deid.uid_for(ws.key, u) for u in expected}
        before = DicomWebSource(server.dicomweb_url).search(
            make_query(modality="US", until=dates[0])
        )
        assert {s.uid for s in before} == {
            ds.StudyInstanceUID for ds in dsets if ds.StudyDate <= dates[0]
        }


def test_dimse_pull_c_get_and_resume(ws, demo_dir, pydicom_data, tmp_path):
    with orthanc(tmp_path / "pacs", dicom_port=0, modalities=ME, verbose=True) as server:
        files = fill(server, demo_dir, pydicom_data)
        dsets = headers(files)
        peer = Peer("127.0.0.1", server.dicom_port, server.aet)
        report = pull(ws, DimseSource(peer), make_query(modality="US"), workers=0)
        assert report.studies_found == 6 and report.studies_retrieved == 6
        assert report.instances_retrieved == len(files)
        assert report.failed == []
        assert report.ingest.ingested + len(report.ingest.quarantined) == len(files)
        assert c_gets(server) == 6
        with ws.session() as s:
            sops = set(s.scalars(select(SourceFile.sop_uid)))
            syntaxes = set(s.scalars(select(SourceFile.transfer_syntax)))
        assert sops == {deid.uid_for(ws.key, str(ds.SOPInstanceUID)) for ds in dsets}
        # sent as stored: no transcoding on the way
        assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"} <= syntaxes
        assert_no_identity(ws, dsets)

        again = pull(ws, DimseSource(peer), make_query(), workers=0)
        assert again.instances_retrieved == 0
        assert again.studies_skipped == 6
        assert c_gets(server) == 6  # no C-GET the second time


def test_dimse_unknown_calling_ae_is_one_line(ws, tmp_path):
    with orthanc(tmp_path / "pacs", dicom_port=0) as server:  # no modality registered
        server.upload(Path(pydicom.data.get_testdata_file("CT_small.dcm")))
        peer = Peer("127.0.0.1", server.dicom_port, server.aet)
        from datatool.core.errors import DatatoolError

        with pytest.raises(DatatoolError) as refused:
            pull(ws, DimseSource(peer), make_query(), workers=0)
        assert "\n" not in str(refused.value)
        assert "DATATOOL" in str(refused.value) or "C-FIND" in str(refused.value)


def _cli(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datatool", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_cli_credentials_from_environment_never_written(ws, demo_dir, tmp_path, cli_env):
    password = "pw-Secret-7319"
    with orthanc(tmp_path / "pacs", users={"pacs-user": password}) as server:
        for path in sorted((demo_dir / "dicom").rglob("*.dcm"))[:4]:
            server.upload(path)
        args = ["pull", "--dicomweb", server.dicomweb_url, "-j", "0", "--workspace", str(ws.root)]
        refused = _cli(args, cli_env, tmp_path)
        assert refused.returncode == 1
        assert "HTTP 401" in refused.stderr and "DATATOOL_DICOMWEB_USER" in refused.stderr
        assert "Traceback" not in refused.stderr
        env = dict(cli_env, DATATOOL_DICOMWEB_USER="pacs-user", DATATOOL_DICOMWEB_PASSWORD=password)
        done = _cli([*args, "--json"], env, tmp_path)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["ingest"]["ingested"] == 4
        assert password not in done.stdout + done.stderr
        blobs = b"".join(p.read_bytes() for p in ws.root.rglob("*") if p.is_file())
        assert password.encode() not in blobs and b"pacs-user" not in blobs
        # a login in the URL is refused (a usage error), never used
        with_login = server.dicomweb_url.replace("http://", f"http://pacs-user:{password}@")
        usage = _cli(
            ["pull", "--dicomweb", with_login, "--workspace", str(ws.root)], cli_env, tmp_path
        )
        assert usage.returncode == 2 and password not in usage.stderr + usage.stdout


def test_bearer_token_sent_as_header():
    source = DicomWebSource(
        "http://127.0.0.1:9/dicom-web", environ={"DATATOOL_DICOMWEB_TOKEN": "tok-1"}
    )
    assert source.client._session.headers["Authorization"] == "Bearer tok-1"
    assert source.client._session.auth is None


def test_cli_unreachable_server_is_one_line(ws, tmp_path, cli_env):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    done = _cli(["pull", "--dicomweb", url, "--workspace", str(ws.root)], cli_env, tmp_path)
    assert done.returncode == 1
    assert "cannot connect" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_bad_instance_rejected_others_ingested(ws, demo_dir, tmp_path, cli_env):
    good = sorted((demo_dir / "dicom").rglob("*.dcm"))[:2]
    ds = pydicom.dcmread(good[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated: cannot be decoded
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\x00" * 16
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with orthanc(tmp_path / "pacs") as server:
        for path in [*good, bad]:
            server.upload(path)
        args = [
            "pull",
            "--dicomweb",
            server.dicomweb_url,
            "-j",
            "0",
            "--workspace",
            str(ws.root),
            "--json",
        ]
        done = _cli(args, cli_env, tmp_path)
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert answer["ingest"]["ingested"] == 2
    rejected = answer["ingest"]["rejected"]
    assert len(rejected) == 1
    assert rejected[0]["file"] == (
        f"study {deid.uid_for(ws.key, str(ds.StudyInstanceUID))} "
        f"instance {deid.uid_for(ws.key, str(ds.SOPInstanceUID))}"
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("rejected:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--since", "2024-13-01"], "--since"),
        (["--since", "2024-02-01", "--until", "2024-01-01"], "after"),
        (["--study", "not-a-uid"], "--study"),
        (["--modality", "U S"], "--modality"),
    ],
)
def test_bad_filters_are_usage_errors(args, word):
    from datatool.core.errors import UsageError

    options = {"--since": "since", "--until": "until", "--modality": "modality"}
    kwargs: dict = {}
    studies = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--study":
            studies.append(value)
        else:
            kwargs[options[flag]] = value
    with pytest.raises(UsageError, match=re.escape(word)):
        make_query(studies, **kwargs)


def test_a_study_catalogued_in_part_gets_only_its_missing_instances(ws, demo_dir, tmp_path):
    from datatool.ingest.pipeline import ingest

    demo = sorted((demo_dir / "dicom").rglob("*.dcm"))
    study = str(pydicom.dcmread(demo[0], stop_before_pixels=True).StudyInstanceUID)
    same = [
        p
        for p in demo
        if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study
    ]
    assert len(same) >= 2
    ingest(ws, [same[0]], workers=0)  # one file of the study is catalogued from disk
    with orthanc(tmp_path / "pacs", verbose=True) as server:
        for path in same:
            server.upload(path)
        report = pull(ws, DicomWebSource(server.dicomweb_url), make_query(), workers=0)
        log = server.log.read_text().splitlines()
    assert report.studies_retrieved == 1 and report.instances_retrieved == len(same) - 1
    assert report.ingest.ingested == len(same) - 1 and report.ok
    wado = [line for line in log if WADO_RE.search(line)]
    assert len(wado) == len(same) - 1
    assert all("/instances/" in line for line in wado)  # never the whole study


def test_a_killed_pull_s_spool_is_removed_by_the_next(ws, demo_dir, tmp_path):
    stale = ws.meta_dir / "spool" / "pull-stale"
    (stale / "batch-x").mkdir(parents=True)
    (stale / "batch-x" / "00000001.dcm").write_bytes(b"half a file")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stale / "pid").write_text(str(dead.pid))  # a pull that no longer runs
    with orthanc(tmp_path / "pacs") as server:
        server.upload(sorted((demo_dir / "dicom").rglob("*.dcm"))[0])
        report = pull(ws, DicomWebSource(server.dicomweb_url), make_query(), workers=0)
        assert report.ingest.ingested == 1 and report.ok
        assert not stale.exists()
        assert not list((ws.meta_dir / "spool").iterdir())
        # killed after it had catalogued everything: the next pull has nothing to retrieve
        (stale / "batch-y").mkdir(parents=True)
        (stale / "pid").write_text(str(dead.pid))
        again = pull(ws, DicomWebSource(server.dicomweb_url), make_query(), workers=0)
    assert again.studies_skipped == 1 and again.instances_retrieved == 0 and again.ok
    assert not stale.exists()


PULL_COUNTS = {
    "ingested files": "select count(*) from source_files where status = 'ingested'",
    "distinct SOP instances": "select count(distinct sop_uid) from source_files",
    "source files": "select count(*) from source_files",
    "images": "select count(*) from images",
    "studies": "select count(*) from studies",
    "patients": "select count(*) from patients",
}


def _counts(root: Path) -> dict[str, int]:
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    try:
        return {k: con.execute(q).fetchone()[0] for k, q in PULL_COUNTS.items()}
    finally:
        con.close()


def test_kill_9_of_a_pull_at_seeded_moments_loses_nothing_and_doubles_nothing(
    demo_dir, tmp_path, cli_env
):
    """A pull killed (SIGKILL, its whole process group) at seeded moments while it searches,
    retrieves and ingests leaves a sound catalogue; the next pull removes the dead pull's
    spool and ends with exactly the counts of an uninterrupted pull: every instance once."""
    base = init_workspace(tmp_path / "base").root
    with orthanc(tmp_path / "pacs") as server:
        for path in sorted((demo_dir / "dicom").rglob("*.dcm")):
            assert server.upload(path)["Status"] == "Success"

        def args(root: Path) -> list[str]:
            return [sys.executable, "-m", "datatool", "pull", "--dicomweb",
                    server.dicomweb_url, "-j", "0", "--workspace", str(root)]  # fmt: skip

        ref = shutil.copytree(base, tmp_path / "ref")
        began = time.monotonic()
        done = subprocess.run(args(ref), capture_output=True, text=True, env=cli_env, timeout=300)
        seconds = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        expected = _counts(ref)
        assert expected["ingested files"] == expected["distinct SOP instances"] > 0
        rng = random.Random(20261207)
        cut_short = late = 0
        for k in range(6):  # 4 kills, and up to 2 more while none has cut a pull short
            if k >= 4 and cut_short:
                break
            root = shutil.copytree(base, tmp_path / f"kill{k}")
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            proc = subprocess.Popen(args(root), env=cli_env, start_new_session=True, **quiet)
            # on a loaded machine the reference pull may have been quick: after a kill that
            # came too late, the next comes sooner
            time.sleep(rng.uniform(0.3, 0.9) * seconds * 0.5**late)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert integrity(root / ".datatool" / "catalogue.sqlite") == "ok"
            short = _counts(root)["source files"] < expected["source files"]
            cut_short += short
            late += not short
            again = subprocess.run(args(root), capture_output=True, text=True, env=cli_env,
                                   timeout=300)  # fmt: skip
            assert again.returncode == 0, (k, again.stderr)
            assert "Traceback" not in again.stderr
            assert _counts(root) == expected, k
            assert not list((root / ".datatool" / "spool").glob("pull-*")), k
        assert cut_short, "no kill came before the pull had catalogued everything"
