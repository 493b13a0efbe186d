"""Ingest over real vendor ultrasound (pydicom-data), bad input, idempotency, conflicts,
concurrency and interruption."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from sqlalchemy import func, select

from datatool.core.catalogue import Image, Patient, SourceFile
from datatool.core.workspace import init_workspace, open_workspace
from datatool.ingest.pipeline import ingest
from tests.badfiles import make_bad_files
from tests.conftest import PYDICOM_DATA_US
from tests.disk import small_tmpfs


def images_of(ws) -> list[Image]:
    with ws.session() as s:
        return list(s.scalars(select(Image).order_by(Image.id)))


def reference_gray(path: Path, index: int = 0) -> np.ndarray:
    """Independent decode: pydicom pixel_array, palette LUT, BT.601 luma in floats."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[index]
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = pydicom.pixels.apply_color_lut(arr, ds)
        arr = arr // 256 if arr.max() > 255 else arr
    if arr.ndim == 3:
        rgb = arr.astype(float)
        arr = np.floor((77 * rgb[..., 0] + 150 * rgb[..., 1] + 29 * rgb[..., 2] + 128) / 256)
    return arr.astype(np.uint8)


def test_real_vendor_ultrasound_decodes_to_8bit_gray(ws, pydicom_data, tmp_path):
    folder = tmp_path / "us"
    folder.mkdir()
    for name in PYDICOM_DATA_US:
        shutil.copy(pydicom_data / name, folder / name)
    report = ingest(ws, [folder], workers=0, allow_burned_in=True)
    assert not report.rejected, report.rejected
    # several files share SOP Instance UIDs (the same image in other encodings): conflicts
    assert report.ingested + len(report.conflicts) == len(PYDICOM_DATA_US)
    for img in images_of(ws):
        pixels = ws.store.get_array(img.store_hash)
        assert pixels.dtype == np.uint8 and pixels.shape == (img.rows, img.cols)
        assert pixels.max() > 0


@pytest.mark.parametrize("variant", ["OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"])
def test_encodings_of_one_image_decode_identically(ws, us_file, variant):
    """Big endian and RLE versions of the palette image give the very same pixels (their
    shared SOP Instance UID makes the second a conflict, kept aside with its frames)."""
    ingest(ws, [us_file("OBXXXX1A.dcm")], workers=0)
    report = ingest(ws, [us_file(variant, "other")], workers=0)
    assert len(report.conflicts) == 1
    with ws.session() as s:
        aside = s.scalar(select(SourceFile).where(SourceFile.status == "conflict")).aside
    assert aside == [images_of(ws)[0].store_hash]


def test_jpeg2000_lossless_matches_uncompressed_and_independent_decode(ws, us_file):
    path = us_file("US1_UNCR.dcm")
    ingest(ws, [path], workers=0, allow_burned_in=True)
    stored = ws.store.get_array(images_of(ws)[0].store_hash)
    np.testing.assert_array_equal(stored, reference_gray(path))
    report = ingest(ws, [us_file("US1_J2KR.dcm", "j2k")], workers=0, allow_burned_in=True)
    assert report.ingested == 1
    first, second = images_of(ws)
    assert first.store_hash == second.store_hash  # content-addressed: the very same pixels


def test_palette_16bit_and_jpeg_lossless(ws, us_file):
    report = ingest(
        ws, [us_file("gdcm-US-ALOKA-16.dcm"), us_file("JPGLosslessP14SV1_1s_1f_8b.dcm")], workers=0
    )
    assert report.ingested == 2 and report.ok
    for img in images_of(ws):
        assert img.mm_per_px_x is not None and img.pixel_handling in (
            "blanked_outside_regions",
            "not_burned_in",
        )


