"""Label Studio push and sync against a real server (one for the whole session)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import httpx
import numpy as np
import pydicom
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from datatool.core.catalogue import (
    Annotation,
    AuditEntry,
    Image,
    LabelStudioProject,
    LabelStudioTask,
    Rater,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, latest_annotation
from datatool.labels.labelstudio.formats import mask_to_results
from datatool.labels.labelstudio.push import annotate, push
from datatool.labels.labelstudio.sync import sync_from_export, sync_from_server
from datatool.labels.matching import image_for_dicom, image_name
from tests.memory import run_measured

P = load_protocol()


@pytest.fixture()
def demo_ws(ws, demo_dir):
    report = ingest(ws, [demo_dir / "dicom"], workers=0)
    assert report.ingested == 12 and not report.rejected
    return ws


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def _images(ws) -> list[Image]:
    with ws.session() as s:
        return list(s.scalars(select(Image).order_by(Image.id)))


def _mask(image: Image, seed: int = 0) -> np.ndarray:
    """Every structure, a hole, a single pixel, a region on the image's edge."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((image.rows, image.cols), np.uint8)
    y, x = int(rng.integers(60, 120)), int(rng.integers(60, 120))
    mask[y : y + 40, x : x + 50] = 1
    mask[y + 10 : y + 20, x + 10 : x + 20] = 0  # hole
    mask[y : y + 40, x + 50 : x + 70] = 2  # touching the femur
    mask[200:230, 300:340] = 3
    mask[250, 250] = 4  # single pixel
    mask[image.rows - 10 :, :40] = 6  # on the bottom-left corner
    return mask


def _tasks(ls, project_id) -> dict[int, dict]:
    return {t.id: t.data for t in ls.tasks.list(project=project_id, fields="all")}


def _task_for(ws, project_id: int) -> dict[int, int]:
    """image id -> task id, as the catalogue records it."""
    with ws.session() as s:
        row = s.scalar(
            select(LabelStudioProject).where(LabelStudioProject.project_id == project_id)
        )
        return dict(
            s.execute(
                select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                    LabelStudioTask.project_id == row.id
                )
            ).all()
        )


