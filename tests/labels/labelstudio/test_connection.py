"""Truly blind in Label Studio: each rater on a server of their own, which the catalogue
remembers (labelstudio push --url records it; later commands for the rater reach it without
--url), with the rater's own token from LABEL_STUDIO_API_KEY_<RATER>.

Two real servers: the session's (A) and one of this module's own (B)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from sqlalchemy import select

from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask, Rater
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.labelstudio.connection import (
    _recorded_project,
    rater_server,
    rater_token_env,
    resolve,
)
from datatool.labels.labelstudio.push import annotate

# this module's own second server (importing the fixture gives the module one)
from tests.labelstudio_server import second_labelstudio_server

__all__ = ["second_labelstudio_server"]

P = load_protocol()


def test_each_rater_has_a_token_variable_of_their_own():
    assert rater_token_env("rater1") == "LABEL_STUDIO_API_KEY_RATER1"
    assert rater_token_env("AN-2 b") == "LABEL_STUDIO_API_KEY_AN_2_B"


def test_the_token_is_the_raters_own_first_and_never_in_the_url(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "shared")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY_RATER1", "own")
    assert resolve(None, None, "rater1") == ("http://127.0.0.1:8080", "own")
    assert resolve(None, None, "rater2") == ("http://127.0.0.1:8080", "shared")
    assert resolve("http://h:1", "given", "rater1") == ("http://h:1", "given")
    with pytest.raises(UsageError, match="no credentials in the Label Studio URL"):
        resolve("http://me:secret@h:1", None, "rater1")
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(UsageError, match="LABEL_STUDIO_API_KEY_RATER2 or LABEL_STUDIO_API_KEY"):
        resolve(None, None, "rater2")


def test_a_recorded_server_wins_and_another_url_is_refused(ws):
    add_rater(ws, "r1")
    add_rater(ws, "r2")
    add_rater(ws, "r3")
    with ws.session() as s:
        r1, r2, r3 = (s.scalar(select(Rater).where(Rater.name == n)) for n in ("r1", "r2", "r3"))
        r1.labelstudio_url, r2.labelstudio_url = "http://a:1", "http://b:2"
        s.flush()
        assert rater_server(s, r1, None).url == "http://a:1"
        assert rater_server(s, r1, "http://a:1/").recorded  # the same server, written otherwise
        assert rater_server(s, r3, "http://c:3").url == "http://c:3"
        assert rater_server(s, r3, None).url is None  # LABEL_STUDIO_URL then
        with pytest.raises(UsageError, match="--move-server"):
            rater_server(s, r1, "http://b:2")
        # both servers number from 1: project 1 is r1's on A and r2's on B
        s.add(LabelStudioProject(project_id=1, rater_id=r1.id, title="r1"))
        s.add(LabelStudioProject(project_id=1, rater_id=r2.id, title="r2"))
        s.flush()
        assert _recorded_project(s, 1, r1).title == "r1"
        assert _recorded_project(s, 1, r2).title == "r2"
        assert _recorded_project(s, 1, r3) is None  # r3's server (none recorded) is another
        r3.labelstudio_url = "http://a:1"  # on A, project 1 is r1's: not r3's to use
        assert _recorded_project(s, 1, r3).title == "r1"


@pytest.fixture()
def blind_ws(ws, demo_dir):
    report = ingest(ws, [demo_dir / "dicom"], workers=0)
    assert report.ingested == 12 and not report.rejected
    add_rater(ws, "rater1")
    add_rater(ws, "rater2")
    return ws


def _titles(url: str, token: str) -> dict[int, str]:
    return {p.id: p.title for p in LabelStudio(base_url=url, api_key=token).projects.list()}


def test_a_raters_login_cannot_list_another_raters_project(
    blind_ws, labelstudio_server, second_labelstudio_server, cli_env
):
    a, b = labelstudio_server, second_labelstudio_server
    env = {k: v for k, v in cli_env.items() if not k.startswith("LABEL_STUDIO_")}
    env |= {rater_token_env("rater1"): a.token, rater_token_env("rater2"): b.token}

    def run(*args, **more):
        return subprocess.run(
            [sys.executable, "-m", "datatool", *args, "-w", str(blind_ws.root)],
            capture_output=True,
            text=True,
            env={**env, **more},
        )

    # server A is the session's: other tests' workspaces may hold a rater2 project there
    rater2_on_a = list(_titles(a.url, a.token).values()).count("rater2 (anterior_sciatic)")
    pushes = [
        run("labelstudio", "push", "--rater", "rater1", "--url", a.url, "--images", "1,2",
            "--serve", "upload", "--json"),
        run("labelstudio", "push", "--rater", "rater2", "--url", b.url + "/", "--images", "1,2",
            "--serve", "upload", "--json"),
    ]  # fmt: skip
    for res in pushes:
        assert res.returncode == 0, res.stderr
        assert "now rater" in res.stderr and "own (recorded)" in res.stderr
    p1, p2 = (json.loads(res.stdout)["project_id"] for res in pushes)
    with blind_ws.session() as s:  # the address only, without the trailing slash
        urls = dict(s.execute(select(Rater.name, Rater.labelstudio_url)).all())
    assert urls == {"rater1": a.url, "rater2": b.url}

    # rater1's login (server A's token) lists rater1's project, never rater2's
    seen_by_rater1 = _titles(a.url, a.token)
    assert seen_by_rater1[p1] == "rater1 (anterior_sciatic)"
    assert list(seen_by_rater1.values()).count("rater2 (anterior_sciatic)") == rater2_on_a
    with pytest.raises(ApiError) as refused:  # and cannot list server B at all
        _titles(b.url, a.token)
    assert refused.value.status_code == 401
    assert _titles(b.url, b.token) == {p2: "rater2 (anterior_sciatic)"}

    # rater2 labels on B; a later sync without --url reaches B, though LABEL_STUDIO_URL and
    # LABEL_STUDIO_API_KEY name server A
    with blind_ws.session() as s:
        row = s.scalar(select(LabelStudioProject).where(LabelStudioProject.project_id == p2))
        task = s.scalar(
            select(LabelStudioTask.task_id).where(
                LabelStudioTask.project_id == row.id, LabelStudioTask.image_id == 1
            )
        )
        image = s.get_one(Image, 1)
    mask = np.zeros((image.rows, image.cols), np.uint8)
    mask[60:100, 60:110] = 1
    annotate(b.url, b.token, p2, task, mask, P)
    elsewhere = {"LABEL_STUDIO_URL": a.url, "LABEL_STUDIO_API_KEY": a.token}
    synced = run("sync", "labelstudio", "--rater", "rater2", "--json", **elsewhere)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["new_versions"] == 1

    # another --url for a rater who has a server: one line, usage error, nothing recorded
    moved = run("labelstudio", "push", "--rater", "rater2", "--url", a.url, "--images", "3")
    assert moved.returncode == 2
    [line] = moved.stderr.strip().splitlines()
    assert "rater rater2's projects are on another Label Studio server" in line
    assert "--move-server" in line
    with blind_ws.session() as s:
        assert s.scalar(select(Rater.labelstudio_url).where(Rater.name == "rater2")) == b.url
    titles_on_a = list(_titles(a.url, a.token).values())
    assert titles_on_a.count("rater2 (anterior_sciatic)") == rater2_on_a

    outputs = "".join(r.stdout + r.stderr for r in [*pushes, synced, moved])
    for secret in (a.token, b.token, a.url, b.url):
        assert secret not in outputs
    for f in (blind_ws.root / ".datatool").rglob("*"):  # tokens never in the workspace
        if f.is_file():
            assert a.token.encode() not in f.read_bytes(), f
            assert b.token.encode() not in f.read_bytes(), f