def test_calibration_and_blanking_outside_regions(ws, us_file):
    path = us_file("OBXXXX1A.dcm")
    ingest(ws, [path], workers=0)
    ds = pydicom.dcmread(path)
    (img,) = images_of(ws)
    region = max(
        ds.SequenceOfUltrasoundRegions,
        key=lambda r: (
            (r.RegionLocationMaxX1 - r.RegionLocationMinX0)
            * (r.RegionLocationMaxY1 - r.RegionLocationMinY0)
        ),
    )
    assert img.mm_per_px_x == pytest.approx(float(region.PhysicalDeltaX) * 10)
    assert img.pixel_handling == "blanked_outside_regions"
    pixels = ws.store.get_array(img.store_hash)
    keep = np.zeros(pixels.shape, bool)
    for r in img.regions:
        assert 0 <= r["x0"] <= r["x1"] < img.cols and 0 <= r["y0"] <= r["y1"] < img.rows
        keep[r["y0"] : r["y1"] + 1, r["x0"] : r["x1"] + 1] = True
    assert not pixels[~keep].any()
    original = reference_gray(path)
    assert original[~keep].any(), "the test needs text outside the regions to blank"
    np.testing.assert_array_equal(pixels[keep], original[keep])


def test_no_region_means_no_mm_and_quarantine_until_allowed(ws, us_file):
    path = us_file("US1_UNCR.dcm")
    report = ingest(ws, [path], workers=0)
    assert report.quarantined and report.exit_code == 1 and not images_of(ws)
    assert "--allow-burned-in" in report.quarantined[0][1]
    report = ingest(ws, [path], workers=0, allow_burned_in=True)
    assert report.ingested == 1 and report.ok
    (img,) = images_of(ws)
    assert img.mm_per_px_x is None and img.pixel_handling == "kept_burned_in_allowed"


@pytest.mark.parametrize(
    "mode,expected", [("auto", [60]), ("first", [0]), ("middle", [60]), ("all", list(range(120)))]
)
def test_long_cine_frames(ws, us_file, mode, expected):
    ingest(ws, [us_file("color3d_jpeg_baseline.dcm")], workers=0, frames=mode)
    assert [i.frame_index for i in images_of(ws)] == expected


def test_short_cine_gives_all_frames_by_default(ws, us_file):
    ingest(ws, [us_file("OBXXXX1A_2frame.dcm")], workers=0)
    assert [i.frame_index for i in images_of(ws)] == [0, 1]


def test_bad_input_is_rejected_one_line_each_and_the_batch_goes_on(ws, us_file, tmp_path):
    folder = tmp_path / "batch"
    bad = make_bad_files(
        us_file("OBXXXX1A.dcm", "src"),
        us_file("color3d_jpeg_baseline.dcm", "src"),
        us_file("US1_J2KR.dcm", "src"),
        folder,
    )
    good = shutil.copy(us_file("OBXXXX1A_rle.dcm", "src2"), folder / "good.dcm")
    report = ingest(ws, [folder], workers=2)
    assert report.ingested == 1, report.rejected
    reasons = {Path(p).name: r for p, r in report.rejected}
    assert set(reasons) == {p.name for p in bad.values()}, reasons
    for reason in reasons.values():
        assert "\n" not in reason and len(reason) < 300
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "not a DICOM file" in reasons["random.dcm"]
    assert "not a DICOM file" in reasons["forced.dcm"] or "missing" in reasons["forced.dcm"]
    assert "truncated" in reasons["cut_header.dcm"]
    assert "too short" in reasons["cut_pixels.dcm"]
    assert "no pixel data" in reasons["no_pixels.dcm"]
    assert "truncated" in reasons["cut_jpeg.dcm"]
    assert "too short" in reasons["wrong_length.dcm"]
    assert "absurd" in reasons["absurd.dcm"]
    assert "cannot decode" in reasons["garbled_j2k.dcm"]
    assert report.exit_code == 1
    assert Path(good).exists()


def test_rerun_is_a_no_op_and_originals_are_untouched(ws, us_file):
    paths = [us_file("OBXXXX1A.dcm"), us_file("gdcm-US-ALOKA-16.dcm")]
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}
    first = ingest(ws, [paths[0].parent], workers=0)
    db_rows = len(images_of(ws))
    second = ingest(ws, [paths[0].parent], workers=2)
    assert first.ingested == 2 and second.ingested == 0 and second.already_present == 2
    assert second.ok and len(images_of(ws)) == db_rows
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}
    assert before == after


