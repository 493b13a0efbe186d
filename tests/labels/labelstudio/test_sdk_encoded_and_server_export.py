"""Label Studio masks that datatool did not encode, against the running server.

The rater's brush strokes are played by the SDK's own encoder
(``label_studio_sdk.converter.brush.image2annotation``: a PNG of each structure in, a whole
result entry out), not by datatool's ``mask_to_results``. Once through datatool's push and
sync from the server; once through a project made on the server without datatool (tasks
naming their DICOM files), exported by the server's own export API, and synced from that
file. Every stored label map must be the drawn one, pixel for pixel."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import image2annotation
from PIL import Image as PILImage
from sqlalchemy import select

from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, latest_annotation
from datatool.labels.labelstudio.push import push
from datatool.labels.labelstudio.sync import sync_from_export, sync_from_server
from datatool.labels.matching import image_for_dicom

P = load_protocol()


@pytest.fixture()
def demo_ws(ws, demo_dir):
    assert ingest(ws, [demo_dir / "dicom"], workers=0).ingested == 12
    return ws


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def drawn_mask(rows: int, cols: int, seed: int) -> np.ndarray:
    """Every structure: a ring (with its hole), a diagonal stroke, a lone pixel, a block on
    the image's edges, a thin line; shifted by ``seed``."""
    m = np.zeros((rows, cols), np.uint8)
    y, x = 40 + 7 * seed, 60 + 11 * seed
    m[y : y + 50, x : x + 60] = 1
    m[y + 15 : y + 30, x + 20 : x + 35] = 0  # the femur's hole
    for k in range(40):
        m[y + 60 + k, x + k : x + k + 3] = 2  # a diagonal stroke
    m[300, 400 + seed] = 3  # one pixel of nerve
    m[200:240, 300:330] = 3
    m[rows - 12 :, cols - 30 :] = 4  # the bottom right corner
    m[150, 10:200] = 6  # a one-pixel line
    return m


def sdk_results(mask: np.ndarray, tmp_path, from_name="label", to_name="image") -> list[dict]:
    """The SDK's result entries for a label map: one PNG per structure through
    ``image2annotation`` (which thresholds at 128)."""
    results = []
    for s in P.structures:
        if not (mask == s.value).any():
            continue
        png = tmp_path / f"structure-{s.value}.png"
        PILImage.fromarray(np.where(mask == s.value, 255, 0).astype(np.uint8)).save(png)
        results += image2annotation(str(png), s.name, from_name, to_name)["result"]
    return results


def stored_mask(ws, image_id: int, rater: str) -> np.ndarray:
    with ws.session() as s:
        ann = latest_annotation(s, image_id, get_rater(s, rater).id)
        return ws.store.get_array(ann.mask_hash)


def test_sdk_encoded_annotations_come_back_through_push_and_sync(
    demo_ws, labelstudio_server, ls, tmp_path
):
    srv = labelstudio_server
    add_rater(demo_ws, "SDK1")
    pushed = push(demo_ws, "SDK1", url=srv.url, token=srv.token, local_root=srv.local_root,
                  image_ids=[1, 2, 3])  # fmt: skip
    with demo_ws.session() as s:
        project = s.scalar(
            select(LabelStudioProject).where(LabelStudioProject.project_id == pushed.project_id)
        )
        tasks = dict(
            s.execute(
                select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                    LabelStudioTask.project_id == project.id
                )
            ).all()
        )
        images = {i.id: (i.rows, i.cols) for i in s.scalars(select(Image))}
    drawn = {}
    for seed, (image_id, task_id) in enumerate(sorted(tasks.items())):
        drawn[image_id] = drawn_mask(*images[image_id], seed)
        ls.annotations.create(task_id, result=sdk_results(drawn[image_id], tmp_path))
    report = sync_from_server(demo_ws, "SDK1", url=srv.url, token=srv.token)
    assert (report.new_versions, report.rejected) == (3, [])
    for image_id, mask in drawn.items():
        np.testing.assert_array_equal(stored_mask(demo_ws, image_id, "SDK1"), mask)


def test_a_project_made_without_datatool_exported_by_the_server(
    demo_ws, demo_dir, labelstudio_server, ls, tmp_path
):
    srv = labelstudio_server
    dicoms = sorted((demo_dir / "dicom").rglob("*.dcm"))[:3]
    project = ls.projects.create(title="before datatool", label_config=P.labelstudio_config())
    ls.projects.import_tasks(
        id=project.id,
        request=[
            {"image": f"/data/local-files/?d=legacy/{k}.png",
             "dicom": str(p.relative_to(demo_dir / "dicom"))}
            for k, p in enumerate(dicoms)
        ],
    )  # fmt: skip
    tasks = sorted(ls.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
    assert len(tasks) == 3
    drawn = {}
    for seed, task in enumerate(tasks):
        mask = drawn_mask(480, 640, seed + 3)
        drawn[task.data["dicom"]] = mask
        ls.annotations.create(task.id, result=sdk_results(mask, tmp_path))
    # the server's export API, as a person would download it
    res = httpx.get(
        f"{srv.url}/api/projects/{project.id}/export",
        params={"exportType": "JSON", "download_all_tasks": "true"},
        headers={"Authorization": f"Token {srv.token}"},
        timeout=60,
    )
    res.raise_for_status()
    exported = res.json()
    assert len(exported) == 3 and all(len(t["annotations"]) == 1 for t in exported)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))

    add_rater(demo_ws, "LEGACY")
    report = sync_from_export(demo_ws, "LEGACY", path, dicom_root=demo_dir / "dicom")
    assert (report.seen, report.new_versions, report.rejected) == (3, 3, [])
    with demo_ws.session() as s:
        ids = {
            str(p.relative_to(demo_dir / "dicom")): image_for_dicom(s, demo_ws.key, p).id
            for p in dicoms
        }
    for rel, mask in drawn.items():
        np.testing.assert_array_equal(stored_mask(demo_ws, ids[rel], "LEGACY"), mask)