def test_push_creates_the_raters_project_and_is_idempotent(demo_ws, labelstudio_server, ls):
    srv = labelstudio_server
    add_rater(demo_ws, "AN1")
    result = push(demo_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert result.project_created and result.tasks_created == 12
    pid = result.project_id
    project = ls.projects.get(pid)
    assert project.label_config.strip() == P.labelstudio_config().strip()
    assert project.title == "AN1 (anterior_sciatic)"
    tasks = _tasks(ls, pid)
    assert len(tasks) == 12
    images = {i.id: i for i in _images(demo_ws)}
    mapping = _task_for(demo_ws, pid)
    for image_id, task_id in mapping.items():
        name = image_name(image_id)
        assert tasks[task_id] == {
            "image": f"/data/local-files/?d=datatool/{pid}/{name}.png",
            "image_id": name,
        }
    # the server serves the store's PNG to whoever holds a token
    image_id, task_id = next(iter(mapping.items()))
    got = httpx.get(
        srv.url + tasks[task_id]["image"], headers={"Authorization": f"Token {srv.token}"}
    )
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == demo_ws.store.path_for(images[image_id].store_hash).read_bytes()
    assert httpx.get(srv.url + tasks[task_id]["image"]).status_code in (401, 403)
    # re-push adds nothing
    again = push(demo_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert (again.project_id, again.tasks_created, again.already_pushed) == (pid, 0, 12)
    assert not again.project_created and len(_tasks(ls, pid)) == 12
    # a push cut between the server and the catalogue: the tasks are recognised, not doubled
    with demo_ws.session() as s:
        s.query(LabelStudioTask).filter(LabelStudioTask.image_id.in_(list(mapping)[:3])).delete()
    healed = push(demo_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert (healed.tasks_created, healed.recovered) == (0, 3)
    assert _task_for(demo_ws, pid) == mapping and len(_tasks(ls, pid)) == 12


def test_round_trip_versions_skips_and_empty(demo_ws, labelstudio_server, ls):
    srv = labelstudio_server
    add_rater(demo_ws, "AN1")
    images = _images(demo_ws)[:4]
    pid = push(
        demo_ws,
        "AN1",
        url=srv.url,
        token=srv.token,
        local_root=srv.local_root,
        image_ids=[i.id for i in images],
    ).project_id
    tasks = _task_for(demo_ws, pid)
    first, skipped, empty, untouched = images
    mask = _mask(first)
    aid = annotate(srv.url, srv.token, pid, tasks[first.id], mask, P)
    annotate(
        srv.url,
        srv.token,
        pid,
        tasks[skipped.id],
        np.zeros((1, 1), np.uint8),
        P,
        was_cancelled=True,
    )
    annotate(
        srv.url, srv.token, pid, tasks[empty.id], np.zeros((empty.rows, empty.cols), np.uint8), P
    )
    report = sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token)
    assert (report.seen, report.new_versions, report.unchanged) == (4, 1, 0)
    notes = dict(report.notes)
    assert (
        "cancelled" in notes[f"project {pid} task {tasks[skipped.id]} ({image_name(skipped.id)})"]
    )
    # a task not annotated yet is no note of its own: counted, listed with --verbose
    assert report.not_annotated == [
        f"project {pid} task {tasks[untouched.id]} ({image_name(untouched.id)})"
    ]
    assert len(notes) == 1
    [(item, reason)] = report.rejected  # submitted with nothing drawn
    assert str(tasks[empty.id]) in item and "empty" in reason and report.exit_code == 1
    with demo_ws.session() as s:
        stored = latest_annotation(s, first.id, s.scalar(select(Annotation.rater_id)))
        assert (stored.version, stored.source) == (1, "labelstudio")
        assert stored.source_ref == f"project {pid} task {tasks[first.id]} annotation {aid}"
        np.testing.assert_array_equal(demo_ws.store.get_array(stored.mask_hash), mask)
    # re-sync changes nothing; --allow-empty keeps the empty one
    again = sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token, allow_empty=True)
    assert (again.new_versions, again.unchanged, again.rejected) == (1, 1, [])
    # the rater edits the annotation: version 2
    changed = mask.copy()
    changed[5:9, 5:9] = 3
    ls.annotations.update(aid, result=mask_to_results(changed, P))
    third = sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token, allow_empty=True)
    assert (third.new_versions, third.unchanged) == (1, 1)
    with demo_ws.session() as s:
        stored = latest_annotation(s, first.id, s.scalar(select(Annotation.rater_id)))
        assert stored.version == 2
        np.testing.assert_array_equal(demo_ws.store.get_array(stored.mask_hash), changed)


def test_unknown_labels_foreign_and_deleted_tasks_are_reported(demo_ws, labelstudio_server, ls):
    srv = labelstudio_server
    add_rater(demo_ws, "AN1")
    images = _images(demo_ws)[:4]
    pid = push(
        demo_ws,
        "AN1",
        url=srv.url,
        token=srv.token,
        local_root=srv.local_root,
        image_ids=[i.id for i in images],
    ).project_id
    tasks = _task_for(demo_ws, pid)
    bad, good, swapped, deleted = images
    results = mask_to_results(_mask(bad), P)
    results[0]["value"]["brushlabels"] = ["tibia"]
    ls.annotations.create(tasks[bad.id], result=results)
    annotate(srv.url, srv.token, pid, tasks[good.id], _mask(good, 1), P)
    foreign = ls.projects.import_tasks(
        pid, request=[{"data": {"image": "/x.png"}}], return_task_ids=True
    ).task_ids[0]
    ls.tasks.update(str(tasks[swapped.id]), data={"image": "/y.png", "image_id": "img999999"})
    ls.tasks.delete(str(tasks[deleted.id]))
    report = sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token)
    assert report.new_versions == 1 and report.seen == 4
    rejected = dict(report.rejected)
    assert (
        "unknown label 'tibia'"
        in rejected[f"project {pid} task {tasks[bad.id]} ({image_name(bad.id)})"]
    )
    assert "not a task datatool pushed" in rejected[f"project {pid} task {foreign}"]
    assert "img999999" in rejected[f"project {pid} task {tasks[swapped.id]}"]
    assert len(rejected) == 3 and report.exit_code == 1
    assert (
        dict(report.notes)[f"project {pid} task {tasks[deleted.id]} ({image_name(deleted.id)})"]
        == "recorded by datatool but deleted on the server"
    )
    # push reports the deleted task and does not re-create it
    again = push(
        demo_ws,
        "AN1",
        url=srv.url,
        token=srv.token,
        local_root=srv.local_root,
        image_ids=[i.id for i in images],
    )
    assert again.missing_on_server == [tasks[deleted.id]] and again.tasks_created == 0


