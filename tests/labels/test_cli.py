"""The label commands (datatool/cli/labels.py, itksnap.py, labelstudio.py) through Typer's
runner: tables, --json keys, --csv files, exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.errors import UsageError
from datatool.ingest.pipeline import ingest
from datatool.labels.itksnap.formats import read_label_map, write_segmentation
from datatool.labels.labelstudio.push import push

runner = CliRunner()


def _run(ws, *args: str):
    return runner.invoke(app, [*args, "--workspace", str(ws.root)])


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_rater_add_list_and_labels(ws, tmp_path):
    added = _run(ws, "rater", "add", "AN1")
    assert added.exit_code == 0 and added.stdout.strip() == "Registered rater AN1"
    again = _run(ws, "rater", "add", "AN1", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout) == {"name": "AN1", "kind": "human", "created": False}
    assert _run(ws, "rater", "add", "AN2").exit_code == 0

    listed = _run(ws, "rater", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [set(r) for r in rows] == [{"name", "kind", "images_labelled", "registered"}] * 2
    assert [(r["name"], r["kind"], r["images_labelled"]) for r in rows] == [
        ("AN1", "human", 0),
        ("AN2", "human", 0),
    ]
    table = _run(ws, "rater", "list", "--csv", str(tmp_path / "raters.csv"))
    assert table.exit_code == 0 and "AN2" in table.stdout
    assert [r[:3] for r in _csv_rows(tmp_path / "raters.csv")] == [
        ["rater", "kind", "images labelled"],
        ["AN1", "human", "0"],
        ["AN2", "human", "0"],
    ]

    coverage = json.loads(_run(ws, "labels", "--json").stdout)
    assert coverage["protocol"] == "anterior_sciatic"
    first = coverage["raters"][0]
    assert set(first) == {
        "rater",
        "kind",
        "images_labelled",
        "images_total",
        "versions",
        "sources",
        "structures",
        "from_draft",
        "draft_unchanged",
    }
    assert first["structures"]["sciatic nerve"] == {"present": 0, "absent": 0}
    assert (first["from_draft"], first["draft_unchanged"]) == (0, 0)
    # the summary as table rows, one per rater, to FILE; each rater's structures beside it
    shown = _run(ws, "labels", "--csv", str(tmp_path / "cov.csv"))
    assert shown.exit_code == 0 and "each rater's labels" in shown.stdout
    assert _csv_rows(tmp_path / "cov.csv") == [
        ["rater", "kind", "images labelled", "of images", "versions", "from",
         "started from a draft", "draft accepted unchanged"],
        ["AN1", "human", "0", "0", "0", "", "0", "0"],
        ["AN2", "human", "0", "0", "0", "", "0", "0"],
    ]  # fmt: skip
    assert _csv_rows(tmp_path / "cov-an1.csv")[:2] == [
        ["structure", "present", "absent"],
        ["femur", "0", "0"],
    ]
    assert _csv_rows(tmp_path / "cov-an2.csv")[0] == ["structure", "present", "absent"]


def test_labels_without_raters_says_what_to_do(ws):
    res = _run(ws, "labels")
    assert res.exit_code == 0 and "no raters yet: run 'datatool rater add NAME'" in res.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["labels", "--rater", "nobody"],
        ["export", "itksnap", "--rater", "nobody", "--out", "{tmp}/out"],
        ["sync", "itksnap", "{tmp}", "--rater", "nobody"],
        ["labelstudio", "push", "--rater", "nobody", "--serve", "upload"],
        ["sync", "labelstudio", "--rater", "nobody", "--export", "{tmp}/export.json"],
    ],
    ids=["labels", "export-itksnap", "sync-itksnap", "labelstudio-push", "sync-labelstudio"],
)
def test_an_unknown_rater_is_a_usage_error_everywhere(ws, tmp_path, args):
    (tmp_path / "export.json").write_text("[]")
    res = _run(ws, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (
        "error: rater 'nobody' is not registered: run 'datatool rater add nobody'"
    )


RESERVED_COMMANDS = [
    ["export", "itksnap", "--rater", "{r}", "--out", "{tmp}/out"],
    ["sync", "itksnap", "{tmp}/labels", "--rater", "{r}"],
    ["labelstudio", "push", "--rater", "{r}", "--serve", "upload"],
    ["sync", "labelstudio", "--rater", "{r}", "--export", "{tmp}/export.json"],
    ["sync", "labelstudio", "--rater", "{r}", "--url", "http://127.0.0.1:9", "--token", "t"],
]


def test_reserved_raters_are_written_only_by_their_own_commands(ws, demo_dir, tmp_path):
    """consensus:*, model:* (registered or not) and a rater of any kind but human are refused
    by every command that brings in or hands out a person's labels: exit 2, one line, before
    any file is read or any server asked (port 9 answers nothing), nothing stored."""
    from datatool.core.catalogue import Annotation, Image, Rater
    from datatool.labels.matching import image_name

    ingest(ws, [demo_dir / "dicom"], workers=0)
    with ws.session() as s:
        s.add_all(
            [Rater(name="consensus:staple", kind="consensus"), Rater(name="model:1", kind="model")]
        )
        s.add(Rater(name="odd", kind="model"))  # a reserved kind under a plain name
        image = s.get_one(Image, 1)
        shape = (image.rows, image.cols)
    labels = tmp_path / "labels"
    labels.mkdir()
    mask = np.zeros(shape, np.uint8)
    mask[10:40, 10:60] = 1  # a valid label: without the check, sync would store it
    write_segmentation(labels / f"{image_name(1)}_seg.nii.gz", mask, (1.0, 1.0))
    (tmp_path / "export.json").write_text("[]")
    for rater in ("consensus:staple", "model:1", "Consensus:new", "odd"):
        for args in RESERVED_COMMANDS:
            res = _run(ws, *(a.replace("{tmp}", str(tmp_path)).replace("{r}", rater) for a in args))
            assert res.exit_code == 2, (args, rater, res.output)
            (line,) = res.stderr.strip().splitlines()
            assert line.startswith(f"error: rater {rater!r} is reserved: "), line
            assert "never by" in line and "datatool rater list" in line
    with ws.session() as s:
        assert s.query(Annotation).count() == 0
    assert not (tmp_path / "out").exists()
    review = _run(ws, "sync", "labelstudio", "--review", "--allow-copy", "why")
    assert review.exit_code == 2 and "not for --review" in " ".join(review.output.split())
    # the same folder syncs for a human rater: the refusal was the rater, not the file
    _run(ws, "rater", "add", "AN1")
    assert _run(ws, "sync", "itksnap", str(labels), "--rater", "AN1").exit_code == 0


def test_fixed_choices_are_checked(ws):
    res = _run(ws, "labelstudio", "push", "--rater", "AN1", "--serve", "ftp")
    words = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and "'ftp' is not one of 'local', 'upload'" in words
    _run(ws, "rater", "add", "AN1")
    with pytest.raises(UsageError, match="--serve must be one of local, upload"):
        push(ws, "AN1", serve="ftp")


def test_sync_and_export_itksnap(ws, demo_dir, tmp_path):
    ingest(ws, [demo_dir / "dicom"], workers=0)
    assert _run(ws, "rater", "add", "rater1").exit_code == 0
    synced = _run(
        ws,
        "sync",
        "itksnap",
        str(demo_dir / "labels" / "rater1"),
        "--rater",
        "rater1",
        "--dicom-root",
        str(demo_dir / "dicom"),
        "--csv",
        str(tmp_path / "sync.csv"),
    )
    assert synced.exit_code == 0, synced.output
    assert "sync itksnap: rater rater1" in synced.stdout
    assert _csv_rows(tmp_path / "sync.csv") == [
        ["outcome", "label files"],
        ["seen", "12"],
        ["new versions", "12"],
        ["unchanged", "0"],
        ["rejected", "0"],
        ["notes", "0"],
    ]

    out = tmp_path / "export"
    exported = _run(
        ws, "export", "itksnap", "--rater", "rater1", "--out", str(out), "--images", "1,IMG2"
    )
    assert exported.exit_code == 0, exported.output
    assert "exported 2 images for rater rater1" in exported.stdout
    data = json.loads(
        _run(ws, "export", "itksnap", "--rater", "rater1", "--out", str(out), "--json").stdout
    )
    assert set(data) == {
        "rater",
        "out_dir",
        "images",
        "prefilled",
        "drafted",
        "draft_run",
        "model_version",
        "kept",
        "kept_files",
        "labels_file",
        "colors_file",
        "gold",
        "cines",
    }
    assert (data["images"], data["prefilled"], data["kept"], data["kept_files"]) == (12, 12, 0, [])
    assert data["cines"] == 0  # the demo fixture has no cines
    assert data["gold"] is None  # no --gold
    # an edit not synced yet is kept, one stderr line says so
    seg = out / "img000001" / "img000001_seg.nii.gz"
    mask = read_label_map(seg)
    mask[:4, :4] = 1
    write_segmentation(seg, np.ascontiguousarray(mask, np.uint8), (1.0, 1.0))
    kept = _run(ws, "export", "itksnap", "--rater", "rater1", "--out", str(out))
    assert kept.exit_code == 0
    assert kept.stderr.strip() == (
        f"kept: {seg}: holds edits not synced yet; left as it was (sync it first)"
    )
    assert "1 kept with unsynced edits" in kept.stdout
    bad = _run(ws, "export", "itksnap", "--rater", "rater1", "--out", str(out), "--images", "x1")
    assert bad.exit_code == 2 and "'x1' is not an image id" in bad.stderr


def test_sync_labelstudio_counts_tasks_not_annotated_and_lists_them_with_verbose(ws, tmp_path):
    """Three tasks of an export with no annotation: one line says how many; --verbose lists
    each; --json carries the list."""
    from tests.handmade import write_us

    for k in range(3):
        write_us(tmp_path / "d" / f"{k}.dcm", np.full((20, 30), 90, np.uint8), patient_id=f"N{k}")
    ingest(ws, [tmp_path / "d"], workers=0)
    assert _run(ws, "rater", "add", "AN1").exit_code == 0
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [
                {
                    "id": k + 1,
                    "data": {"image": f"/data/upload/1/{k}.png", "dicom": f"{k}.dcm"},
                    "annotations": [],
                    "project": 1,
                }
                for k in range(3)
            ]
        )
    )
    args = ["sync", "labelstudio", "--rater", "AN1", "--export", str(export)]
    args += ["--dicom-root", str(tmp_path / "d")]
    quiet = _run(ws, *args)
    assert quiet.exit_code == 0, quiet.output
    assert "note: 3 tasks not annotated yet (--verbose lists them)" in quiet.stderr
    assert "no annotation yet" not in quiet.stderr
    assert "not annotated yet" in quiet.stdout  # the table's row
    loud = _run(ws, *args, "--verbose")
    assert loud.stderr.count(": no annotation yet") == 3, loud.stderr
    assert "tasks not annotated yet" not in loud.stderr
    data = json.loads(_run(ws, *args, "--json").stdout)
    assert len(data["not_annotated"]) == 3 and data["notes"] == []
