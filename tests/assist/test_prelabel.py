"""Model drafts in Label Studio against the real server of the session: prelabel, the ML
backend connected to a project and asked by Label Studio itself, provenance of annotations
made from drafts, and agreement leaving them out."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.analysis.agreement import run_agreement
from datatool.assist.connect import connect_backend
from datatool.assist.prelabel import prelabel
from datatool.assist.serving import PASSWORD_ENV, USER_ENV, Credentials, create_app
from datatool.cli import app as cli
from datatool.core.catalogue import Image
from datatool.core.errors import DatatoolError
from datatool.core.protocol import load_protocol
from datatool.core.store import pixel_digest
from datatool.labels.annotations import get_rater, label_coverage, latest_annotation
from datatool.labels.labelstudio.formats import mask_to_results, results_to_mask
from datatool.labels.labelstudio.push import push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_id_from_name
from datatool.learning.inference import load_run_model, predict
from tests.backend_server import uvicorn_thread
from tests.qa_util import clone

P = load_protocol()


@pytest.fixture(scope="module")
def study(trained, tmp_path_factory):
    """A copy of the trained workspace (rater1 and rater2 have labelled every image) and the
    model's own drafts of every image, computed here."""
    source, run = trained
    root = tmp_path_factory.mktemp("prelabel") / "ws"
    ws = clone(source, root)
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image).order_by(Image.id))}
    model = load_run_model(ws, run, device="cpu")
    ids = sorted(images)
    drafts = dict(zip(ids, predict(model, [ws.store.get_array(images[i].store_hash) for i in ids])))
    yield ws, run, model.model_version, images, drafts
    ws.close()


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def _server(srv) -> dict:
    return {"url": srv.url, "token": srv.token}


def _tasks(ls, project_id: int) -> list:
    return list(ls.tasks.list(project=project_id, fields="all"))


def _prediction_dicts(task) -> list[dict]:
    return [p if isinstance(p, dict) else p.model_dump() for p in task.predictions or []]


def _other_raters_masks(ws, rater: str, drafts: dict) -> set[str]:
    """The other rater's label maps (every version), less any that is a model draft as it
    is (a rater may accept one unchanged)."""
    from datatool.core.catalogue import Annotation

    with ws.session() as s:
        rid = get_rater(s, rater).id
        hashes = set(s.scalars(select(Annotation.mask_hash).where(Annotation.rater_id == rid)))
    return hashes - {pixel_digest(d.labels) for d in drafts.values()}


