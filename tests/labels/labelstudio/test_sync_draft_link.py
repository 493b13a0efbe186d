"""A draft's link that Label Studio lost, found again by overlap (``labels.draftlink``), through
the real server of the session: a task labelled over two sittings, the rater's working copy
autosaved as a Label Studio draft (``/api/tasks/{id}/drafts``) and restored, is submitted
without ``parent_prediction``; sync stores it as started from the draft handed to the rater
(prelabel --propagate), and agreement leaves it out. A label far from the draft stays
independent."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from datatool.analysis.agreement import run_agreement
from datatool.assist.propagated import prelabel_propagate
from datatool.core.catalogue import DraftHandout
from datatool.core.errors import DatatoolError
from datatool.labels.annotations import get_rater, latest_annotation
from datatool.labels.draftlink import MIN_IOU, OVERLAP, close_enough
from datatool.labels.labelstudio.formats import mask_to_results, results_to_mask
from datatool.labels.labelstudio.push import push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_id_from_name
from tests.assist.test_propagated import P, _label, cines  # noqa: F401 (fixture)


def _api(srv, method: str, path: str, **kw) -> httpx.Response:
    got = httpx.request(
        method, srv.url + path, headers={"Authorization": f"Token {srv.token}"}, timeout=60, **kw
    )
    assert got.status_code < 300, (path, got.status_code, got.text[:300])
    return got


def _nibble(mask: np.ndarray, value: int, rows: int) -> np.ndarray:
    """The mask with the first ``rows`` rows of structure ``value`` erased (a small edit)."""
    out = mask.copy()
    ys = np.unique(np.nonzero(out == value)[0])[:rows]
    out[np.isin(np.arange(out.shape[0])[:, None], ys) & (out == value)] = 0
    return out


def test_a_draft_restored_over_two_sittings_keeps_its_link_by_overlap(
    cines,  # noqa: F811
    labelstudio_server,
):
    ws, loops = cines
    srv = labelstudio_server
    server = {"url": srv.url, "token": srv.token}
    left, labels = loops["L"]
    _label(ws, "rater1", left[1], labels["rater1"][1])
    pid = push(ws, "rater1", local_root=srv.local_root, **server).project_id
    assert prelabel_propagate(ws, "rater1", **server).drafted == 3  # frames 1, 3 and 4

    ls = LabelStudio(base_url=srv.url, api_key=srv.token)
    tasks = {image_id_from_name(t.data["image_id"]): t for t in ls.tasks.list(project=pid)}
    shape = labels["rater1"].shape[1:]

    def drafted(image_id: int) -> np.ndarray:
        (prediction,) = [
            p if isinstance(p, dict) else p.model_dump() for p in tasks[image_id].predictions
        ]
        return results_to_mask(prediction["result"], P, shape).mask

    # frame 1 over two sittings: the rater edits the draft, Label Studio autosaves the working
    # copy as a draft; in the second sitting it restores that copy, the rater edits on and
    # submits: the annotation names the draft it was saved from, no parent_prediction
    draft = drafted(left[0])
    values = [int(v) for v in np.unique(draft) if v]
    first = _nibble(draft, values[0], 3)
    tid = tasks[left[0]].id
    _api(srv, "POST", f"/api/tasks/{tid}/drafts", json={"result": mask_to_results(first, P),
                                                        "lead_time": 12.5})  # fmt: skip
    (saved,) = _api(srv, "GET", f"/api/tasks/{tid}/drafts").json()
    restored = results_to_mask(saved["result"], P, shape).mask
    np.testing.assert_array_equal(restored, first)
    second = _nibble(restored, values[-1], 2)
    _api(srv, "PATCH", f"/api/drafts/{saved['id']}/", json={"result": mask_to_results(second, P)})
    made = _api(
        srv,
        "POST",
        f"/api/tasks/{tid}/annotations/",
        json={"result": mask_to_results(second, P), "draft_id": saved["id"], "lead_time": 30},
    ).json()
    assert made.get("parent_prediction") is None
    assert _api(srv, "GET", f"/api/tasks/{tid}/drafts").json() == []  # submitted: gone

    # frame 4 labelled far from its draft (every structure moved 40 px): independent
    far = np.roll(drafted(left[3]), 40, axis=1)
    ls.annotations.create(tasks[left[3]].id, result=mask_to_results(far, P), project=pid)

    report = sync_from_server(ws, "rater1", **server)
    assert (report.new_versions, report.rejected) == (2, []), report.as_dict()
    linked = [n for _, n in report.notes if "no parent_prediction" in n]
    assert len(linked) == 1 and "IoU" in linked[0], report.notes
    with ws.session() as s:
        rid = get_rater(s, "rater1").id
        handed = {
            h.image_id: h
            for h in s.scalars(select(DraftHandout).where(DraftHandout.rater_id == rid))
        }
        a = latest_annotation(s, left[0], rid)
        assert (a.draft_version, a.draft_run_id, a.draft_hash) == (
            handed[left[0]].model_version,
            None,
            handed[left[0]].mask_hash,
        )
        assert (a.draft_unchanged, a.draft_link) == (False, OVERLAP)
        assert set(a.draft_iou) == {st.name for st in P.structures if st.value in values}
        assert close_enough(a.draft_iou) and min(a.draft_iou.values()) < 1
        assert all(v >= MIN_IOU for v in a.draft_iou.values())
        b = latest_annotation(s, left[3], rid)
        assert (b.draft_version, b.draft_link, b.draft_iou) == (None, None, None)
    again = sync_from_server(ws, "rater1", **server)  # a re-run is a no-op
    assert (again.new_versions, again.unchanged) == (0, 2)

    # agreement counts the linked label as draft-started: left out of a new sample
    for k in (0, 1, 3):
        _label(ws, "rater2", left[k], labels["rater2"][k])
    with pytest.raises(DatatoolError, match=r"only 2 images .*\(1 more left out: a label started"):
        run_agreement(ws, raters=["rater1", "rater2"], plots=False, surface=False)
    kept = run_agreement(
        ws, raters=["rater1", "rater2"], plots=False, surface=False, include_prelabelled=True
    )
    assert kept.prelabelled_in_sample == 1