def test_one_project_per_rater(demo_ws, labelstudio_server, ls):
    srv = labelstudio_server
    add_rater(demo_ws, "AN1")
    add_rater(demo_ws, "AN2")
    kw = {"url": srv.url, "token": srv.token, "local_root": srv.local_root, "image_ids": [1, 2]}
    a = push(demo_ws, "AN1", **kw).project_id
    b = push(demo_ws, "AN2", title="second rater", **kw).project_id
    assert a != b and ls.projects.get(b).title == "second rater"
    with pytest.raises(DatatoolError, match=f"project {a} belongs to rater AN1.*double-blind"):
        push(demo_ws, "AN2", project_id=a, **kw)
    with pytest.raises(DatatoolError, match=f"project {b} belongs to rater AN2, not AN1"):
        sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token, project_id=b)
    # a rater keeps one project unless asked for another
    spare = ls.projects.create(title="spare", label_config=P.labelstudio_config()).id
    with pytest.raises(DatatoolError, match=f"AN1 already has Label Studio project {a}"):
        push(demo_ws, "AN1", project_id=spare, **kw)
    assert push(demo_ws, "AN1", **kw).project_id == a
    with pytest.raises(DatatoolError, match=r"was not pushed by datatool"):
        sync_from_server(demo_ws, "AN1", url=srv.url, token=srv.token, project_id=spare)
    add_rater(demo_ws, "AN3")
    adopted = push(demo_ws, "AN3", project_id=spare, **kw)  # an empty project may be adopted
    assert adopted.project_id == spare and adopted.tasks_created == 2
    used = ls.projects.create(title="used", label_config=P.labelstudio_config()).id
    ls.projects.import_tasks(used, request=[{"data": {"image": "/z.png"}}])
    add_rater(demo_ws, "AN4")
    with pytest.raises(DatatoolError, match=r"already holds tasks that datatool did not push"):
        push(demo_ws, "AN4", project_id=used, **kw)
    second = push(demo_ws, "AN1", new_project=True, **kw)
    assert second.project_created and second.project_id not in (a, b)
    with demo_ws.session() as s:
        owners = {row.project_id: row.rater.name for row in s.scalars(select(LabelStudioProject))}
    assert owners == {a: "AN1", b: "AN2", spare: "AN3", second.project_id: "AN1"}


def test_upload_serving(demo_ws, labelstudio_server, ls):
    srv = labelstudio_server
    add_rater(demo_ws, "UP1")
    image = _images(demo_ws)[5]
    result = push(
        demo_ws, "UP1", url=srv.url, token=srv.token, serve="upload", image_ids=[image.id]
    )
    assert result.tasks_created == 1
    [data] = _tasks(ls, result.project_id).values()
    assert set(data) == {"image", "image_id"} and data["image_id"] == image_name(image.id)
    assert data["image"].startswith(f"/data/upload/{result.project_id}/")
    got = httpx.get(srv.url + data["image"], headers={"Authorization": f"Token {srv.token}"})
    assert got.content == demo_ws.store.path_for(image.store_hash).read_bytes()
    assert (
        push(
            demo_ws, "UP1", url=srv.url, token=srv.token, serve="upload", image_ids=[image.id]
        ).tasks_created
        == 0
    )


def test_connection_errors_say_what_to_do(demo_ws, labelstudio_server, tmp_path, monkeypatch):
    srv = labelstudio_server
    add_rater(demo_ws, "AN1")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    with pytest.raises(UsageError, match=r"--url or set LABEL_STUDIO_URL"):
        push(demo_ws, "AN1", token="x", local_root=srv.local_root)
    with pytest.raises(UsageError, match=r"--local-root"):
        push(demo_ws, "AN1", url=srv.url, token=srv.token)
    with pytest.raises(DatatoolError, match=r"cannot reach the Label Studio server of --url"):
        push(demo_ws, "AN1", url="http://127.0.0.1:9", token=srv.token, local_root=srv.local_root)
    bad_token = "f" * 40
    with pytest.raises(DatatoolError, match=r"refused the token") as info:
        push(demo_ws, "AN1", url=srv.url, token=bad_token, local_root=srv.local_root)
    assert bad_token not in str(info.value)
    elsewhere = tmp_path / "not-the-root"
    elsewhere.mkdir()
    with pytest.raises(DatatoolError, match=r"will not serve.*--serve upload"):
        push(demo_ws, "AN1", url=srv.url, token=srv.token, local_root=elsewhere, image_ids=[1])
    inside = srv.local_root / "sub"
    inside.mkdir()
    with pytest.raises(DatatoolError, match=r"does not serve.*no tasks were created"):
        push(demo_ws, "AN1", url=srv.url, token=srv.token, local_root=inside, image_ids=[1])


