"""Every command's exit codes, as the README promises them: 0 all well (and with --json, JSON
on stdout), 1 something rejected or a check failed (or the workspace needs fixing, such as
a key others can read), 2 a usage error (a bad option or argument, no workspace, an unknown
rater). Never a traceback: the error is one line, or Typer's usage box."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from datatool.analysis.qa import Thresholds, list_queue, run_qa
from datatool.assist.serving import PASSWORD_ENV, USER_ENV, Credentials, create_app
from datatool.cli import app
from datatool.core.protocol import load_protocol
from datatool.core.workspace import init_workspace, open_workspace
from datatool.labels.labelstudio.formats import mask_to_results
from datatool.labels.labelstudio.push import push
from tests.backend_server import uvicorn_thread
from tests.cli.test_commands import LEAVES
from tests.labels_util import ingest_demo_with_labels
from tests.qa_util import clone


@dataclass
class Site:
    tmp: Path
    demo: Path
    ws: Path  # the demo, both raters' labels, a majority consensus, split "s"
    bad_key: Path  # a workspace whose key others can read
    trained: Path  # the session's trained workspace (split "s", run `run`)
    run: int
    ls_url: str
    ls_token: str
    ls_root: Path
    drafted: Path = Path("x")  # a copy of ``trained`` whose rater1 has a Label Studio project
    backend_url: str = "http://127.0.0.1:9"  # that run's ML backend (datatool serve's app)
    flag: int = 1  # an open QA flag of ``ws``


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_dir, trained, labelstudio_server):
    from datatool.analysis.consensus import make_consensus
    from datatool.learning.splits import create_split

    tmp = tmp_path_factory.mktemp("exit")
    root = init_workspace(tmp / "ws").root
    ws = open_workspace(root)
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "majority")
    create_split(ws, "s", ratios="1:1:1", folds=0, seed=1)
    ws.close()
    bad_key = init_workspace(tmp / "bad").root
    os.chmod(bad_key / ".datatool" / "secret.key", 0o644)
    (tmp / "notdicom").mkdir()
    (tmp / "notdicom" / "x.dcm").write_text("patient notes, not an image\n")
    (tmp / "bad.csv").write_text("patient_id,sex\nX1,Q\n")
    (tmp / "a-file").write_text("a file, not a folder\n")
    # rater1's label files, one with a value the protocol does not know
    labels = tmp / "badlabels"
    for k, f in enumerate(sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[:2]):
        dest = labels / f.relative_to(demo_dir / "labels" / "rater1")
        dest.parent.mkdir(parents=True, exist_ok=True)
        image = sitk.ReadImage(str(f))
        array = sitk.GetArrayFromImage(image)
        if k == 0:
            array[0, 0] = 5  # no structure has label value 5
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(dest))
    # Label Studio exports made before datatool: a good task, and one whose DICOM is gone
    dicom = sorted((demo_dir / "dicom").rglob("*.dcm"))[0]
    mask = np.zeros((480, 640), np.uint8)
    mask[100:140, 200:260] = 3
    result = mask_to_results(mask, load_protocol())
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png",
                              "dicom": str(dicom.relative_to(demo_dir / "dicom"))},
            "annotations": [{"id": 11, "result": result, "was_cancelled": False}]}  # fmt: skip
    (tmp / "export.json").write_text(json.dumps([task]))
    gone = {**task, "id": 2, "data": {"image": "/data/upload/1/b.png", "dicom": "gone.dcm"}}
    (tmp / "export-gone.json").write_text(json.dumps([gone]))
    ws_trained, run = trained
    # QA flags on the demo (a strict rater threshold: there is one to resolve)
    ws = open_workspace(root)
    run_qa(ws, thresholds=Thresholds(rater_dice_below=0.999))
    flag = list_queue(ws, limit=1).items[0].flag
    ws.close()
    # a copy of the trained workspace with rater1's project (2 tasks) and its run's backend
    server = {"url": labelstudio_server.url, "token": labelstudio_server.token}
    drafted = clone(ws_trained, tmp / "drafted")
    push(drafted, "rater1", image_ids=[1, 2], local_root=labelstudio_server.local_root, **server)
    creds = Credentials("labelstudio", "exit-code-backend-pass", "environment")
    with (
        pytest.MonkeyPatch.context() as env,
        uvicorn_thread(create_app(drafted, run, creds, device="cpu")) as backend_url,
    ):
        env.setenv(USER_ENV, creds.user)
        env.setenv(PASSWORD_ENV, creds.password)
        yield Site(tmp, demo_dir, root, bad_key, ws_trained.root, run, labelstudio_server.url,
                   labelstudio_server.token, labelstudio_server.local_root, drafted.root,
                   backend_url, flag)  # fmt: skip
    drafted.close()


def _cases(s: Site) -> dict[str, dict[int, list]]:
    """command -> {exit code: arguments}."""
    w, bad = ["-w", s.ws], ["-w", s.bad_key]
    t = ["-w", s.trained]
    ls = ["--url", s.ls_url, "--token", s.ls_token]
    labels1 = [s.demo / "labels" / "rater1", "--rater", "rater1", "--dicom-root", s.demo / "dicom"]
    return {
        "init": {0: [s.tmp / "new", "--json"], 1: [s.bad_key], 2: [s.tmp / "a-file"]},
        "demo-data": {
            0: [s.tmp / "d", "--patients", "1", "--images-per-side", "1", "--json"],
            2: [s.tmp / "d2", "--images-per-side", "many"],
        },
        "ingest": {
            0: [s.demo / "dicom", "--json", *w],
            1: [s.tmp / "notdicom", *w],
            2: [s.demo / "dicom", "--frames", "sideways", *w],
        },
        "ingest-clinical": {
            0: [s.demo / "clinical.csv", "--json", *w],
            1: [s.tmp / "bad.csv", *w],
            2: [s.tmp / "missing.csv", *w],
        },
        "status": {0: ["--json", *w], 1: bad, 2: ["-w", s.tmp / "not-a-workspace"]},
        "images": {0: ["--json", *w], 1: bad, 2: ["--bogus", *w]},
        "cohort": {0: ["--json", *w], 1: bad, 2: ["--bogus", *w]},
        "rater add": {0: ["AN9", "--json", *w], 1: ["AN9", *bad], 2: ["a/b", *w]},
        "rater list": {0: ["--json", *w], 1: bad, 2: ["--bogus", *w]},
        "export itksnap": {
            0: ["--rater", "rater1", "--out", s.tmp / "ex", "--json", *w],
            1: ["--rater", "rater1", "--out", s.tmp / "ex1", *bad],
            2: ["--rater", "NOBODY", "--out", s.tmp / "ex2", *w],
        },
        "export dicom-seg": {
            0: [
                "--rater",
                "rater1",
                "--dicom-root",
                s.demo / "dicom",
                "--out",
                s.tmp / "seg",
                "--images",
                "1,2",
                "--json",
                *w,
            ],
            # no original under the root: each image refused
            1: [
                "--rater",
                "rater1",
                "--dicom-root",
                s.tmp / "notdicom",
                "--out",
                s.tmp / "seg1",
                *w,
            ],
            2: ["--rater", "NOBODY", "--dicom-root", s.demo / "dicom", "--out", s.tmp / "seg2", *w],
        },
        "labelstudio push": {
            0: ["--rater", "rater1", *ls, "--local-root", s.ls_root, "--images", "1", "--json", *w],
            1: [
                "--rater",
                "rater2",
                "--url",
                "http://127.0.0.1:9",
                "--token",
                "x",
                "--local-root",
                s.ls_root,
                *w,
            ],  # no server there
            2: ["--rater", "NOBODY", *ls, "--local-root", s.ls_root, *w],
        },
        "sync itksnap": {
            0: [*labels1, "--json", *w],
            1: [s.tmp / "badlabels", *labels1[1:], *w],
            2: [labels1[0], "--rater", "NOBODY", *w],
        },
        "sync labelstudio": {
            0: [
                "--rater",
                "rater1",
                "--export",
                s.tmp / "export.json",
                "--dicom-root",
                s.demo / "dicom",
                "--json",
                *w,
            ],
            1: [
                "--rater",
                "rater1",
                "--export",
                s.tmp / "export-gone.json",
                "--dicom-root",
                s.demo / "dicom",
                *w,
            ],
            2: ["--rater", "rater1", "--export", s.tmp / "bad.csv", *w],  # not JSON
        },
        "labels": {0: ["--json", *w], 1: bad, 2: ["--rater", "NOBODY", *w]},
        "agreement": {
            0: ["--json", "--out", s.tmp / "agr", *w],
            1: ["--sample", "300", *w],
            2: ["--raters", "rater1", *w],
        },
        "consensus": {
            0: ["--method", "majority", "--json", *w],
            1: ["--raters", "rater1", *w],
            2: ["--method", "rater", *w],
        },
        "raters": {0: ["--json", *w], 1: bad, 2: ["--rater", "NOBODY", *w]},
        "split create": {
            0: ["fresh", "--ratios", "1:1:1", "--folds", "0", "--json", *w],
            1: ["s", *w],
            2: ["other", "--ratios", "x", *w],
        },
        "split show": {0: ["s", "--json", *w], 1: ["nope", *w], 2: w},
        "split check": {0: ["s", "--json", *w], 1: ["nope", *w], 2: w},
        "split export": {
            0: ["s", "--format", "csv", "--out", s.tmp / "sx", "--json", *w],
            1: ["nope", "--out", s.tmp / "sx1", *w],
            2: ["s", "--format", "zip", "--out", s.tmp / "sx2", *w],
        },
        "train": {
            0: [
                "--split",
                "s",
                "--preset",
                "tiny",
                "--epochs",
                "1",
                "--batch",
                "4",
                "--device",
                "cpu",
                "--json",
                *t,
            ],
            1: ["--split", "nope", "--preset", "tiny", *t],
            2: ["--split", "s", "--preset", "huge", *t],
        },
        "score": {
            0: [str(s.run), "--no-store", "--out", s.tmp / "sc", "--json", *t],
            1: [str(s.run), *bad],  # an unknown run is a usage error: tests/cli/test_unknown_run.py
            2: [str(s.run), "--set", "all", *t],
        },
        "runs": {0: ["--json", *t], 1: bad, 2: ["--bogus", *t]},
        "prelabel": {
            0: [s.run, "--rater", "rater1", *ls, "--device", "cpu", "--json", "-w", s.drafted],
            1: [s.run, "--rater", "rater1", *ls, *bad],
            2: [s.run, "--rater", "rater1", "--device", "tpu", "-w", s.drafted],
        },
        # serve runs until it is stopped (tests/learning/test_serving.py serves its app)
        "serve": {1: [s.run, *bad], 2: [s.run, "--device", "tpu", *t]},
        "labelstudio connect": {
            0: [
                "--rater",
                "rater1",
                "--backend-url",
                s.backend_url,
                *ls,
                "--json",
                "-w",
                s.drafted,
            ],
            1: ["--rater", "rater1", "--backend-url", s.backend_url, *ls, *bad],
            2: ["--rater", "NOBODY", "--backend-url", s.backend_url, *ls, "-w", s.drafted],
        },
        "next": {
            0: ["--rater", "rater1", "--device", "cpu", "--json", *t],
            1: ["--rater", "rater1", *bad],
            2: ["--rater", "rater1", "--n", "0", *t],
        },
        "qa list": {0: ["--json", *w], 1: bad, 2: ["--status", "nope", *w]},
        "qa resolve": {
            0: [s.flag, "--note", "checked: right as it is", "--status", "accepted", "--json", *w],
            1: [s.flag, "--note", "x", *bad],
            2: [s.flag, "--note", "x", "--status", "open", *w],
        },
        "qa report": {
            0: ["--out", s.tmp / "qa-report", "--top", "2", "--json", *w],
            1: bad,
            2: ["--top", "-1", *w],
        },
        "report": {
            0: ["--json", "--out", s.tmp / "study.html", *t],
            1: ["--out", s.tmp / "a-file" / "study.html", *t],  # a file where a folder goes
            2: ["--run", "999", *t],
        },
    }


COMMANDS = [name for name, _ in LEAVES]


def test_every_command_has_its_cases():
    fake = Site(*(Path("x"),) * 5, 1, "u", "t", Path("r"))
    cases = _cases(fake)
    assert set(cases) == set(COMMANDS)
    # every command that can reject or fail something has a 1 (demo-data only writes)
    assert {c for c, codes in cases.items() if 1 not in codes} == {"demo-data"}
    assert all(2 in codes for codes in cases.values())
    assert {c for c, codes in cases.items() if 0 not in codes} == {"serve"}  # runs until stopped


@pytest.mark.parametrize("command", COMMANDS)
def test_exit_codes(site, command):
    for code, args in sorted(_cases(site)[command].items()):
        argv = [*command.split(), *(str(a) for a in args)]
        res = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
        assert res.exception is None or isinstance(res.exception, SystemExit), (
            f"{argv}: a traceback ({res.exception!r})"
        )
        assert res.exit_code == code, f"{argv}: exit {res.exit_code}, not {code}\n{res.output}"
        if code == 0 and "--json" in argv:
            json.loads(res.stdout)
        if code:
            assert "Traceback" not in res.output
            assert res.stderr.strip(), f"{argv}: nothing says why"


@pytest.mark.parametrize(
    "ratios", ["1e308:1e308:1e308", "1.7e308:1.7e308:1", "5e-324:1:1", "inf:1:1", "1:nan:1"]
)
def test_ratios_that_overflow_or_underflow_are_a_usage_error(tmp_path, ratios):
    """1e308:1e308:1e308 summed to inf, every share became 0 and every patient went to train
    (exit 0). Now: one line, exit 2, before the catalogue is looked at."""
    root = init_workspace(tmp_path / "ws").root
    res = CliRunner().invoke(app, ["split", "create", "x", "--ratios", ratios, "-w", str(root)])
    assert res.exit_code == 2, res.output
    assert "--ratios" in res.output and len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    "option", [["-j", "99999999999999999999999"], ["-j", "-5"], ["-j", "257"], ["--batch", "0"]]
)
def test_ingest_worker_and_batch_counts_out_of_range_are_a_usage_error(tmp_path, option):
    """-j 10**22 would start one process per file (-j -5 silently meant 0): exit 2."""
    root = init_workspace(tmp_path / "ws").root
    (tmp_path / "in").mkdir()
    args = ["ingest", str(tmp_path / "in"), *option, "-w", str(root)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
