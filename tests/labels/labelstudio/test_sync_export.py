"""``sync labelstudio --export``: exports of projects made before datatool, whose tasks name
their image in several fields, whose annotations name their task, and whose paths must stay
inside --dicom-root. Each bad item is one line, not stored; the rest are stored."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from datatool.core.catalogue import Annotation, Image
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, latest_annotation
from datatool.labels.labelstudio.formats import mask_to_results
from datatool.labels.labelstudio.sync import sync_from_export
from datatool.labels.matching import image_for_dicom, image_name

P = load_protocol()


@pytest.fixture()
def root(tmp_path, demo_dir) -> Path:
    """A copy of the demo's DICOM folder (tests put links into it)."""
    return Path(shutil.copytree(demo_dir / "dicom", tmp_path / "exams" / "dicom"))


@pytest.fixture()
def old_ws(ws, root):
    report = ingest(ws, [root], workers=0)
    assert report.ingested == 12 and not report.rejected
    add_rater(ws, "OLD")
    return ws


def _uid(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _mask(image: Image, k: int) -> np.ndarray:
    mask = np.zeros((image.rows, image.cols), np.uint8)
    mask[40 + k : 80 + k, 60:120] = 1
    mask[150:170, 200 + k : 240 + k] = 3
    return mask


def _task(tid: int, data: dict, mask: np.ndarray, **annotation) -> dict:
    ann = {"id": 1000 + tid, "result": mask_to_results(mask, P), **annotation}
    return {"id": tid, "project": 3, "data": data, "annotations": [ann]}


def _dicoms(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _images(ws, dicoms: list[Path]) -> list[Image]:
    with ws.session() as s:
        return [image_for_dicom(s, ws.key, p) for p in dicoms]


def _stored(ws) -> dict[int, str]:
    """image id -> mask hash of every label in the catalogue."""
    with ws.session() as s:
        return dict(s.execute(select(Annotation.image_id, Annotation.mask_hash)).all())


def _write(tmp_path: Path, export: list) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    return path


def test_fields_that_agree_name_the_image_and_only_disagreement_is_rejected(old_ws, root, tmp_path):
    """An old project's tasks name the image by its PNG, its DICOM path (from the server's
    document root and from the exam folder) and its SOP Instance UID: before, every such
    task was rejected ('several fields could name its DICOM image')."""
    dicoms = _dicoms(root)
    images = _images(old_ws, dicoms)
    rel = [str(p.relative_to(root)) for p in dicoms]
    export = [
        _task(
            n + 1,
            {
                "image": f"/data/local-files/?d=mnt/pacs/dicom/{rel[n]}",
                "dicom": rel[n],
                "sop": _uid(dicoms[n]),
                "png": f"/data/upload/3/{n}.png",
                "comment": "seen twice",
            },
            _mask(images[n], n),
        )
        for n in range(len(dicoms) - 1)
    ]
    last = len(dicoms) - 1
    export.append(  # the path names one image, the UID another: which one is it?
        _task(
            100,
            {"dicom": rel[last], "sop": _uid(dicoms[0])},
            _mask(images[last], last),
        )
    )
    report = sync_from_export(old_ws, "OLD", _write(tmp_path, export), dicom_root=root)
    assert (report.seen, report.new_versions) == (12, 11), report.rejected
    assert len(report.rejected) == 1
    item, reason = report.rejected[0]
    assert item == "task 100"
    assert "'dicom'" in reason and "'sop'" in reason and "\n" not in reason
    assert image_name(images[last].id) in reason and image_name(images[0].id) in reason
    stored = _stored(old_ws)
    assert images[last].id not in stored
    with old_ws.session() as s:
        rater = s.scalar(select(Annotation.rater_id))
        for n, image in enumerate(images[:last]):
            got = old_ws.store.get_array(latest_annotation(s, image.id, rater).mask_hash)
            np.testing.assert_array_equal(got, _mask(image, n))
    # --field picks the one field to trust: the UID names images[0], already stored
    again = sync_from_export(
        old_ws, "OLD", _write(tmp_path, export[-1:]), dicom_root=root, field="dicom"
    )
    assert (again.new_versions, again.rejected) == (1, [])


def test_a_field_that_names_no_image_beside_one_that_does_is_named(old_ws, root, tmp_path):
    dicoms = _dicoms(root)
    images = _images(old_ws, dicoms[:1])
    export = [
        _task(
            1,
            {"sop": _uid(dicoms[0]), "dicom": "nobody/nothing.dcm"},
            _mask(images[0], 0),
        )
    ]
    report = sync_from_export(old_ws, "OLD", _write(tmp_path, export), dicom_root=root)
    assert report.new_versions == 0
    ((item, reason),) = report.rejected
    assert item == "task 1" and "'dicom'" in reason and "no DICOM file" in reason
    assert _stored(old_ws) == {}


def test_an_annotation_of_another_task_is_not_stored(old_ws, root, tmp_path):
    dicoms = _dicoms(root)
    images = _images(old_ws, dicoms[:4])
    sop = [_uid(p) for p in dicoms[:4]]
    both = _task(4, {"sop": sop[3]}, _mask(images[3], 3), task=4)
    both["annotations"].append(  # a later annotation that names task 1: not this task's
        {
            "id": 2004,
            "task": 1,
            "updated_at": "2030-01-01T00:00:00Z",
            "result": mask_to_results(_mask(images[3], 9), P),
        }
    )
    export = [
        _task(1, {"sop": sop[0]}, _mask(images[0], 0), task=1),  # its own: stored
        _task(2, {"sop": sop[1]}, _mask(images[1], 1), task=1),  # names another task
        _task(3, {"sop": sop[2]}, _mask(images[2], 2), task=77),  # names no task here
        both,
    ]
    report = sync_from_export(old_ws, "OLD", _write(tmp_path, export), dicom_root=root)
    assert (report.seen, report.new_versions) == (4, 2)
    rejected = dict(report.rejected)
    assert len(rejected) == 3 == len(report.rejected), report.rejected
    two = rejected[f"task 2 ({image_name(images[1].id)}) annotation 1002"]
    assert "task 1" in two and "not stored" in two
    three = rejected[f"task 3 ({image_name(images[2].id)}) annotation 1003"]
    assert "task 77" in three and "not in this export" in three
    assert "task 1" in rejected[f"task 4 ({image_name(images[3].id)}) annotation 2004"]
    for reason in rejected.values():
        assert "\n" not in reason
    stored = _stored(old_ws)
    assert set(stored) == {images[0].id, images[3].id}
    # task 4 keeps its own annotation (the older one), not the later one of task 1
    assert np.array_equal(old_ws.store.get_array(stored[images[3].id]), _mask(images[3], 3))
    assert not [n for n in report.notes if "no annotation" in n[1]]


def test_paths_may_not_leave_the_dicom_root(old_ws, root, tmp_path):
    dicoms = _dicoms(root)
    images = _images(old_ws, dicoms[:6])
    rel = [str(p.relative_to(root)) for p in dicoms]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(dicoms[2], outside / "copy.dcm")
    (root / "out.dcm").symlink_to(outside / "copy.dcm")  # a link out of the root
    (root / "away").symlink_to(outside, target_is_directory=True)  # a folder link out
    (root / "in.dcm").symlink_to(dicoms[5])  # a link that stays inside: fine
    export = [
        _task(1, {"dicom": rel[0]}, _mask(images[0], 0)),
        _task(2, {"dicom": f"{rel[1].split('/')[0]}/../{rel[1]}"}, _mask(images[1], 1)),
        _task(3, {"dicom": str(dicoms[2])}, _mask(images[2], 2)),  # absolute, even inside
        _task(4, {"dicom": "out.dcm"}, _mask(images[2], 2)),
        _task(5, {"dicom": "away/copy.dcm"}, _mask(images[2], 2)),
        _task(6, {"dicom": "../exams/dicom/" + rel[3]}, _mask(images[3], 3)),
        _task(7, {"image": "/data/local-files/?d=../../" + rel[4]}, _mask(images[4], 4)),
        _task(8, {"dicom": "in.dcm"}, _mask(images[5], 5)),
    ]
    path = _write(tmp_path, export)
    report = sync_from_export(old_ws, "OLD", path, dicom_root=root)
    assert (report.seen, report.new_versions) == (8, 2), report.rejected
    rejected = dict(report.rejected)
    assert set(rejected) == {f"task {n}" for n in (2, 3, 4, 5, 6, 7)}, report.rejected
    assert "'..'" in rejected["task 2"] and "'..'" in rejected["task 6"]
    assert "'..'" in rejected["task 7"]
    assert "absolute" in rejected["task 3"]
    assert "link" in rejected["task 4"] and "link" in rejected["task 5"]
    for reason in rejected.values():
        assert "\n" not in reason and "--dicom-root" in reason
    assert set(_stored(old_ws)) == {images[0].id, images[5].id}


def test_cli_exit_1_one_line_each_and_the_rest_stored(old_ws, root, tmp_path, cli_env):
    dicoms = _dicoms(root)
    images = _images(old_ws, dicoms[:3])
    rel = [str(p.relative_to(root)) for p in dicoms]
    export = [
        _task(1, {"dicom": rel[0], "sop": _uid(dicoms[0])}, _mask(images[0], 0), task=1),
        _task(2, {"dicom": rel[1], "sop": _uid(dicoms[2])}, _mask(images[1], 1)),
        _task(3, {"dicom": "/" + rel[2]}, _mask(images[2], 2)),
        _task(4, {"sop": _uid(dicoms[2])}, _mask(images[2], 2), task=3),
    ]
    path = _write(tmp_path, export)
    args = ["sync", "labelstudio", "--rater", "OLD", "--export", str(path)]
    args += ["--dicom-root", str(root), "--workspace", str(old_ws.root)]
    proc = subprocess.run(
        [sys.executable, "-m", "datatool", *args], env=cli_env, capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rejected")]
    assert len(lines) == 3, proc.stderr
    assert any("task 2" in line and "'sop'" in line for line in lines)
    assert any("task 3" in line and "absolute" in line for line in lines)
    assert any("task 4" in line and "task 3" in line for line in lines)
    with old_ws.session() as s:
        assert s.scalar(select(func.count(Annotation.id))) == 1
    assert set(_stored(old_ws)) == {images[0].id}