def test_sync_from_export_matches_dicom_files(demo_ws, demo_dir):
    add_rater(demo_ws, "OLD")
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))
    with demo_ws.session() as s:
        images = [image_for_dicom(s, demo_ws.key, p) for p in dicoms[:5]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uid = str(pydicom.dcmread(dicoms[2], stop_before_pixels=True).SOPInstanceUID)
    masks = [_mask(i, n) for n, i in enumerate(images)]

    def task(tid, data, mask=None, cancelled=False):
        ann = {
            "id": 100 + tid,
            "project": 7,
            "was_cancelled": cancelled,
            "updated_at": "2024-05-01T10:00:00.000000Z",
            "result": [] if mask is None else mask_to_results(mask, P, "tag", "img"),
        }
        older = {
            "id": 50 + tid,
            "was_cancelled": False,
            "updated_at": "2024-04-01T10:00:00Z",
            "result": mask_to_results(np.ones_like(masks[0]), P),
        }
        return {
            "id": tid,
            "data": data,
            "annotations": [older, ann] if mask is not None else ([ann] if cancelled else []),
            "project": 7,
        }

    rel = [str(p.relative_to(demo_dir / "dicom")) for p in dicoms]
    export = [
        task(1, {"image": "/data/local-files/?d=pngs/a.png", "dicom": rel[0]}, masks[0]),
        task(2, {"image": "/data/upload/7/b.png", "file": str(dicoms[1])}, masks[1]),  # absolute
        task(3, {"image": "/data/upload/7/c.png", "sop": uid}, masks[2]),
        task(4, {"image": f"/data/local-files/?d=archive/dicom/{rel[3]}"}, masks[3]),
        task(5, {"image": "/data/upload/7/e.png", "dicom": rel[4]}, cancelled=True),
        task(6, {"image": "/data/upload/7/f.png", "dicom": "nobody/nothing.dcm"}, masks[0]),
        task(7, {"image": "/data/upload/7/g.png"}, masks[0]),
        task(8, {"image": "/data/upload/7/h.png", "dicom": rel[0]}, masks[0]),  # duplicate
    ]
    path = demo_dir.parent / "export.json"
    path.write_text(json.dumps(export))
    report = sync_from_export(demo_ws, "OLD", path, dicom_root=demo_dir / "dicom")
    assert (report.seen, report.new_versions) == (8, 3)
    rejected = dict(report.rejected)
    assert "absolute path" in rejected["task 2"]  # paths are relative to --dicom-root only
    assert "no DICOM file" in rejected["task 6"]
    assert "pass --field" in rejected["task 7"]
    assert "already labels the same image" in rejected[f"task 8 ({image_name(images[0].id)})"]
    assert "cancelled" in dict(report.notes)[f"task 5 ({image_name(images[4].id)})"]
    with demo_ws.session() as s:
        rater_id = s.scalar(select(Annotation.rater_id))
        for n, (image, mask) in enumerate(zip(images[:4], masks)):
            stored = latest_annotation(s, image.id, rater_id)
            if n == 1:
                assert stored is None
                continue
            np.testing.assert_array_equal(demo_ws.store.get_array(stored.mask_hash), mask)
        refs = sorted(s.scalars(select(Annotation.source_ref)))
        assert refs == [f"export project 7 task {t} annotation {100 + t}" for t in (1, 3, 4)]
    again = sync_from_export(demo_ws, "OLD", path, dicom_root=demo_dir / "dicom", field="dicom")
    assert again.new_versions == 0 and again.unchanged == 1  # tasks 1 (and 8, a duplicate)
    assert "no field 'dicom'" in dict(again.rejected)["task 2"]


def test_cli_push_sync_and_no_token_anywhere(demo_ws, labelstudio_server, ls, cli_env):
    srv = labelstudio_server
    add_rater(demo_ws, "CLI1")
    env = {
        **cli_env,
        "LABEL_STUDIO_URL": srv.url,
        "LABEL_STUDIO_API_KEY": srv.token,
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(srv.local_root),
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "datatool", *args, "-w", str(demo_ws.root)],
            capture_output=True,
            text=True,
            env=env,
        )

    res = run("labelstudio", "push", "--rater", "CLI1", "--images", "1,img000002,3", "--json")
    assert res.returncode == 0, res.stderr
    pushed = json.loads(res.stdout)
    assert pushed["tasks_created"] == 3
    table = run("labelstudio", "push", "--rater", "CLI1", "--images", "1,2,3")
    assert table.returncode == 0 and "already pushed" in table.stdout
    tasks = _task_for(demo_ws, pushed["project_id"])
    images = {i.id: i for i in _images(demo_ws)}
    annotate(srv.url, srv.token, pushed["project_id"], tasks[1], _mask(images[1]), P)
    results = mask_to_results(_mask(images[2]), P)
    results[1]["value"]["brushlabels"] = ["spleen"]
    ls.annotations.create(tasks[2], result=results)
    res = run("sync", "labelstudio", "--rater", "CLI1", "--json")
    assert res.returncode == 1
    data = json.loads(res.stdout)
    assert data["new_versions"] == 1 and len(data["rejected"]) == 1
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("rejected:")]
    assert f"task {tasks[2]}" in line and "spleen" in line
    people = run("sync", "labelstudio", "--rater", "CLI1")
    assert people.returncode == 1 and "unchanged" in people.stdout
    usage = run("sync", "labelstudio", "--rater", "CLI1", "--dicom-root", "/tmp")
    assert usage.returncode == 2
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "datatool",
            "sync",
            "labelstudio",
            "--rater",
            "CLI1",
            "-w",
            str(demo_ws.root),
        ],
        capture_output=True,
        text=True,
        env={**env, "LABEL_STUDIO_API_KEY": "0" * 40},
    )
    assert bad.returncode == 1 and "refused the token" in bad.stderr
    outputs = "".join(r.stdout + r.stderr for r in (res, table, people, usage, bad))
    assert srv.token not in outputs and srv.url not in outputs
    # the token nowhere in the workspace: catalogue (with its WAL), audit log, store; the URL
    # only as the rater's recorded server (raters.labelstudio_url), never in the store
    for f in demo_ws.root.rglob("*"):
        if f.is_file():
            assert srv.token.encode() not in f.read_bytes(), f
            if not f.name.startswith("catalogue.sqlite"):
                assert srv.url.encode() not in f.read_bytes(), f
    with demo_ws.session() as s:
        assert s.scalar(select(Rater.labelstudio_url).where(Rater.name == "CLI1")) == srv.url
    with demo_ws.session() as s:
        entries = list(s.scalars(select(AuditEntry)))
        assert {"labelstudio push", "sync labelstudio"} <= {a.command for a in entries}
        assert srv.token not in json.dumps([a.details for a in entries])