def test_prelabel_attaches_the_models_drafts_once_and_nothing_else(study, labelstudio_server, ls):
    ws, run, version, images, drafts = study
    srv = labelstudio_server
    pid = push(ws, "rater1", local_root=srv.local_root, **_server(srv)).project_id
    skipped = prelabel(ws, run, "rater1", only_unlabelled=True, device="cpu", **_server(srv))
    assert (skipped.drafted, skipped.skipped_labelled) == (0, 12)  # rater1 labelled them all

    calls: list[tuple[int, int]] = []
    report = prelabel(
        ws, run, "rater1", batch=5, device="cpu", progress=lambda d, n: calls.append((d, n)),
        **_server(srv),
    )  # fmt: skip
    assert (report.drafted, report.already, report.tasks, report.projects) == (12, 0, 12, [pid])
    # progress after each batch the model drafted (5 images a batch), not only on upload
    assert calls == [(0, 12), (5, 12), (10, 12), (12, 12)]
    assert report.model_version == version and report.seconds["inference"] > 0
    from datatool.core.catalogue import DraftHandout

    with ws.session() as s:  # each draft recorded as handed to rater1 (labels.handouts)
        rid = get_rater(s, "rater1").id
        handed = {
            (h.image_id, h.rater_id, h.run_id, h.model_version, h.via, h.mask_hash)
            for h in s.scalars(select(DraftHandout).where(DraftHandout.rater_id == rid))
        }
    assert handed == {
        (i, rid, run, version, "labelstudio", pixel_digest(d.labels)) for i, d in drafts.items()
    }
    rater2 = _other_raters_masks(ws, "rater2", drafts)
    for task in _tasks(ls, pid):
        image = images[image_id_from_name(task.data["image_id"])]
        draft = drafts[image.id]
        (prediction,) = _prediction_dicts(task)
        assert prediction["model_version"] == version
        assert prediction["score"] == pytest.approx(draft.score, abs=1e-6)
        for entry in prediction["result"]:
            assert (entry["original_width"], entry["original_height"]) == (image.cols, image.rows)
            assert entry["value"]["brushlabels"][0] in {s.name for s in P.structures}
        mask = results_to_mask(prediction["result"], P, (image.rows, image.cols)).mask
        np.testing.assert_array_equal(mask, draft.labels)  # pixel for pixel the model's
        # blinding: nothing of the other rater reaches this rater's project
        assert pixel_digest(mask) not in rater2
        assert not task.annotations
    project = ls.projects.get(pid)
    assert project.model_version == version and project.show_collab_predictions
    # a second run uploads nothing (through the command line this time)
    again = CliRunner().invoke(
        cli,
        ["prelabel", str(run), "--rater", "rater1", "--device", "cpu", "--json",
         "--workspace", str(ws.root), "--url", srv.url, "--token", srv.token],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert (data["drafted"], data["already"]) == (0, 12)
    assert "mean max-softmax over the drafted foreground" in data["score_formula"]
    assert all(len(t.predictions) == 1 for t in _tasks(ls, pid))


def test_annotations_made_from_drafts_sync_with_provenance_and_agreement_leaves_them_out(
    study, labelstudio_server, ls
):
    ws, run, version, images, drafts = study
    srv = labelstudio_server
    pid = push(ws, "rater1", local_root=srv.local_root, **_server(srv)).project_id
    prelabel(ws, run, "rater1", device="cpu", **_server(srv))
    tasks = sorted(_tasks(ls, pid), key=lambda t: t.id)
    accepted, edited, own = tasks[:3]
    for task, change in ((accepted, False), (edited, True)):
        (prediction,) = _prediction_dicts(task)
        result = prediction["result"]
        if change:
            image = images[image_id_from_name(task.data["image_id"])]
            mask = results_to_mask(result, P, (image.rows, image.cols)).mask
            mask[10:30, 10:40] = 4
            result = mask_to_results(mask, P)
        ls.annotations.create(
            task.id, result=result, parent_prediction=prediction["id"], project=pid
        )
    own_image = images[image_id_from_name(own.data["image_id"])]
    own_mask = np.zeros((own_image.rows, own_image.cols), np.uint8)
    own_mask[50:90, 60:120] = 3
    ls.annotations.create(own.id, result=mask_to_results(own_mask, P), project=pid)

    report = sync_from_server(ws, "rater1", **_server(srv))
    assert (report.new_versions, report.rejected) == (3, [])
    with ws.session() as s:
        r1 = get_rater(s, "rater1")
        found = {
            name: latest_annotation(s, image_id_from_name(t.data["image_id"]), r1.id)
            for name, t in (("accepted", accepted), ("edited", edited), ("own", own))
        }
        for name in ("accepted", "edited"):
            a = found[name]
            assert (a.source, a.draft_version, a.draft_run_id) == ("labelstudio", version, run)
            draft = drafts[a.image_id].labels
            np.testing.assert_array_equal(ws.store.get_array(a.draft_hash), draft)
        assert found["accepted"].draft_unchanged is True
        assert found["edited"].draft_unchanged is False
        assert found["own"].draft_version is None and found["own"].draft_unchanged is None
    coverage = {r.rater: r for r in label_coverage(ws).raters}
    assert (coverage["rater1"].from_draft, coverage["rater1"].draft_unchanged) == (2, 1)
    assert coverage["rater2"].from_draft == 0

    # two raters who start from one draft are not independent: a new sample leaves them out
    left = run_agreement(ws, raters=["rater1", "rater2"], resample=True, plots=False)
    assert (left.sample.images, left.prelabelled_left_out, left.include_prelabelled) == (
        10,
        2,
        False,
    )
    assert left.prelabelled_in_sample == 0
    assert any("2 images left out" in n for n in left.notes)
    kept = run_agreement(
        ws, raters=["rater1", "rater2"], resample=True, include_prelabelled=True, plots=False
    )
    assert (kept.sample.images, kept.include_prelabelled, kept.prelabelled_in_sample) == (
        12,
        True,
        2,
    )
    assert any("not a measure of independent human agreement" in n for n in kept.notes)
    # each saved sample is reused as it is, with its own setting
    again = run_agreement(ws, raters=["rater1", "rater2"], plots=False)
    assert again.sample.reused and again.sample.id == left.sample.id
    shown = CliRunner().invoke(
        cli,
        ["agreement", "--raters", "rater1,rater2", "--include-prelabelled",
         "--workspace", str(ws.root)],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "images labelled from model drafts kept" in shown.stdout


def test_label_studio_asks_the_connected_backend_for_drafts(
    study, labelstudio_server, ls, monkeypatch
):
    ws, run, version, images, drafts = study
    srv = labelstudio_server
    pid = push(ws, "rater2", local_root=srv.local_root, **_server(srv)).project_id
    creds = Credentials("labelstudio", "backend-pass-for-the-test", "environment")
    monkeypatch.setenv(USER_ENV, creds.user)
    monkeypatch.setenv(PASSWORD_ENV, creds.password)
    app = create_app(ws, run, creds, device="cpu")
    with uvicorn_thread(app) as backend_url:
        report = connect_backend(ws, "rater2", backend_url, **_server(srv))
        (connected,) = report.projects
        assert (connected.project_id, connected.created, connected.webhook) == (pid, True, True)
        assert report.model_version == version and not report.notes
        (registered,) = ls.ml.list(project=pid)
        assert registered.auth_method == "BASIC_AUTH" and registered.title == version
        project = ls.projects.get(pid)
        assert project.model_version == version and project.show_collab_predictions

        tasks = sorted(_tasks(ls, pid), key=lambda t: t.id)
        chosen = [t.id for t in tasks[:3]]
        ls.actions.create(
            id="retrieve_tasks_predictions",
            project=pid,
            selected_items={"all": False, "included": chosen},
        )
        rater1 = _other_raters_masks(ws, "rater1", drafts)
        for task in _tasks(ls, pid):
            predictions = _prediction_dicts(task)
            if task.id not in chosen:
                assert not predictions
                continue
            (prediction,) = predictions
            image = images[image_id_from_name(task.data["image_id"])]
            assert prediction["model_version"] == version
            mask = results_to_mask(prediction["result"], P, (image.rows, image.cols)).mask
            np.testing.assert_array_equal(mask, drafts[image.id].labels)
            assert pixel_digest(mask) not in rater1
        # prelabel then sends only what the backend has not drafted
        done = prelabel(ws, run, "rater2", device="cpu", **_server(srv))
        assert (done.drafted, done.already) == (9, 3)

        # an annotation event reaches the backend through Label Studio's webhook
        first = images[image_id_from_name(tasks[0].data["image_id"])]
        drawn = np.zeros((first.rows, first.cols), np.uint8)
        drawn[5:25, 5:45] = 1
        ls.annotations.create(tasks[0].id, result=mask_to_results(drawn, P), project=pid)
        synced = sync_from_server(ws, "rater2", **_server(srv))
        assert any(
            item == f"project {pid}" and "Label Studio events since the last sync" in note
            for item, note in synced.notes
        ), synced.notes
        # connecting again updates the registration; wrong credentials are refused up front
        assert not connect_backend(ws, "rater2", backend_url, **_server(srv)).projects[0].created
        assert len(ls.ml.list(project=pid)) == 1
        monkeypatch.setenv(PASSWORD_ENV, "wrong")
        with pytest.raises(DatatoolError, match="refused the credentials"):
            connect_backend(ws, "rater2", backend_url, **_server(srv))
        assert httpx.post(f"{backend_url}/predict", json={"tasks": []}).status_code == 401