def test_same_uid_different_bytes_is_a_conflict_never_an_overwrite(ws, us_file, tmp_path):
    path = us_file("OBXXXX1A.dcm")
    ingest(ws, [path], workers=0)
    original = images_of(ws)[0]
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes(255 - b for b in ds.PixelData)  # a different image, same UID
    changed = tmp_path / "changed" / "x.dcm"
    changed.parent.mkdir()
    ds.save_as(changed)
    report = ingest(ws, [changed], workers=0)
    assert len(report.conflicts) == 1 and report.exit_code == 1
    assert "kept aside" in report.conflicts[0][1]
    (img,) = images_of(ws)
    assert img.store_hash == original.store_hash
    with ws.session() as s:
        conflict = s.scalar(select(SourceFile).where(SourceFile.status == "conflict"))
    assert conflict.aside and conflict.aside[0] != original.store_hash
    assert conflict.aside[0] in ws.store
    # a conflict is also remembered: the same conflicting file again is no news
    again = ingest(ws, [changed], workers=0)
    assert again.already_present == 1 and not again.conflicts


def test_concurrent_ingests_into_one_workspace(ws, pydicom_data, tmp_path, cli_env):
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        shutil.copy(pydicom_data / name, folder / name)
    shutil.copy(pydicom.examples.get_path("ybr_color"), folder / "ybr.dcm")  # 30-frame cine
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datatool",
                "ingest",
                str(folder),
                "-j",
                "1",
                "--json",
                "--workspace",
                str(ws.root),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env,
        )
        for _ in range(3)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["ingested"] for r in results) == 4
    assert sum(r["already_present"] for r in results) == 8
    with ws.session() as s:
        assert s.scalar(select(func.count(SourceFile.id))) == 4
        assert s.scalar(select(func.count(Image.id))) == 3 + 30
        assert s.scalar(select(func.count(Patient.id))) == 4