def _uid(path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _rle_bomb(values: int = 10**9, records: int = 64) -> list[int]:
    """A brush RLE whose 32-bit header claims ``values`` values, followed by ``records``
    runs of 65536 bytes of 255 each (27 bits a run): a few KB that a decoder trusting the
    header turns into ``values`` bytes of memory, every page written."""
    bits = f"{values:032b}{7:05b}" + f"{15:04b}" * 4  # 8-bit words, 16-bit run lengths
    bits += ("1" + "11" + f"{0xFFFF:016b}" + f"{255:08b}") * records
    bits += "0" * (-len(bits) % 8)
    return [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]


def test_a_hostile_export_rejects_bad_tasks_one_line_each_and_keeps_the_rest(demo_ws, demo_dir):
    add_rater(demo_ws, "OLD")
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))
    with demo_ws.session() as s:
        images = [image_for_dicom(s, demo_ws.key, p) for p in dicoms[:2]]
    good = {
        "id": 1,
        "data": {"sop": _uid(dicoms[0])},
        "annotations": [{"id": 11, "result": mask_to_results(_mask(images[0]), P)}],
    }
    brush = {
        "type": "brushlabels",
        "original_width": images[1].cols,
        "original_height": images[1].rows,
        "value": {"format": "rle", "rle": _rle_bomb(), "brushlabels": ["femur"]},
    }

    def bad(tid, **annotation):
        return {"id": tid, "data": {"sop": _uid(dicoms[1])}, "annotations": [annotation]}

    export = [
        good,
        bad(2, id=12, result=[{**brush, "value": [1, 2, 3]}]),  # a value that is a list
        bad(3, id=13, result=[{**brush, "original_width": "abc"}]),
        bad(4, id="fourteen", result=[]),  # a non-numeric annotation id
        {"id": 5, "data": {}, "annotations": ["not an object"]},
        "DEEP",  # replaced by a task nested far deeper than any parser recursion
        7,  # not an object at all
        bad(8, id=18, result=[brush]),  # an RLE that claims 10^9 values
    ]
    deep = '{"id": 6, "data": ' + "[" * 20000 + "]" * 20000 + "}"
    path = demo_dir.parent / "hostile.json"
    path.write_text(json.dumps(export).replace('"DEEP"', deep))
    report = sync_from_export(demo_ws, "OLD", path)
    assert (report.seen, report.new_versions) == (8, 1)
    rejected = dict(report.rejected)
    assert len(report.rejected) == 7 == len(rejected), report.rejected
    assert "annotations.0.result.0.value" in rejected["task 2"]
    assert "original_width" in rejected["task 3"]
    assert "annotations.0.id" in rejected["task 4"]
    assert "annotations.0" in rejected["task 5"]
    assert "nested" in rejected["task #6"] and "not an object" in rejected["task #7"]
    bomb = rejected[f"task 8 ({image_name(images[1].id)})"]
    assert "declares 1000000000 values" in bomb and "not decoded" in bomb
    for reason in rejected.values():
        assert "\n" not in reason and "abc" not in reason and "fourteen" not in reason


