"""The Label Studio ML backend (datatool.assist.serving) under a real uvicorn: the protocol,
auth, limits and refusals. With a real Label Studio server asking it: tests/labels/
labelstudio/test_prelabel.py."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.assist.serving import (
    PASSWORD_ENV,
    USER_ENV,
    Credentials,
    create_app,
    credentials_file,
    prepare,
    read_credentials_file,
)
from datatool.cli import app as cli
from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.labels.annotations import get_rater
from datatool.labels.labelstudio.formats import results_to_mask
from datatool.labels.labelstudio.news import read_news
from datatool.labels.matching import image_name
from datatool.learning.inference import load_run_model, predict
from tests.backend_server import PASSWORD, serve_subprocess, uvicorn_thread
from tests.qa_util import clone

P = load_protocol()
PROJECT = 41
CREDS = Credentials("lab", "not-the-default-pass-7Q", "environment")


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    """A copy of the trained workspace whose rater1 has project 41 with three tasks (as a
    push records them), and the backend app of its run."""
    source, run = trained
    root = tmp_path_factory.mktemp("serving") / "ws"
    ws = clone(source, root)
    with ws.session() as s:
        row = LabelStudioProject(
            project_id=PROJECT, rater_id=get_rater(s, "rater1").id, title="rater1 (anterior)"
        )
        s.add(row)
        s.flush()
        images = list(s.scalars(select(Image).order_by(Image.id).limit(3)))
        for k, image in enumerate(images):
            s.add(LabelStudioTask(project_id=row.id, task_id=100 + k, image_id=image.id))
    app = create_app(ws, run, CREDS, device="cpu", max_tasks=16, max_body=256 * 1024)
    yield ws, run, app, images
    ws.close()


@pytest.fixture(scope="module")
def base_url(served):
    with uvicorn_thread(served[2]) as url:
        yield url


@pytest.fixture()
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


AUTH = {"Authorization": CREDS.header()}


def _task(task_id: int, image_id: int, project: int = PROJECT) -> dict:
    return {
        "id": task_id,
        "project": project,
        "data": {
            "image": f"/data/local-files/?d=datatool/{project}/x.png",
            "image_id": image_name(image_id),
        },
        "annotations": [],
        "predictions": [],
    }


def _predict_body(tasks: list[dict]) -> dict:
    return {
        "tasks": tasks,
        "project": f"{PROJECT}.1764600000",
        "label_config": P.labelstudio_config(),
        "params": {"login": None, "password": None, "context": None},
    }


def _one_line_error(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    assert "Traceback" not in response.text
    return body["error"]


def test_health_is_open_and_everything_else_needs_basic_auth(served, client):
    ws, run, _, _ = served
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["model_version"] == load_run_model(ws, run, device="cpu").model_version
    assert health.json()["interactive"] is False  # connect --interactive refuses this run
    for method, path in [
        ("POST", "/setup"),
        ("POST", "/predict"),
        ("POST", "/webhook"),
        ("GET", "/versions"),
        ("GET", "/"),
        ("GET", "/anything"),
    ]:
        for headers in (
            {},
            {"Authorization": Credentials("lab", "wrong", "x").header()},
            {"Authorization": "Basic not-base64!"},
            {"Authorization": "Bearer " + CREDS.password},
        ):
            answer = client.request(method, path, headers=headers, json={})
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"] == 'Basic realm="datatool"'
            assert "Basic auth" in _one_line_error(answer)
    assert client.get("/versions", headers=AUTH).json() == {
        "versions": [health.json()["model_version"]]
    }
    assert client.get("/nothing", headers=AUTH).status_code == 404
    assert client.post("/health").status_code == 405
    _one_line_error(client.get("/nothing", headers=AUTH))


def test_setup_answers_the_model_version_for_a_datatool_project(served, client):
    body = {
        "project": f"{PROJECT}.1764600000",
        "schema": P.labelstudio_config(),
        "hostname": "http://localhost:8080",
        "access_token": "a-token-the-backend-never-uses",
        "extra_params": None,
    }
    answer = client.post("/setup", headers=AUTH, json=body)
    assert answer.status_code == 200
    assert answer.json()["model_version"].startswith(f"datatool-run-{served[1]}-split-")
    unknown = client.post("/setup", headers=AUTH, json={**body, "project": "999.1"})
    assert unknown.status_code == 422 and "not made by" in _one_line_error(unknown)
    other = P.labelstudio_config().replace('name="label"', 'name="other"')
    wrong = client.post("/setup", headers=AUTH, json={**body, "schema": other})
    assert wrong.status_code == 422 and "brush labels" in _one_line_error(wrong)


def test_predict_answers_pushed_tasks_from_the_store_in_order(served, client):
    ws, run, _, images = served
    tasks = [_task(102, images[2].id), _task(100, images[0].id)]
    answer = client.post("/predict", headers=AUTH, json=_predict_body(tasks))
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 2
    model = load_run_model(ws, run, device="cpu")
    expected = predict(model, [ws.store.get_array(images[i].store_hash) for i in (2, 0)])
    for got, image, draft in zip(results, (images[2], images[0]), expected):
        assert got["model_version"] == model.model_version
        assert got["score"] == pytest.approx(draft.score, abs=1e-6)
        for entry in got["result"]:
            assert (entry["original_width"], entry["original_height"]) == (image.cols, image.rows)
            assert entry["from_name"] == "label" and entry["to_name"] == "image"
        mask = results_to_mask(got["result"], P, (image.rows, image.cols)).mask
        np.testing.assert_array_equal(mask, draft.labels)


def test_malformed_wrong_shapes_oversized_and_unknown_tasks_get_a_4xx(served, client):
    _, _, _, images = served
    good = _task(100, images[0].id)
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b"[1, 2]", 422, "JSON object"),
        (json.dumps({"tasks": "all"}).encode(), 422, "list of Label Studio tasks"),
        (json.dumps(_predict_body([])).encode(), 422, "empty list"),
        (json.dumps(_predict_body([7])).encode(), 422, "not a JSON object"),
        (json.dumps(_predict_body([{**good, "id": "100"}])).encode(), 422, "integer id"),
        (json.dumps(_predict_body([{**good, "data": None}])).encode(), 422, "no data"),
        (json.dumps(_predict_body([{**good, "project": 5}])).encode(), 422, "not to 41"),
        (
            json.dumps(_predict_body([good, _task(555, images[1].id)])).encode(),
            422,
            "task 555 of project 41 was not made by 'datatool labelstudio push'",
        ),
        (
            json.dumps(_predict_body([_task(101, images[0].id)])).encode(),
            422,
            "does not name the image",
        ),
        (json.dumps(_predict_body([good] * 1000)).encode(), 413, "1000 tasks in one request"),
        (b" " * (300 * 1024), 413, "at most 262144"),
    ]
    for body, status, reason in cases:
        answer = client.post(
            "/predict", headers={**AUTH, "Content-Type": "application/json"}, content=body
        )
        assert answer.status_code == status, (body[:80], answer.text)
        assert reason in _one_line_error(answer), answer.text
    # a body sent without a length is counted as it arrives
    chunks = (b" " * 65536 for _ in range(5))
    streamed = client.post("/predict", headers=AUTH, content=chunks)
    assert streamed.status_code == 413 and "over 262144" in _one_line_error(streamed)


def test_webhook_counts_annotation_events_and_declines_training(served, client):
    ws = served[0]
    event = {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT}, "annotation": {}}
    assert client.post("/webhook", headers=AUTH, json=event).json()["status"] == "recorded"
    assert (
        client.post("/webhook", headers=AUTH, json={**event, "project": {"id": 3}}).json()["status"]
        == "ignored"
    )
    tasks = client.post("/webhook", headers=AUTH, json={**event, "action": "TASKS_CREATED"})
    assert tasks.json()["status"] == "ignored"
    train = client.post("/webhook", headers=AUTH, json={"action": "START_TRAINING", "project": {}})
    assert train.status_code == 200 and "datatool train" in train.json()["message"]
    bad = client.post("/webhook", headers=AUTH, json={"project": {"id": PROJECT}})
    assert bad.status_code == 422 and "action" in _one_line_error(bad)
    news = {n.project_id: n for n in read_news(ws.meta_dir)}
    assert news[PROJECT].actions["ANNOTATION_CREATED"] >= 1 and 3 not in news


def test_an_internal_failure_is_one_line_and_the_log_holds_no_secret(served, client, caplog):
    backend = served[2].state.backend
    caplog.set_level(logging.DEBUG)
    secret = "img-pixels-and-a-name"

    def broken(images):
        raise RuntimeError(secret)

    original, backend.predict = backend.predict, broken
    try:
        answer = client.post(
            "/predict", headers=AUTH, json=_predict_body([_task(100, served[3][0].id)])
        )
    finally:
        backend.predict = original
    assert answer.status_code == 500
    assert _one_line_error(answer) == "internal error (RuntimeError); see the server log"
    client.post("/predict", headers={"Authorization": "Basic " + "x" * 20}, json={})
    client.post("/setup", headers=AUTH, json={"project": "41.1", "access_token": "tok-9"})
    logged = caplog.text
    assert "failed /predict: RuntimeError" in logged
    for never in (secret, CREDS.password, CREDS.header(), "tok-9", "Traceback"):
        assert never not in logged


def test_serve_listens_beyond_loopback_only_with_credentials_from_the_environment(
    served, monkeypatch
):
    ws, run, _, _ = served
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(USER_ENV, raising=False)
    for host in ("0.0.0.0", "localhost", "192.168.1.20", "::"):
        with pytest.raises(UsageError, match="listens beyond this machine"):
            prepare(ws, run, host=host, device="cpu")
    res = CliRunner().invoke(
        cli, ["serve", str(run), "--host", "0.0.0.0", "--workspace", str(ws.root)]
    )
    assert res.exit_code == 2 and "DATATOOL_SERVE_PASSWORD" in res.output
    # on loopback without credentials: a random password, in a file only its owner reads
    local = prepare(ws, run, port=9311, device="cpu")
    path = credentials_file(ws, run)
    assert local.credentials_from == str(path) and local.url == "http://127.0.0.1:9311"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    made = read_credentials_file(path)
    assert made.user == "datatool" and len(made.password) >= 24
    # a second serve of the run keeps the password the running one was given
    assert prepare(ws, run, port=9312, device="cpu") and read_credentials_file(path) == made
    assert prepare(ws, run, host="::1", port=9311, device="cpu").url == "http://[::1]:9311"
    monkeypatch.setenv(PASSWORD_ENV, "from-the-env-12")
    monkeypatch.setenv(USER_ENV, "team")
    wide = prepare(ws, run, host="0.0.0.0", device="cpu")
    assert (wide.credentials_from, wide.user) == ("environment", "team")
    with uvicorn_thread(wide.app) as url, httpx.Client(base_url=url) as c:
        ok = Credentials("team", "from-the-env-12", "environment").header()
        assert c.get("/versions", headers={"Authorization": ok}).status_code == 200
        assert c.get("/versions", headers={"Authorization": made.header()}).status_code == 401


def test_ids_out_of_range_or_not_ascii_digits_get_a_422_not_a_500(served, client):
    _, _, _, images = served
    good = _task(100, images[0].id)
    huge = "9" * 5000
    for project in (2**70, "\u00b2", huge, f"{huge}.1", -4, 0, "1e3", 1.5):
        for path, body in [
            ("/setup", {"project": project, "schema": P.labelstudio_config()}),
            ("/predict", {**_predict_body([good]), "project": project}),
            ("/predict", _predict_body([{**good, "project": project}])),
            ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": project}}),
            ("/webhook", {"action": "ANNOTATION_CREATED", "project": project}),
        ]:
            answer = client.post(path, headers=AUTH, json=body)
            assert answer.status_code == 422, (path, str(project)[:20], answer.text)
            assert "project id" in _one_line_error(answer)
    for task_id in (2**70, -1, 0, 2**63):
        answer = client.post(
            "/predict", headers=AUTH, json=_predict_body([{**good, "id": task_id}])
        )
        assert answer.status_code == 422 and "integer id" in _one_line_error(answer)
    # a 5000-digit number in the JSON itself (Python refuses to parse it into an int)
    raw = b'{"tasks": [{"id": ' + b"9" * 5000 + b"}]}"
    answer = client.post(
        "/predict", headers={**AUTH, "Content-Type": "application/json"}, content=raw
    )
    assert answer.status_code == 400 and "number too long" in _one_line_error(answer)


def test_a_webhook_action_is_escaped_in_the_log_and_the_news_file(served, client, caplog):
    ws = served[0]
    caplog.set_level(logging.INFO, "datatool.serve")
    forged = "ANNOTATION_CREATED\n2026 serve: admin in\x1b[2J\x00\\x"  # < 64 characters
    event = {"action": forged, "project": {"id": PROJECT}}
    assert client.post("/webhook", headers=AUTH, json=event).json()["status"] == "recorded"
    logged = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert logged and all(not set(line) & {"\n", "\x1b", "\x00"} for line in logged)
    escaped = "ANNOTATION_CREATED\\n2026 serve: admin in\\x1b[2J\\x00\\\\x"
    assert any(escaped in line for line in logged)
    text = (ws.meta_dir / "labelstudio-news.json").read_text()
    assert "\\u001b" not in text and "\\u0000" not in text
    news = {n.project_id: n for n in read_news(ws.meta_dir)}
    assert news[PROJECT].actions[escaped] == 1
    ignored = client.post("/webhook", headers=AUTH, json={**event, "action": "X\x1bY"}).json()
    assert ignored == {"status": "ignored", "action": "X\\x1bY"}


def test_credentials_survive_a_second_or_failed_serve_in_a_private_folder(served, monkeypatch):
    ws, run, _, _ = served
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    path = credentials_file(ws, run)
    path.unlink(missing_ok=True)
    if path.parent.exists():
        path.parent.rmdir()
    old = os.umask(0)
    try:
        first = prepare(ws, run, port=9313, device="cpu")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    made = read_credentials_file(path)
    assert first.credentials_from == str(path)
    # a failed serve (unknown run, a port out of range) or a second one changes nothing
    for bad in ({"run_id": 999}, {"port": 0}):
        with pytest.raises(UsageError):
            prepare(ws, **{"run_id": run, "port": 9314, "device": "cpu", **bad})
    assert not credentials_file(ws, 999).exists()
    again = prepare(ws, run, port=9315, device="cpu")
    assert read_credentials_file(path) == made and again.credentials_from == str(path)
    with uvicorn_thread(again.app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/versions", headers={"Authorization": made.header()}).status_code == 200
    # a folder made loose before is tightened
    os.chmod(path.parent, 0o777)
    prepare(ws, run, port=9316, device="cpu")
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_blank_or_short_password_is_refused_beyond_loopback(served, monkeypatch):
    ws, run, _, _ = served
    for password, host, reason in [
        (" ", "0.0.0.0", "blank"),
        ("\t  ", "127.0.0.1", "blank"),
        ("short", "0.0.0.0", "at least 12"),
        ("eleven-char", "192.168.1.20", "at least 12"),
    ]:
        monkeypatch.setenv(PASSWORD_ENV, password)
        with pytest.raises(UsageError, match=reason):
            prepare(ws, run, host=host, device="cpu")
    monkeypatch.setenv(PASSWORD_ENV, "short")  # on loopback only this machine's users reach it
    assert prepare(ws, run, device="cpu").credentials_from == "environment"
    monkeypatch.setenv(PASSWORD_ENV, " ")
    res = CliRunner().invoke(
        cli, ["serve", str(run), "--host", "0.0.0.0", "--workspace", str(ws.root)]
    )
    assert res.exit_code == 2 and "blank" in res.output and "Traceback" not in res.output


def _peak_mib(pid: int) -> float:
    """The resident-set high-water mark of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_hostile_bodies_leave_the_servers_memory_bounded_and_health_answering(served, tmp_path):
    """The issue's bodies, four at once: 31 MiB of ``{}`` (with and without a length), 30 MB
    of nested arrays, and the worst that still parses (8 MiB of short strings)."""
    ws, run, _, _ = served
    mib = 1024 * 1024
    empties = b"[" + b"{}," * (31 * mib // 3) + b"{}]"
    nested = b"[" + b"[[[1]]]," * (30_000_000 // 8) + b"1]"
    many = b"[" + b"{}," * (8 * mib // 3 - 10) + b"{}]"  # under 8 MiB, 2.8 million objects
    ones = b"[" + b"1," * (8 * mib // 2 - 10) + b"1]"  # 4 million values
    strings = b'{"tasks": 1, "x": [' + b'"ab",' * 999_990 + b'"ab"]}'  # the most that parses
    assert max(len(many), len(ones), len(strings)) < 8 * mib
    auth = {"Authorization": Credentials("datatool", PASSWORD, "x").header()}
    json_type = {"Content-Type": "application/json"}
    with serve_subprocess(ws.root, run, tmp_path / "serve.log") as (url, proc):
        with httpx.Client(base_url=url, timeout=120) as c:
            ok = c.post("/webhook", headers=auth, json={"action": "X", "project": PROJECT})
            assert ok.status_code == 200
        before = _peak_mib(proc.pid)
        latencies: list[float] = []
        done = threading.Event()

        def watch_health() -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                while not done.is_set():
                    started = time.monotonic()
                    assert c.get("/health").status_code == 200
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.05)

        def send(kind: str) -> tuple[str, int, str]:
            with httpx.Client(base_url=url, timeout=120) as c:
                if kind == "streamed":  # no Content-Length: counted as it arrives
                    chunks = (empties[k : k + mib] for k in range(0, len(empties), mib))
                    answer = c.post("/predict", headers={**auth, **json_type}, content=chunks)
                else:
                    body = {"sized": empties, "nested": nested, "many": many, "ones": ones}.get(
                        kind, strings
                    )
                    answer = c.post("/predict", headers={**auth, **json_type}, content=body)
                return kind, answer.status_code, answer.json()["error"]

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        try:
            kinds = ["sized", "streamed", "nested", "many", "ones", "strings"] * 4
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(send, kinds))
        finally:
            done.set()
            watcher.join()
        after = _peak_mib(proc.pid)
    expected = {
        "sized": (413, "this backend takes at most 8388608"),
        "streamed": (413, "over 8388608 bytes"),
        "nested": (413, "this backend takes at most"),
        "many": (413, "parses at most 200000"),
        "ones": (413, "parses at most 1000000"),
        "strings": (422, "list of Label Studio tasks"),
    }
    for kind, status, reason in answers:
        assert (status, expected[kind][1] in reason) == (expected[kind][0], True), (kind, reason)
    print(f"peak RSS {before:.0f} -> {after:.0f} MiB; /health worst {max(latencies):.2f} s")
    assert after - before < 250, (before, after)
    assert latencies and max(latencies) < 1.0, max(latencies)


def test_bodies_held_at_once_are_bounded_and_a_slow_body_times_out():
    """BodyLimits on a tiny app: a second body over the shared budget waits for nothing (503),
    a body that does not arrive in time is refused (408), and the budget is given back."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from datatool.assist.serving import BodyLimits, _answering, _json_response

    limits = BodyLimits(max_body=4096, budget=4096, timeout=2)

    @_answering("/echo")
    async def echo(request):
        return _json_response(200, {"keys": sorted(await limits.read(request))})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    arrived = threading.Event()

    def slow():  # 3000 bytes at once, the rest only after the timeout
        yield b'{"a": "' + b"x" * 3000
        arrived.set()
        time.sleep(3)
        yield b'"}'

    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(c.post, "/echo", content=slow())
            assert arrived.wait(10)
            time.sleep(0.5)
            busy = c.post("/echo", content=b'{"b": "' + b"y" * 2000 + b'"}')
            assert busy.status_code == 503 and "retry" in _one_line_error(busy)
            late = held.result()
        assert late.status_code == 408 and "within 2 s" in _one_line_error(late)
        assert limits.held == 0
        assert c.post("/echo", content=b'{"b": 1}').json() == {"keys": ["b"]}


def test_one_backend_tells_two_raters_servers_apart_by_the_image_a_task_names(served, client):
    """Each rater's own server numbers projects and tasks from 1: rater2's project 41 on their
    server may hold a task 100 showing another image than rater1's task 100. The backend
    answers each with the image the task names."""
    ws, run, _, images = served
    with ws.session() as s:
        other = LabelStudioProject(
            project_id=PROJECT, rater_id=get_rater(s, "rater2").id, title="rater2 (anterior)"
        )
        s.add(other)
        s.flush()
        s.add(LabelStudioTask(project_id=other.id, task_id=100, image_id=images[1].id))
    for image in (images[1], images[0]):
        answer = client.post("/predict", headers=AUTH, json=_predict_body([_task(100, image.id)]))
        assert answer.status_code == 200, answer.text
        [got] = answer.json()["results"]
        mask = results_to_mask(got["result"], P, (image.rows, image.cols)).mask
        model = load_run_model(ws, run, device="cpu")
        [draft] = predict(model, [ws.store.get_array(image.store_hash)])
        np.testing.assert_array_equal(mask, draft.labels)
    # a task 100 naming an image neither rater's task 100 shows is still refused
    wrong = client.post("/predict", headers=AUTH, json=_predict_body([_task(100, images[2].id)]))
    assert wrong.status_code == 422 and "does not name the image" in _one_line_error(wrong)
