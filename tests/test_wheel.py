"""The built wheel works on its own: installed into a fresh virtual environment outside the
checkout, it runs the pipeline from init to a one-epoch training run.

The fresh environment borrows the test environment's dependencies (torch alone is 700 MB)
through a path entry to its site-packages, so nothing is downloaded; datatool itself comes
only from the wheel: the checkout is not on the path, and the editable install's import hook
(a .pth file) is not run for a borrowed folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        cwd=out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (found,) = out.glob("datatool-*.whl")
    return found


def test_the_wheel_is_one_namespaced_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("datatool-")}
    assert tops == {"datatool"}  # no generic top-level 'model' or 'migrations'
    for needed in (
        "datatool/schemas/anterior_sciatic.yaml",
        "datatool/migrations/env.py",
        "datatool/migrations/script.py.mako",
        "datatool/migrations/versions/0001_initial_catalogue.py",
        "datatool/model/network.py",
        "datatool/cli/render.py",
        "datatool/report/templates/report.html.j2",
        "datatool/report/templates/report.md.j2",
        "datatool/report/templates/reference_study.yaml",
    ):
        assert needed in names, needed


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("fresh")
    env_dir = home / "venv"
    venv.create(env_dir, with_pip=False)
    site = Path(
        subprocess.run(
            [
                str(env_dir / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        cwd=home,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    borrowed = sysconfig.get_paths()["purelib"]  # the test environment's dependencies
    (site / "zz_borrowed_dependencies.pth").write_text(borrowed + "\n")
    return env_dir


def test_the_installed_wheel_runs_the_pipeline(fresh_env, tmp_path):
    python = str(fresh_env / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATATOOL_", "PYTHON"))}
    env["COLUMNS"] = "200"
    work = tmp_path / "study"
    work.mkdir()

    def run(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [python, "-m", "datatool", *args], capture_output=True, text=True, cwd=cwd, env=env
        )
        assert res.returncode == 0, f"datatool {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        return res

    where = subprocess.run(
        [
            python,
            "-c",
            "import datatool, sys; print(datatool.__file__);"
            "import importlib.util as u; print(u.find_spec('model'), u.find_spec('migrations'))",
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    ).stdout.split("\n")
    assert str(fresh_env) in where[0] and str(ROOT) not in where[0]
    assert where[1] == "None None"
    run("demo-data", "data", "--patients", "4", "--images-per-side", "1", "--seed", "3")
    run("init", "ws")
    ws = work / "ws"
    run("ingest", "../data/dicom", cwd=ws)
    for rater in ("rater1", "rater2"):
        run("rater", "add", rater, cwd=ws)
        run(
            "sync",
            "itksnap",
            f"../data/labels/{rater}",
            "--rater",
            rater,
            "--dicom-root",
            "../data/dicom",
            cwd=ws,
        )
    report = json.loads(run("agreement", "--json", cwd=ws).stdout)
    assert report["sample"]["images"] == 8
    run("consensus", "--method", "staple", cwd=ws)
    run("split", "create", "s", "--ratios", "2:1:1", "--folds", "0", cwd=ws)
    trained = json.loads(
        run(
            "train",
            "--split",
            "s",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--json",
            cwd=ws,
        ).stdout
    )
    assert trained["epochs_done"] == 1
    # the study report's templates and published numbers come from the wheel
    study = json.loads(run("report", "--json", cwd=ws).stdout)
    assert study["run"]["run"] == trained["run"] and study["agreement"]["images"] == 8
    page = (ws / "reports" / "study.html").read_text()
    assert "Bland-Altman" in page and "0.842" in page