def test_peak_memory_of_an_rle_bomb_is_bounded_by_the_image(demo_ws, demo_dir, cli_env):
    """A 257 KB export whose RLE header claims 10^9 values once took 1.27 GB: now the RLE
    is refused before decoding, and the command's peak memory stays near a run on a good
    export (the image is 4 x its pixels in RGBA, a few MB at most)."""
    add_rater(demo_ws, "OLD")
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))
    with demo_ws.session() as s:
        image = image_for_dicom(s, demo_ws.key, dicoms[0])
    results = mask_to_results(_mask(image), P)
    good = [{"id": 1, "data": {"sop": _uid(dicoms[0])}, "annotations": [{"result": results}]}]
    bomb_rle = _rle_bomb(records=16_000)  # 54 KB of RLE runs that cover 10^9 bytes
    bomb = [{**good[0], "annotations": [{"result": [{**results[0], "value": {
        "format": "rle", "rle": bomb_rle, "brushlabels": ["femur"]}}]}]}]  # fmt: skip
    paths = {}
    for name, export in (("good", good), ("bomb", bomb)):
        paths[name] = demo_dir.parent / f"{name}-export.json"
        paths[name].write_text(json.dumps(export))

    def run(path):
        cmd = [sys.executable, "-m", "datatool", "sync", "labelstudio", "--rater", "OLD"]
        cmd += ["--export", str(path), "--workspace", str(demo_ws.root)]
        return run_measured(cmd, cli_env)

    baseline, res = run(paths["good"]), run(paths["bomb"])
    assert baseline.returncode == 0, baseline.stderr
    assert res.returncode == 1 and "not decoded" in res.stderr and "Traceback" not in res.stderr
    rgba_mib = image.rows * image.cols * 4 / 1024**2
    assert res.peak_mib < baseline.peak_mib + 4 * rgba_mib + 32, (res.peak_mib, baseline.peak_mib)


KILL_COUNTS = {
    "annotations": "select count(*) from annotations",
    "highest version": "select coalesce(max(version), 0) from annotations",
    "structure stats": "select count(*) from structure_stats",
}