def _default_sigint() -> None:
    """In the child before it execs: Ctrl-C's default action, whatever this process has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_ingest_leaves_a_consistent_catalogue_and_resumes(
    pydicom_data, tmp_path, cli_env, sig
):
    """An ingest killed (or Ctrl-C'd, exit 130) once five images are catalogued leaves whole
    files only, and the next ingest finishes the rest. The ingest starts with SIGINT's
    default action: a test run started in the background by a shell inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt (two clean-clone runs started
    so saw the ingest of every file end with exit 0 despite the Ctrl-C). On a loaded machine
    the ingest can also finish before the signal comes (180 files were once all done): that
    race lost, it is tried again in a fresh workspace with twice the files, up to three
    times."""
    src = pydicom_data / "OBXXXX1A.dcm"
    folder = tmp_path / "big"
    folder.mkdir()
    n_files = 0

    def add_files(total: int) -> None:
        for i in range(n_files, total):  # distinct files: new SOP Instance UIDs
            ds = pydicom.dcmread(src)
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(i)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / f"f{i:04d}.dcm")

    for attempt in range(3):
        total = 180 * 2**attempt
        add_files(total)
        n_files = total
        root = init_workspace(tmp_path / f"ws{attempt}").root
        cmd = [sys.executable, "-m", "datatool", "ingest", str(folder), "-j", "1"]
        proc = subprocess.Popen(
            [*cmd, "--batch", "3", "--workspace", str(root)],
            preexec_fn=_default_sigint,
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        db = root / ".datatool" / "catalogue.sqlite"
        deadline = time.time() + 60
        while time.time() < deadline:
            con = sqlite3.connect(db, timeout=30)
            n = con.execute("select count(*) from images").fetchone()[0]
            con.close()
            if n >= 5:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, sig)  # the whole process group, as a terminal's Ctrl-C does
        code = proc.wait(timeout=60)
        if code == 0:  # done before the signal came: the race was lost, not the test
            con = sqlite3.connect(db)
            done = con.execute("select count(*) from source_files").fetchone()[0]
            con.close()
            assert done == n_files, f"exit 0 after the signal with {done} of {n_files} files"
            continue
        break
    else:
        pytest.fail("the ingest finished before the signal three times (180-720 files)")
    if sig == signal.SIGINT:
        assert code == 130
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    partial = con.execute("select count(*) from images").fetchone()[0]
    files = con.execute("select count(*) from source_files").fetchone()[0]
    con.close()
    assert 5 <= partial < n_files and files == partial  # whole files only
    ws = open_workspace(root)
    try:
        report = ingest(ws, [folder], workers=2)
        assert report.already_present == partial and report.ingested == n_files - partial
        assert len(images_of(ws)) == n_files
    finally:
        ws.close()


def test_pydicom_examples(ws, tmp_path):
    folder = tmp_path / "examples"
    folder.mkdir()
    for name in ("palette_color", "ybr_color", "jpeg2k"):
        shutil.copy(pydicom.examples.get_path(name), folder / f"{name}.dcm")
    report = ingest(ws, [folder], workers=2, allow_burned_in=True)
    assert report.ok and report.ingested == 3
    assert len(images_of(ws)) == 1 + 30 + 1  # the YBR example is a 30-frame cine


def test_dicomdir_and_hidden_files_are_skipped(ws, us_file):
    path = us_file("OBXXXX1A.dcm")
    (path.parent / "DICOMDIR").write_bytes(b"not read")
    (path.parent / ".DS_Store").write_bytes(b"\x00\x01")
    report = ingest(ws, [path.parent], workers=0)
    assert report.ok and report.ingested == 1 and report.skipped == 1


def test_cli_exit_codes_and_json(us_file, tmp_path, cli_env):
    root = tmp_path / "w"
    run = lambda *a, cwd=tmp_path: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "datatool", *a], capture_output=True, text=True, env=cli_env, cwd=cwd
    )
    assert run("init", str(root)).returncode == 0
    good = us_file("OBXXXX1A.dcm")
    res = run("ingest", str(good), "--json", cwd=root)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ingested"] == 1
    (good.parent / "junk.dcm").write_bytes(b"junk" * 100)
    res = run("ingest", str(good.parent), cwd=root)
    assert res.returncode == 1
    lines = [line for line in res.stderr.splitlines() if "junk.dcm" in line]
    assert len(lines) == 1 and "not a DICOM file" in lines[0]
    assert run("ingest", str(good), "--frames", "sideways", cwd=root).returncode == 2
    assert run("ingest", str(tmp_path / "missing"), cwd=root).returncode == 2
    assert run("status", cwd=tmp_path).returncode == 2  # no workspace here
    assert "datatool init" in run("status", cwd=tmp_path).stderr


# --------------------------------------------------------------------------- identity


def _variant(src: Path, dest: Path, **changes) -> Path:
    """A copy of a DICOM file with a new SOP Instance UID and the given attributes changed
    (None deletes one)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(dest)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for name, value in changes.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def test_a_study_uid_of_another_patient_is_a_conflict_kept_aside(ws, us_file, tmp_path):
    src = us_file("OBXXXX1A.dcm")
    first = _variant(src, tmp_path / "a" / "one.dcm", PatientID="MRN-1")
    other = _variant(  # the same study, another series
        src, tmp_path / "b" / "two.dcm", PatientID="MRN-2", SeriesInstanceUID="1.2.3.4.5"
    )
    assert ingest(ws, [first], workers=0).ingested == 1
    report = ingest(ws, [other], workers=0)
    assert report.ingested == 0 and report.exit_code == 1
    ((path, reason),) = report.conflicts
    assert path == str(other) and "Study Instance UID" in reason and "another patient" in reason
    with ws.session() as s:
        assert s.scalar(select(func.count(Patient.id))) == 1
        conflict = s.scalar(select(SourceFile).where(SourceFile.status == "conflict"))
        assert conflict.aside and all(h in ws.store for h in conflict.aside)
    assert len(images_of(ws)) == 1
    # the same patient's next image of that study is filed as before
    again = _variant(src, tmp_path / "c" / "three.dcm", PatientID="MRN-1")
    assert ingest(ws, [again], workers=0).ingested == 1


def test_both_files_in_one_batch_the_second_patient_is_the_conflict(ws, us_file, tmp_path):
    src = us_file("OBXXXX1A.dcm")
    _variant(src, tmp_path / "batch" / "a.dcm", PatientID="MRN-1")
    _variant(src, tmp_path / "batch" / "b.dcm", PatientID="MRN-2")
    report = ingest(ws, [tmp_path / "batch"], workers=0)
    assert report.ingested == 1 and len(report.conflicts) == 1
    assert report.conflicts[0][0].endswith("b.dcm")
    assert (
        "Series Instance UID is already catalogued under another patient"
        in (report.conflicts[0][1])
    )


def _full_region(ds) -> None:
    region = ds.SequenceOfUltrasoundRegions[0]
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = ds.Columns - 1, ds.Rows - 2
    ds.SequenceOfUltrasoundRegions = pydicom.sequence.Sequence([region])


@pytest.mark.parametrize("flag", ["YES", None])
def test_regions_covering_the_image_leave_no_banner_to_blank_quarantined(
    ws, us_file, tmp_path, flag
):
    ds = pydicom.dcmread(us_file("OBXXXX1A.dcm"))
    _full_region(ds)
    if flag:
        ds.BurnedInAnnotation = flag
    path = tmp_path / "full" / "full.dcm"
    path.parent.mkdir()
    ds.save_as(path)
    report = ingest(ws, [path], workers=0)
    ((_, reason),) = report.quarantined
    assert "no room for a banner" in reason and "--allow-burned-in" in reason
    assert report.exit_code == 1 and not images_of(ws)
    from datatool.ingest.inventory import status

    assert status(ws).quarantined == {"regions cover the image": 1}
    allowed = ingest(ws, [path], workers=0, allow_burned_in=True)
    assert allowed.ingested == 1
    (img,) = images_of(ws)
    assert img.pixel_handling == "kept_burned_in_allowed"  # never "blanked" when it was not
    assert status(ws).pixel_handling == {"kept_burned_in_allowed": 1}


def test_allow_burned_in_says_it_lets_in_both_kinds_of_quarantine():
    """--help names both reasons a burned-in image is quarantined, as the README does."""
    from typer.main import get_command

    from datatool.cli import app

    (option,) = [
        p for p in get_command(app).commands["ingest"].params if p.name == "allow_burned_in"
    ]
    assert "no region" in option.help and "cover (nearly) the whole image" in option.help


def test_regions_covering_the_image_are_fine_when_nothing_is_burned_in(ws, us_file, tmp_path):
    ds = pydicom.dcmread(us_file("OBXXXX1A.dcm"))
    _full_region(ds)
    ds.BurnedInAnnotation = "NO"
    path = tmp_path / "full" / "no.dcm"
    path.parent.mkdir()
    ds.save_as(path)
    assert ingest(ws, [path], workers=0).ok
    assert images_of(ws)[0].pixel_handling == "not_burned_in"


def test_status_counts_images_blanked_before_the_check(ws, us_file, tmp_path):
    """A catalogue made before the check holds such images as 'blanked': status says so."""
    from datatool.ingest.inventory import status

    ds = pydicom.dcmread(us_file("OBXXXX1A.dcm"))
    _full_region(ds)
    path = tmp_path / "old" / "old.dcm"
    path.parent.mkdir()
    ds.save_as(path)
    ingest(ws, [path, us_file("gdcm-US-ALOKA-16.dcm")], workers=0, allow_burned_in=True)
    with ws.session() as s:
        for img in s.scalars(select(Image)):
            img.pixel_handling = "blanked_outside_regions"
    assert status(ws).blanked_without_room == 1


# --------------------------------------------------------------------------- odd input trees


def _special_files(folder: Path) -> dict[str, Path]:
    """A FIFO, a socket and (where allowed) a device file, each named like a DICOM file."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {"FIFO": folder / "pipe.dcm", "socket": folder / "sock.dcm"}
    os.mkfifo(made["FIFO"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    sock.close()
    try:
        os.mknod(folder / "dev.dcm", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null
        made["device"] = folder / "dev.dcm"
    except (PermissionError, OSError):
        pass
    return made


def test_fifos_sockets_and_devices_are_never_opened(ws, us_file, tmp_path):
    good = us_file("OBXXXX1A.dcm", "tree")
    special = _special_files(good.parent / "sub")
    fifo_given = tmp_path / "given.fifo"
    os.mkfifo(fifo_given)
    report = ingest(ws, [good.parent, fifo_given], workers=0)  # would hang if opened
    assert report.ingested == 1 and report.ok and report.exit_code == 0
    notes = dict(report.notes)
    for kind, path in special.items():
        assert kind in notes[str(path)] and "never opened" in notes[str(path)]
    assert "FIFO" in notes[str(fifo_given)]


def without_dac_override(cmd: list[str]) -> list[str]:
    """The command run so that folder permissions apply (root reads every folder unless it
    gives up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_an_unreadable_folder_is_one_line_and_exit_1(pydicom_data, tmp_path, cli_env):
    init_workspace(tmp_path / "ws")
    tree = tmp_path / "tree"
    (tree / "ok").mkdir(parents=True)
    shutil.copy(pydicom_data / "OBXXXX1A.dcm", tree / "ok" / "a.dcm")
    (tree / "locked").mkdir()
    shutil.copy(pydicom_data / "gdcm-US-ALOKA-16.dcm", tree / "locked" / "b.dcm")
    cmd = [sys.executable, "-m", "datatool", "ingest", str(tree), "-j", "0", "--json"]
    env = {**cli_env, "DATATOOL_WORKSPACE": str(tmp_path / "ws")}
    os.chmod(tree / "locked", 0)
    try:
        res = subprocess.run(
            without_dac_override(cmd), capture_output=True, text=True, env=env, timeout=120
        )
    finally:
        os.chmod(tree / "locked", 0o755)
    assert res.returncode == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if "locked" in line]
    assert len(lines) == 1 and "cannot read this folder" in lines[0], res.stderr
    assert json.loads(res.stdout)["ingested"] == 1


def test_a_dicomdir_listing_missing_files_reports_each(ws, demo_dir, tmp_path):
    from pydicom.fileset import FileSet

    media = tmp_path / "media"
    fs = FileSet()
    for path in sorted((demo_dir / "dicom").rglob("*.dcm"))[:3]:
        fs.add(path)
    fs.write(media)
    listed = sorted(p for p in media.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    assert len(listed) == 3
    listed[0].unlink()
    listed[2].unlink()
    report = ingest(ws, [media], workers=0)
    assert report.ingested == 1 and report.skipped == 1 and report.exit_code == 1
    missing = {Path(p).name: r for p, r in report.rejected}
    assert set(missing) == {listed[0].name, listed[2].name}
    assert all("listed in the DICOMDIR" in r for r in missing.values())


def test_a_deflated_dicomdir_is_never_inflated(us_file, tmp_path, cli_env):
    """A 600 KB file named DICOMDIR, deflated, once made ingest inflate it whole to read its
    references (a 1.3 GB peak, exit 0, not a word): now it is a note, and the peak stays
    near an ingest of the good file beside it alone."""
    from tests.badfiles import deflate_bomb
    from tests.memory import run_measured

    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(us_file("OBXXXX1A.dcm"), good / "a.dcm")
    media = shutil.copytree(good, tmp_path / "media")
    deflate_bomb(media / "DICOMDIR", 400 * 2**20)
    assert (media / "DICOMDIR").stat().st_size < 1_000_000

    def run(folder: Path):
        root = init_workspace(tmp_path / f"ws-{folder.name}").root
        cmd = [sys.executable, "-m", "datatool", "ingest", str(folder), "-j", "0"]
        return run_measured([*cmd, "--workspace", str(root)], cli_env)

    baseline, res = run(good), run(media)
    assert baseline.returncode == 0 and res.returncode == 0, res.stderr
    assert "a deflated DICOMDIR" in res.stderr and "not inflated" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.peak_mib < baseline.peak_mib + 32, (res.peak_mib, baseline.peak_mib)


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    with small_tmpfs(tmp_path, "2m") as mount:
        yield mount


def test_a_full_disk_is_one_line_and_the_catalogue_stays_whole(
    small_disk, pydicom_data, tmp_path, cli_env
):
    folder = tmp_path / "many"
    folder.mkdir()
    src = pydicom.dcmread(pydicom_data / "OBXXXX1A.dcm")
    for i in range(40):  # different pixels each: every file needs its own store object
        ds = pydicom.dcmread(pydicom_data / "OBXXXX1A.dcm")
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"full{i}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pixels = np.frombuffer(src.PixelData, np.uint8).copy()
        pixels[:] = np.random.default_rng(i).integers(0, 255, pixels.size, dtype=np.uint8)
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"f{i:02d}.dcm")
    root = small_disk / "ws"
    init_workspace(root)
    res = subprocess.run(
        [sys.executable, "-m", "datatool", "ingest", str(folder), "-j", "2", "--batch", "4"],
        capture_output=True,
        text=True,
        env={**cli_env, "DATATOOL_WORKSPACE": str(root)},
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "MiB free" in errors[0] and str(small_disk) in errors[0] and "run the same" in errors[0]
    con = sqlite3.connect(root / ".datatool" / "catalogue.sqlite")
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        files = con.execute("select count(*) from source_files").fetchone()[0]
        images = con.execute("select count(*) from images").fetchone()[0]
    finally:
        con.close()
    assert files == images < 40  # whole files only


# --------------------------------------------------------------------------- kill -9

INGEST_COUNTS = {
    "files": "select count(*) from source_files",
    "distinct files": "select count(distinct sha256) from source_files",
    "images": "select count(*) from images",
    "distinct images": "select count(distinct store_hash) from images",
    "patients": "select count(*) from patients",
    "studies": "select count(*) from studies",
    "series": "select count(*) from series",
}


def test_kill_9_at_20_moments_then_a_rerun_matches_an_uninterrupted_ingest(demo_dir, tmp_path):
    """ingest killed at 20 seeded moments of its run; after each, a re-run gives exactly the
    counts of an uninterrupted run (nothing lost, nothing doubled) and SQLite is intact."""
    from datatool.cli import app
    from tests.interrupt import counts, integrity, kill_after, run_timed

    base = init_workspace(tmp_path / "base").root
    dicom = demo_dir / "dicom"

    def command(root: Path):
        args = ["ingest", str(dicom), "-j", "0", "--batch", "2", "--workspace", str(root)]
        return lambda: app(args)

    def db(root: Path) -> Path:
        return root / ".datatool" / "catalogue.sqlite"

    ref = shutil.copytree(base, tmp_path / "ref")
    code, seconds = run_timed(command(ref))
    assert code == 0
    expected = counts(db(ref), INGEST_COUNTS)
    assert expected["images"] == 12 and expected["files"] == expected["distinct files"]
    rng = random.Random(20261202)
    interrupted = 0
    for k in range(20):
        root = shutil.copytree(base, tmp_path / f"kill{k}")
        interrupted += kill_after(command(root), rng.uniform(0.0, seconds))
        assert integrity(db(root)) == "ok"
        partial = counts(db(root), INGEST_COUNTS)
        assert partial["files"] == partial["images"] <= expected["images"]  # whole files
        ws = open_workspace(root)
        try:
            again = ingest(ws, [dicom], workers=0)
        finally:
            ws.close()
        assert again.ok and again.already_present == partial["files"]
        assert counts(db(root), INGEST_COUNTS) == expected, k
        shutil.rmtree(root)
    assert interrupted >= 10  # most moments fell inside the run


def test_names_that_are_not_utf8_are_ingested_or_rejected_one_line_each(us_file, tmp_path, cli_env):
    """A file or folder name that is not valid UTF-8 once stopped the whole ingest with a
    traceback (UnicodeEncodeError in the path key), the good file beside it not ingested.
    Now a good DICOM so named is ingested, a bad one is one line with its name escaped, and
    the batch goes on."""
    top = tmp_path / "in"
    top.mkdir()
    odd_folder = os.fsdecode(bytes(top) + b"/sub\xfe")
    os.mkdir(odd_folder)
    shutil.copy(us_file("OBXXXX1A.dcm", "src"), os.fsdecode(bytes(top) + b"/\xff.dcm"))
    shutil.copy(us_file("US1_UNCR.dcm", "src"), top / "good.dcm")
    Path(os.fsdecode(bytes(top) + b"/sub\xfe/bad\xe9.dcm")).write_bytes(b"not a dicom file")
    root = init_workspace(tmp_path / "ws").root
    cmd = [sys.executable, "-m", "datatool", "ingest", str(top), "-j", "0", "--json"]
    res = subprocess.run(
        [*cmd, "--allow-burned-in", "--workspace", str(root)],
        capture_output=True,
        env=cli_env,
        timeout=300,
    )
    stderr = res.stderr.decode()  # UTF-8: the odd bytes are escapes, never raw
    assert res.returncode == 1, stderr
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if "rejected" in x]
    assert "sub\\xfe/bad\\xe9.dcm" in line and "not a DICOM file" in line, stderr
    report = json.loads(res.stdout)
    assert report["ingested"] == 2, (report, stderr)
    assert report["rejected"][0]["file"].endswith("sub\\xfe/bad\\xe9.dcm")
