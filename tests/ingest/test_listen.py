"""``datatool listen`` as a real subprocess, fed by dcmtk's ``storescu`` (the real binary) with
the demo's files and real vendor ultrasound (pydicom-data), each in its own transfer syntax:
the catalogue, what never leaks, --allow, loopback, the size bound, kill -9 at seeded moments,
and what ``status`` shows."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.orthanc import storescu_groups
from datatool.ingest import deid
from datatool.ingest.inventory import status
from datatool.ingest.pipeline import ingest
from datatool.ingest.spool import Spool, SpoolIngest, parse_receipt, receipt_name
from tests.ci import unavailable
from tests.interrupt import integrity

STORESCU = shutil.which("storescu")
VENDOR_US = ["US1_UNCR.dcm", "US1_J2KR.dcm", "OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"]
VENDOR_US += ["color3d_jpeg_baseline.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb.dcm"]


@pytest.fixture(autouse=True)
def _storescu():
    if STORESCU is None:
        unavailable("dcmtk's storescu is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """``datatool listen`` in a process group of its own; its log in ``log``."""

    def __init__(self, root: Path, port: int, *args: str, env: dict | None = None):
        self.root, self.port = root, port
        self.log = root.parent / f"listen-{port}-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "datatool", "listen", "--port", str(port)]
        cmd += ["--workspace", str(root), *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "listening on" in self.text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"listen exited {self.proc.returncode}: {self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"listen did not start: {self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def send(files: list[Path], port: int, aet: str = "SCANNER", aec: str = "DATATOOL"):
    """storescu each group of files sharing a transfer syntax, proposing that syntax (the
    file's own: no conversion); returns (the files acknowledged with Success, the output)."""
    groups = storescu_groups(files)
    acked: list[Path] = []
    outputs = []
    for flag, group in groups.items():
        proc = subprocess.run(
            [STORESCU, "-v", flag, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
            + [str(f) for f in group],
            capture_output=True,
            text=True,
            timeout=300,
        )
        outputs.append(proc.stdout + proc.stderr)
        acked += acknowledged(proc.stdout + proc.stderr)
    return acked, "\n".join(outputs)


def acknowledged(output: str) -> list[Path]:
    """The files storescu's verbose output says were answered with Success."""
    out, current = [], None
    for line in output.splitlines():
        m = re.match(r"I: Sending file: (.*)$", line)
        if m:
            current = Path(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            out.append(current)
            current = None
    return out


def db_rows(root: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def wait_until_ingested(root: Path, received: int, timeout: float = 120.0) -> None:
    """Until ``received`` has that many rows and the spool is empty."""
    incoming = root / ".datatool" / "spool" / "incoming"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        n = db_rows(root, "select count(*) from received")[0][0]
        if n >= received and not any(incoming.iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} of {received} received objects catalogued")


def identities(files: list[Path]) -> set[str]:
    out = set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID"):
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 4:
                out.add(value)
    return out


def leaks(root: Path, log: str, secrets: set[str]) -> list[str]:
    """Which identities appear in the catalogue, the spool or the log."""
    blobs = [log.encode()]
    for path in (root / ".datatool").rglob("*"):
        if path.is_file() and ("spool" in path.parts or path.name.startswith("catalogue")):
            blobs.append(path.read_bytes())
    return [s for s in secrets if any(s.encode() in b for b in blobs)]


def jpeg_ls_copy(files: list[Path], tmp_path: Path) -> Path:
    """A demo image in JPEG-LS lossless (dcmtk's dcmcjpls), with UIDs of its own."""
    source = next(f for f in files if syntax_of(f) == "1.2.840.10008.1.2.1")
    out = tmp_path / "jls" / "jpeg_ls.dcm"
    out.parent.mkdir()
    subprocess.run(["dcmcjpls", str(source), str(out)], check=True, timeout=60)
    subprocess.run(["dcmodify", "-nb", "-gin", "-gse", "-gst", str(out)], check=True, timeout=60)
    return out


@pytest.fixture()
def root(tmp_path) -> Path:
    return init_workspace(tmp_path / "ws").root


def demo_files(demo_dir: Path) -> list[Path]:
    return sorted((demo_dir / "dicom").rglob("*.dcm"))


# --------------------------------------------------------------------------- receive


def test_storescu_sends_demo_and_vendor_ultrasound_in_their_own_syntaxes(
    root, demo_dir, pydicom_data, tmp_path
):
    """Every file storescu sends (RLE, JPEG 2000, JPEG baseline, JPEG lossless SV1, JPEG-LS,
    uncompressed) is acknowledged, catalogued once under pseudonyms; no name or ID reaches
    the catalogue, the spool or the log; sending them all again adds nothing."""
    vendor = []
    for name in VENDOR_US:
        target = tmp_path / "vendor" / name
        target.parent.mkdir(exist_ok=True)
        vendor.append(Path(shutil.copy(pydicom_data / name, target)))
    files = demo_files(demo_dir) + vendor + [jpeg_ls_copy(demo_files(demo_dir), tmp_path)]
    syntaxes = {syntax_of(f) for f in files}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"} <= syntaxes
    port = free_port()
    listener = Listener(root, port)
    try:
        listener.wait_ready()
        acked, output = send(files, port)
        assert sorted(acked) == sorted(files), output
        wait_until_ingested(root, len(files))
        ws = open_workspace(root)
        try:
            first = status(ws)
        finally:
            ws.close()
        # the same files through 'datatool ingest', in the order they were sent: the same
        # outcomes (US1_J2KR is US1_UNCR in another syntax, the same SOP Instance UID with
        # other bytes: a conflict kept aside; some vendor images are quarantined)
        reference = init_workspace(tmp_path / "reference").root
        ref_ws = open_workspace(reference)
        want = {"ingested": 0}
        try:
            for f in acked:
                r = ingest(ref_ws, [f], workers=0)
                for outcome, n in [
                    ("ingested", r.ingested),
                    ("quarantined", len(r.quarantined)),
                    ("conflict", len(r.conflicts)),
                    ("rejected", len(r.rejected)),
                ]:
                    if n:
                        want[outcome] = want.get(outcome, 0) + n
            expected = status(ref_ws)
        finally:
            ref_ws.close()
        outcomes = dict(db_rows(root, "select outcome, count(*) from received group by outcome"))
        assert outcomes == want and want.get("conflict"), (outcomes, want)
        assert (first.images, first.files) == (expected.images, expected.files)
        assert first.images > 12
        (row,) = first.received
        assert (row.calling_ae, row.objects, row.ingested) == (
            "SCANNER",
            len(files),
            want["ingested"],
        )
        assert row.rejected == len(files) - want["ingested"]
        # again: every object acknowledged, nothing new catalogued
        again, output = send(files, port)
        assert len(again) == len(files), output
        wait_until_ingested(root, 2 * len(files))
        ws = open_workspace(root)
        try:
            second = status(ws)
        finally:
            ws.close()
        assert (second.images, second.files) == (first.images, first.files)
        # a conflict's bytes are catalogued too (known); a quarantined object is looked at again
        assert second.received[0].already_present == want["ingested"] + want["conflict"]
    finally:
        assert listener.stop() == 0
    log = listener.text()
    assert "Traceback" not in log
    assert "association from AE 'SCANNER' (127.0.0.1) ended" in log
    # one line per object not ingested, with its reason (each time it was sent)
    not_ingested = len(files) - want["ingested"]
    assert log.count(": conflict: ") + log.count(": quarantined: ") >= not_ingested
    assert not leaks(root, log, identities(files))
    assert not list((root / ".datatool" / "spool" / "partial").iterdir())


def test_an_ae_title_not_allowed_is_rejected_at_association(root, demo_dir):
    port = free_port()
    listener = Listener(root, port, "--allow", "US1,US2")
    try:
        listener.wait_ready()
        files = demo_files(demo_dir)[:2]
        acked, output = send(files, port, aet="INTRUDER")
        assert acked == [] and "Association Rejected" in output, output
        acked, output = send(files, port, aet="US2")
        assert len(acked) == 2, output
        wait_until_ingested(root, 2)
    finally:
        assert listener.stop() == 0
    assert db_rows(root, "select distinct calling_ae from received") == [("US2",)]
    assert "calling AE title 'INTRUDER' is not in --allow" in listener.text()
    shown = CliRunner().invoke(app, ["status", "--workspace", str(root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "US2" in x)
    assert "received (datatool listen)" in shown.output
    assert re.findall(r"\b\d+\b", line.split("│", 4)[-1]) == ["2", "2", "0", "0"], line


def test_associations_over_the_bound_are_refused_while_one_is_held(root, demo_dir):
    """--max-associations 1: while a client holds an association open, storescu's is
    refused; once it is released, storescu is served."""
    from pynetdicom import AE

    port = free_port()
    listener = Listener(root, port, "--max-associations", "1")
    try:
        listener.wait_ready()
        client = AE(ae_title="HOLDER")
        client.add_requested_context("1.2.840.10008.1.1")
        held = client.associate("127.0.0.1", port, ae_title="DATATOOL")
        assert held.is_established
        try:
            files = demo_files(demo_dir)[:1]
            acked, output = send(files, port)
            assert acked == [] and "Association Rejected" in output, output
        finally:
            held.release()
        time.sleep(0.5)
        acked, output = send(files, port)
        assert acked == files, output
        wait_until_ingested(root, 1)
    finally:
        assert listener.stop() == 0


def test_beyond_loopback_without_allow_is_refused_with_one_line(root, cli_env):
    proc = subprocess.run(
        [sys.executable, "-m", "datatool", "listen", "--host", "0.0.0.0", "--workspace", str(root)],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--allow" in lines[0] and "0.0.0.0" in lines[0], proc.stderr


def big_ultrasound(path: Path, megabytes: float) -> Path:
    """An uncompressed RGB ultrasound image of about ``megabytes`` MB."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Big^Object", "BIG123456", "US"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    pixels = np.random.default_rng(1).integers(0, 255, (side, side, 3), dtype=np.uint8)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_an_object_over_the_size_bound_is_refused_as_it_arrives(root, demo_dir, tmp_path):
    """--max-object-mb 1 and a 2.5 MB object: the association is aborted while it arrives
    (storescu sees a failure), nothing of it stays; the next association is served."""
    big = big_ultrasound(tmp_path / "big.dcm", 2.5)
    port = free_port()
    listener = Listener(root, port, "--max-object-mb", "1")
    try:
        listener.wait_ready()
        acked, output = send([big], port)
        assert acked == [], output
        small = demo_files(demo_dir)[:1]
        acked, output = send(small, port)
        assert acked == small, output
        wait_until_ingested(root, 1)
        time.sleep(0.5)
        assert not list((root / ".datatool" / "spool" / "partial").iterdir())
    finally:
        assert listener.stop() == 0
    assert db_rows(root, "select count(*) from received") == [(1,)]
    log = listener.text()
    assert "refused: over 1 MiB (--max-object-mb)" in log and "Traceback" not in log
    assert not leaks(root, log, {"BIG123456", "Big^Object"})


def test_an_object_that_cannot_be_spooled_is_answered_out_of_resources(root, demo_dir):
    """The spool's folder gone (a file in its place): the object is answered 0xA700, one log
    line says why, the listener goes on; once the folder is back the same file is stored."""
    port = free_port()
    listener = Listener(root, port)
    incoming = root / ".datatool" / "spool" / "incoming"
    try:
        listener.wait_ready()
        incoming.rmdir()
        incoming.write_bytes(b"")
        one = demo_files(demo_dir)[:1]
        acked, output = send(one, port)
        assert acked == [] and "Refused: OutOfResources" in output, output
        time.sleep(1.5)  # the spool worker meets the missing folder too
        incoming.unlink()
        incoming.mkdir()
        acked, output = send(one, port)
        assert acked == one, output
        wait_until_ingested(root, 1)
    finally:
        assert listener.stop() == 0
    log = listener.text()
    assert "not stored: cannot write the spool" in log and "answered 0xA700" in log
    assert "cannot ingest the spool now" in log and "Traceback" not in log


# --------------------------------------------------------------------------- the spool


def test_a_receipt_names_time_and_calling_title_and_parses_back(tmp_path):
    name = receipt_name(" odd\\AE-1 ", now_ns=1_765_000_000_123_456_789)
    receipt = parse_receipt(tmp_path / f"{name}.dcm")
    assert receipt is not None and receipt.calling_ae == "odd\\AE-1"
    assert receipt.received_at.year == 2025
    assert parse_receipt(tmp_path / ".tmp.dcm") is None
    assert parse_receipt(tmp_path / "1-2-zz.dcm") is None


def test_a_receipt_catalogued_before_a_kill_is_removed_not_ingested_again(ws, demo_dir):
    """The moment after the batch's commit, before its spool files were removed: the next
    drain removes them without a second row."""
    spool = Spool(ws)
    spool.prepare()
    files = demo_files(demo_dir)[:3]
    receipts = [spool.put_bytes(f.read_bytes(), "US1") for f in files]
    copies = {r.path: r.path.read_bytes() for r in receipts}
    ingester = SpoolIngest(ws, spool, workers=0)
    assert ingester.drain() == 3 and not spool.pending()
    for path, data in copies.items():  # as if the process died before the unlink
        path.write_bytes(data)
    again = SpoolIngest(ws, spool, workers=0)
    assert again.drain() == 0 and again.report.finished_after_restart == 3
    assert not spool.pending()
    with ws.session() as s:
        from sqlalchemy import func, select

        from datatool.core.catalogue import Received, SourceFile

        assert s.scalar(select(func.count(Received.id))) == 3
        assert s.scalar(select(func.count(SourceFile.id))) == 3


def test_objects_spooled_before_a_kill_are_ingested_before_associations(root, demo_dir):
    """The moment after the spool write, before the success was sent: a listener that
    starts ingests those objects before it accepts anyone."""
    ws = open_workspace(root)
    try:
        spool = Spool(ws)
        spool.prepare()
        for f in demo_files(demo_dir)[:4]:
            spool.put_bytes(f.read_bytes(), "US1")
        (spool.partial / "tmpabc.dcm").write_bytes(b"half an object")
    finally:
        ws.close()
    listener = Listener(root, free_port())
    try:
        listener.wait_ready()
        # ready means the spool was drained first
        assert db_rows(root, "select count(*) from received") == [(4,)]
        assert not list(spool.incoming.iterdir()) and not list(spool.partial.iterdir())
    finally:
        assert listener.stop() == 0
    assert "ingesting 4 objects left in the spool first" in listener.text()


# --------------------------------------------------------------------------- kill -9

COUNTS = {  # storescu may send an object in another syntax (other bytes): conflicts vary
    "ingested files": "select count(*) from source_files where status = 'ingested'",
    "ingested SOP instances": "select count(distinct sop_uid) from source_files "
    "where status = 'ingested'",
    "images": "select count(*) from images",
    "distinct images": "select count(distinct store_hash) from images",
    "patients": "select count(*) from patients",
    "series": "select count(*) from series",
    "received ingested": "select count(*) from received where outcome = 'ingested'",
}


def test_kill_9_at_seeded_moments_loses_nothing_acknowledged_and_doubles_nothing(
    demo_dir, tmp_path
):
    """The listener is killed at seeded moments while storescu sends (during a receive,
    between a spool write and its success, during ingest); storescu's Success lines say what
    was acknowledged. Restarted, the listener ingests the spool first; every acknowledged
    object is then catalogued exactly once, and sending everything again gives exactly the
    counts of an uninterrupted run."""
    files = demo_files(demo_dir)
    base = init_workspace(tmp_path / "base").root
    key = open_workspace(base).key

    def sop_uid(f: Path) -> str:
        return deid.uid_for(key, str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))

    first_batch = [
        f for f in files if syntax_of(f) in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1")
    ]

    def first_send(port: int) -> subprocess.Popen:
        """One association sending the RLE and uncompressed files: what is interrupted."""
        return subprocess.Popen(
            [STORESCU, "-v", "-xr", "-aet", "SCANNER", "-aec", "DATATOOL", "127.0.0.1", str(port)]
            + [str(f) for f in first_batch],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # the uninterrupted run: how long the first send takes to be received and ingested,
    # then everything sent: the counts to reach
    ref = shutil.copytree(base, tmp_path / "ref")
    port = free_port()
    listener = Listener(ref, port)
    listener.wait_ready()
    began = time.monotonic()
    out, _ = first_send(port).communicate(timeout=120)
    assert len(acknowledged(out)) == len(first_batch), out
    wait_until_ingested(ref, len(first_batch))
    seconds = time.monotonic() - began
    acked, output = send(files, port)
    assert len(acked) == len(files), output
    wait_until_ingested(ref, len(first_batch) + len(files))
    listener.stop()
    expected = {k: db_rows(ref, q)[0][0] for k, q in COUNTS.items()}
    assert expected["ingested files"] == expected["received ingested"] == len(files)

    rng = random.Random(20261207)
    interrupted = 0
    phases = {"spooled, not ingested": 0, "acknowledged, not all": 0}
    for k in range(8):
        root = shutil.copytree(base, tmp_path / f"kill{k}")
        port = free_port()
        listener = Listener(root, port)
        listener.wait_ready()
        sender = first_send(port)
        time.sleep(rng.uniform(0.0, seconds))
        listener.kill9()
        out, _ = sender.communicate(timeout=120)
        got = acknowledged(out)
        assert integrity(root / ".datatool" / "catalogue.sqlite") == "ok"
        phases["spooled, not ingested"] += bool(
            list((root / ".datatool" / "spool" / "incoming").iterdir())
        )
        phases["acknowledged, not all"] += 0 < len(got) < len(first_batch)
        # the kill came before all of the first send was received and ingested
        interrupted += db_rows(root, "select count(*) from received")[0][0] < len(first_batch)
        # started again: the spool first, then everything sent once more
        listener = Listener(root, port)
        listener.wait_ready()
        catalogued = {u for (u,) in db_rows(root, "select sop_uid from source_files")}
        assert {sop_uid(f) for f in got} <= catalogued, k  # nothing acknowledged lost
        again, output = send(files, port)
        assert len(again) == len(files), output
        n = db_rows(root, "select count(*) from received")[0][0]
        wait_until_ingested(root, n)
        time.sleep(0.5)
        wait_until_ingested(root, len(got) + len(files))
        listener.stop()
        counts = {key_: db_rows(root, q)[0][0] for key_, q in COUNTS.items()}
        assert counts == expected, (k, counts, expected)
        rows = db_rows(
            root,
            "select sop_uid, count(*) from source_files where status = 'ingested' group by sop_uid",
        )
        assert len(rows) == len(files) and all(c == 1 for _, c in rows)  # nothing doubled
        assert "Traceback" not in listener.text()
        shutil.rmtree(root)
    # the moments fell inside the receiving and ingesting (how many depends on the load)
    assert interrupted >= 2, (interrupted, phases)


def test_a_quarantined_objects_advice_fits_the_listener():
    """The listener has no --allow-burned-in: its log line says to ingest the sender's copy."""
    from datatool.ingest.deid import QUARANTINE_NO_REGION, quarantine_no_room
    from datatool.ingest.spool import for_the_listener

    for reason in (QUARANTINE_NO_REGION, quarantine_no_room(0.99)):
        told = for_the_listener(reason)
        assert "re-run with --allow-burned-in" in reason
        assert told is not None and "re-run" not in told
        assert "then ingest the sender's copy with 'datatool ingest --allow-burned-in')" in told
    assert for_the_listener("not DICOM") == "not DICOM"
    assert for_the_listener(None) is None