def test_kill_9_at_20_moments_then_a_rerun_matches_an_uninterrupted_export_sync(demo_dir, tmp_path):
    from datatool.core.workspace import init_workspace, open_workspace
    from datatool.labels.itksnap.formats import read_label_map
    from tests.interrupt import kill_and_rerun

    base = init_workspace(tmp_path / "base").root
    ws = open_workspace(base)
    ingest(ws, [demo_dir / "dicom"], workers=0)
    add_rater(ws, "OLD")
    ws.close()
    tasks = []  # 4 tasks: brush RLE decodes in pure Python, and 20 moments reuse them
    labels = sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[:4]
    for n, label in enumerate(labels, 1):
        dicom = demo_dir / "dicom" / str(label.relative_to(demo_dir / "labels" / "rater1"))
        dicom = dicom.with_name(dicom.name.replace(".nii.gz", ".dcm"))
        results = mask_to_results(read_label_map(label).astype(np.uint8), P)
        tasks.append(
            {"id": n, "data": {"sop": _uid(dicom)}, "annotations": [{"id": n, "result": results}]}
        )
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))

    def sync(root):
        def work():
            opened = open_workspace(root)
            sync_from_export(opened, "OLD", export)
            opened.close()

        return work

    expected = kill_and_rerun(base, sync, KILL_COUNTS, tmp_path, 20261204)
    assert expected == {"annotations": 4, "highest version": 1, "structure stats": 20}


def test_kill_9_at_20_moments_then_a_rerun_matches_an_uninterrupted_server_sync(
    demo_dir, tmp_path, labelstudio_server
):
    """The same as for an export, for a sync that reads the rater's project from the server
    (sync only reads the server, so every copy of the workspace syncs the same project)."""
    from datatool.core.workspace import init_workspace, open_workspace
    from datatool.labels.itksnap.formats import read_label_map
    from tests.interrupt import kill_and_rerun

    srv = labelstudio_server
    base = init_workspace(tmp_path / "base").root
    ws = open_workspace(base)
    ingest(ws, [demo_dir / "dicom"], workers=0)
    add_rater(ws, "KILL")
    images = _images(ws)[:4]
    pid = push(
        ws, "KILL", url=srv.url, token=srv.token, local_root=srv.local_root,
        image_ids=[i.id for i in images],
    ).project_id  # fmt: skip
    tasks = _task_for(ws, pid)
    labels = {}  # rater1's demo label map of each pushed image
    for label in (demo_dir / "labels" / "rater1").rglob("*.nii.gz"):
        dicom = demo_dir / "dicom" / str(label.relative_to(demo_dir / "labels" / "rater1"))
        with ws.session() as s:
            image = image_for_dicom(
                s, ws.key, dicom.with_name(dicom.name[: -len(".nii.gz")] + ".dcm")
            )
        labels[image.id] = read_label_map(label).astype(np.uint8)
    for image in images:
        annotate(srv.url, srv.token, pid, tasks[image.id], labels[image.id], P)
    ws.close()

    def sync(root):
        def work():
            opened = open_workspace(root)
            sync_from_server(opened, "KILL", url=srv.url, token=srv.token)
            opened.close()

        return work

    expected = kill_and_rerun(base, sync, KILL_COUNTS, tmp_path, 20261202)
    assert expected["annotations"] == 4 and expected["highest version"] == 1
    assert expected["structure stats"] >= 4


