"""SEG files back to a real PACS (labels/dicomseg/push.py, ``export dicom-seg --stow`` and
``--dimse``): Debian's Orthanc holding the demo's originals takes the SEG files by STOW-RS
and by C-STORE; each is read back from Orthanc (present, SOP class SEG, referencing its
original's series), and what Orthanc answered is in the result per file."""

from __future__ import annotations

import json

import pydicom
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.dimse import SEG_CLASS, Peer
from datatool.demo.orthanc import free_port
from datatool.labels.dicomseg.export import export_dicom_seg
from datatool.labels.dicomseg.push import push_dimse, push_export
from tests.labels_util import ingest_demo_with_labels
from tests.orthanc_server import orthanc

runner = CliRunner()


def _segs_in(server) -> dict[str, dict]:
    """Orthanc's SEG instances by SOP Instance UID: their main tags."""
    found = {}
    for orthanc_id in server.get_json("/instances"):
        tags = server.get_json(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("SOPClassUID") == SEG_CLASS:
            found[tags["SOPInstanceUID"]] = tags
    return found


def _check_in_pacs(server, out_dir, written) -> None:
    segs = _segs_in(server)
    assert len(segs) == len(written)
    for item in written:
        ds = pydicom.dcmread(out_dir / item.file)
        assert ds.SOPInstanceUID in segs
        stored = segs[ds.SOPInstanceUID]
        assert stored["SOPClassUID"] == SEG_CLASS
        # filed with its original: the same study, and it references the original's series
        referenced = ds.ReferencedSeriesSequence[0]
        original_sop = referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        hits = json.loads(
            server.request("/tools/lookup", method="POST", data=original_sop.encode())
        )
        assert hits and hits[0]["Type"] == "Instance"
        original_tags = server.get_json(f"/instances/{hits[0]['ID']}/simplified-tags")
        assert referenced.SeriesInstanceUID == original_tags["SeriesInstanceUID"]
        assert stored["StudyInstanceUID"] == original_tags["StudyInstanceUID"]


def test_stow_sends_each_seg_and_reports_http_status(ws, demo_dir, tmp_path):
    ingest_demo_with_labels(ws, demo_dir)
    with orthanc(tmp_path / "pacs") as server:
        for path in sorted((demo_dir / "dicom").rglob("*.dcm")):
            server.upload(path)
        out = tmp_path / "seg"
        result = export_dicom_seg(ws, "rater1", demo_dir / "dicom", out)
        written = [i for i in result.items if i.status == "written"]
        assert written
        push_export(result, stow=server.dicomweb_url)
        assert result.pushed_to == server.dicomweb_url
        assert [p.file for p in result.pushed] == [i.file for i in written]
        assert {p.answer for p in result.pushed} == {"HTTP 200"}
        assert all(p.ok for p in result.pushed) and result.exit_code == 0
        _check_in_pacs(server, out, written)


def test_c_store_sends_each_seg_and_reports_status(ws, demo_dir, tmp_path):
    ingest_demo_with_labels(ws, demo_dir)
    with orthanc(tmp_path / "pacs", dicom_port=0) as server:
        for path in sorted((demo_dir / "dicom").rglob("*.dcm")):
            server.upload(path)
        out = tmp_path / "seg"
        res = runner.invoke(
            app,
            [
                "export", "dicom-seg", "-r", "rater2", "--dicom-root", str(demo_dir / "dicom"),
                "--out", str(out), "--dimse", f"127.0.0.1:{server.dicom_port}",
                "--called-ae", server.aet, "--json", "--workspace", str(ws.root),
            ],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["pushed_to"] == f"127.0.0.1:{server.dicom_port} {server.aet}"
        assert data["pushed"] and {p["answer"] for p in data["pushed"]} == {"0x0000 success"}
        written = export_dicom_seg(ws, "rater2", demo_dir / "dicom", out).items
        _check_in_pacs(server, out, [i for i in written if i.file])


def test_a_refused_object_is_reported_and_exit_1(ws, demo_dir, tmp_path):
    """A file the PACS will not take (not DICOM) gets the PACS's answer; the next still goes."""
    ingest_demo_with_labels(ws, demo_dir)
    out = tmp_path / "seg"
    result = export_dicom_seg(ws, "rater1", demo_dir / "dicom", out)
    good = next(i for i in result.items if i.file)
    junk = out / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with orthanc(tmp_path / "pacs", dicom_port=0) as server:
        peer = Peer("127.0.0.1", server.dicom_port, server.aet)
        items = push_dimse(peer, [("junk", junk), (good.image, out / good.file)])
        assert not items[0].ok and items[0].answer.startswith("not sent")
        assert items[1].ok and items[1].answer == "0x0000 success"
        # by STOW, Orthanc answers the junk with an HTTP error code
        from datatool.labels.dicomseg.push import push_stow

        stowed = push_stow(server.dicomweb_url, [("junk", junk), (good.image, out / good.file)])
        assert not stowed[0].ok
        assert stowed[1].ok and stowed[1].answer == "HTTP 200"
    result.pushed = items
    assert result.exit_code == 1 and result.push_failed[0][0] == "junk junk.dcm"


def test_unreachable_pacs_is_one_line(ws, demo_dir, tmp_path, cli_env):
    """The SEG files are written; sending them fails with one line and exit 1."""
    import subprocess
    import sys

    ingest_demo_with_labels(ws, demo_dir)
    port = free_port()
    wheres = {
        "stow": ["--stow", f"http://127.0.0.1:{port}/dicom-web"],
        "dimse": ["--dimse", f"127.0.0.1:{port}", "--called-ae", "PACS"],
    }
    for name, where in wheres.items():
        out = tmp_path / f"seg-{name}"
        args = ["export", "dicom-seg", "-r", "rater1", "--dicom-root", str(demo_dir / "dicom")]
        args += ["--out", str(out), *where, "--workspace", str(ws.root)]
        done = subprocess.run(
            [sys.executable, "-m", "datatool", *args],
            capture_output=True, text=True, env=cli_env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "Error" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert list(out.glob("img*.dcm"))  # the export itself was done


def test_stow_credentials_from_the_environment(ws, demo_dir, tmp_path):
    from datatool.labels.dicomseg.push import push_stow

    ingest_demo_with_labels(ws, demo_dir)
    out = tmp_path / "seg"
    result = export_dicom_seg(ws, "rater1", demo_dir / "dicom", out)
    one = next(i for i in result.items if i.file)
    files = [(one.image, out / one.file)]
    with orthanc(tmp_path / "pacs", users={"seg-user": "seg-Pass-42"}) as server:
        refused = push_stow(server.dicomweb_url, files, environ={})
        assert not refused[0].ok and "HTTP 401" in refused[0].answer
        assert "DATATOOL_DICOMWEB_USER" in refused[0].answer
        env = {"DATATOOL_DICOMWEB_USER": "seg-user", "DATATOOL_DICOMWEB_PASSWORD": "seg-Pass-42"}
        taken = push_stow(server.dicomweb_url, files, environ=env)
        assert taken[0].ok and taken[0].answer == "HTTP 200"
        assert len(_segs_in(server)) == 1
        assert "seg-Pass-42" not in refused[0].answer + taken[0].answer