def test_long_free_text_fields_are_ignored_and_never_quoted_whole(demo_ws, demo_dir, cli_env):
    """A comment of 311 characters beside the image reference once aborted the whole export
    sync, and the error line quoted the field (a 50 MB field: a 50 MB line). Fields that are
    not the image reference are ignored; a message quotes at most a short escaped excerpt."""
    add_rater(demo_ws, "OLD")
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))
    with demo_ws.session() as s:
        images = [image_for_dicom(s, demo_ws.key, p) for p in dicoms[:3]]
    rel = [str(p.relative_to(demo_dir / "dicom")) for p in dicoms]
    comment = "The nerve is hard to see here; " * 10 + "x"  # 311 characters
    huge = "y" * 50_000_000

    def task(tid, data, mask):
        return {"id": tid, "data": data,
                "annotations": [{"id": 100 + tid, "result": mask_to_results(mask, P)}]}  # fmt: skip

    export = [
        task(1, {"dicom": rel[0], "comment": comment}, _mask(images[0], 0)),
        task(2, {"dicom": rel[1], "notes": huge, "more": "z" * 5000 + "/"}, _mask(images[1], 1)),
        task(3, {"sop": _uid(dicoms[2]), "text\n" * 100: "w" * 400}, _mask(images[2], 2)),
        task(4, {"comment": huge}, _mask(images[0], 3)),  # nothing names an image
        task(5, {"dicom": huge + ".dcm"}, _mask(images[0], 4)),  # a name too long for a file
    ]
    assert len(comment) == 311
    path = demo_dir.parent / "long-fields.json"
    path.write_text(json.dumps(export))
    res = subprocess.run(
        [sys.executable, "-m", "datatool", "sync", "labelstudio", "--rater", "OLD", "--export",
         str(path), "--dicom-root", str(demo_dir / "dicom"), "--json",
         "--workspace", str(demo_ws.root)],
        capture_output=True, text=True, env=cli_env,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr[:2000]
    assert len(res.stdout) + len(res.stderr) < 5000, (len(res.stdout), len(res.stderr))
    data = json.loads(res.stdout)
    assert (data["seen"], data["new_versions"]) == (5, 3), data
    lines = res.stderr.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["task 4", "task 5"], lines
    assert all(len(line) < 400 for line in lines), lines
    assert "no field names a DICOM file" in lines[0] and "'comment'" in lines[0]
    assert "no field names a DICOM file" in lines[1] and "'dicom'" in lines[1]
    # named with --field, a reference too long for any file is quoted as a short excerpt
    report = sync_from_export(demo_ws, "OLD", path, demo_dir / "dicom", field="dicom")
    (reason,) = [r for i, r in report.rejected if i == "task 5"]
    assert reason.startswith("no DICOM file ") and reason.endswith(" characters) to match it to")
    assert len(reason) < 400
    three = dict(report.rejected)["task 3"]
    assert three.startswith("its data has no field 'dicom' (fields: 'sop', 'text\\ntext")
    assert three.endswith("... (500 characters))")


def test_export_sync_knows_handed_out_drafts_and_refuses_copies(demo_ws, demo_dir):
    """A label equal to a draft handed to the rater keeps the draft's provenance though
    the annotation names no prediction; one identical to another rater's current label is
    refused as a copy (one line), stored with --allow-copy and a reason (audited)."""
    from datatool.core.catalogue import AuditEntry, Rater
    from datatool.labels.annotations import get_rater, store_annotation
    from datatool.labels.handouts import record_handouts

    add_rater(demo_ws, "OLD")
    add_rater(demo_ws, "OTHER")
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))[:3]
    with demo_ws.session() as s:
        images = [image_for_dicom(s, demo_ws.key, p) for p in dicoms]
        masks = [_mask(image, k) for k, image in enumerate(images)]
        store_annotation(s, demo_ws.store, images[0], get_rater(s, "OTHER"), masks[0],
                         "itksnap", None, P)  # fmt: skip
        draft = demo_ws.store.put_array(masks[1])
        record_handouts(
            s, get_rater(s, "OLD").id, "labelstudio", [(images[1].id, None, "m-1", draft)]
        )
    export = [
        {"id": t + 1, "data": {"sop": _uid(d)},
         "annotations": [{"id": 10 + t, "result": mask_to_results(m, P)}]}
        for t, (d, m) in enumerate(zip(dicoms, masks))
    ]  # fmt: skip
    path = demo_dir.parent / "copies.json"
    path.write_text(json.dumps(export))
    report = sync_from_export(demo_ws, "OLD", path)
    assert (report.new_versions, len(report.rejected)) == (2, 1), report.as_dict()
    item, reason = report.rejected[0]
    assert item == f"task 1 ({image_name(images[0].id)})"
    assert "a copy breaks the double-blind" in reason and "--allow-copy REASON" in reason
    with demo_ws.session() as s:
        rater = get_rater(s, "OLD")
        drafted = latest_annotation(s, images[1].id, rater.id)
        assert (drafted.draft_version, drafted.draft_hash, drafted.draft_unchanged) == (
            "m-1", draft, True)  # fmt: skip
        assert latest_annotation(s, images[2].id, rater.id).draft_version is None
        assert latest_annotation(s, images[0].id, rater.id) is None
    forced = sync_from_export(demo_ws, "OLD", path, allow_copy="migrated from the old tool")
    assert (forced.new_versions, forced.unchanged, forced.rejected) == (1, 2, [])
    with demo_ws.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "copy allowed")).one()
        assert entry.command == "sync labelstudio"
        assert entry.details["reason"] == "migrated from the old tool"
        assert entry.details["copied_from"] == ["OTHER"]
        assert s.scalar(select(Rater.id).where(Rater.name == "OLD")) is not None
