"""Shared fixtures: workspaces, the real pydicom-data ultrasound files, the demo dataset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from datatool.core.workspace import init_workspace, open_workspace
from tests.ci import require

# The Label Studio server, one for every test module that asks for it without importing it
# itself (a module that imports the fixture gets a server of its own).
from tests.labelstudio_server import labelstudio_server, start_early, stop_early

__all__ = ["labelstudio_server"]  # the fixture counts as used

# Rich wraps the CLI's output to the terminal, 80 columns where there is none; a test that
# looks for a printed path would then depend on how long the temp folder's path is. Tests
# that check wrapping set COLUMNS themselves.
os.environ["COLUMNS"] = "200"

PYDICOM_DATA_US = [
    "US1_UNCR.dcm",
    "US1_J2KR.dcm",
    "US1_J2KI.dcm",
    "OBXXXX1A.dcm",
    "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm",
    "OBXXXX1A_rle.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "gdcm-US-ALOKA-16_big.dcm",
    "color3d_jpeg_baseline.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
]


@pytest.fixture(scope="session")
def pydicom_data() -> Path:
    data_store = require("data_store", "pydicom-data is not installed (pip install -e '.[test]')")
    return Path(data_store.__file__).parent / "data"


@pytest.fixture()
def us_file(pydicom_data, tmp_path):
    """Copy one named pydicom-data file into a fresh folder; returns its path."""

    def copy(name: str, folder: str = "in") -> Path:
        dest = tmp_path / folder
        dest.mkdir(exist_ok=True)
        return Path(shutil.copy(pydicom_data / name, dest / name))

    return copy


@pytest.fixture()
def ws(tmp_path):
    root = tmp_path / "ws"
    init_workspace(root)
    workspace = open_workspace(root)
    yield workspace
    workspace.close()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset (3 patients), made once per test session."""
    from datatool.demo.generator import write_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, patients=3, seed=7, images_per_side=(2, 2))
    return out


@pytest.fixture()
def cli_env(tmp_path):
    """Environment for running the datatool CLI as a subprocess."""
    env = dict(os.environ)
    env.pop("DATATOOL_WORKSPACE", None)
    env.pop("DATATOOL_DB_URL", None)
    env.pop("DATATOOL_KEY_FILE", None)
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_dir):
    """A workspace with the demo's two raters, a STAPLE consensus, a split ``s`` and one
    tiny run trained for 3 epochs on the CPU: ``(workspace, run id)``. Shared by the whole
    session: tests that add labels or runs must not assume exact counts."""
    from datatool.analysis.consensus import make_consensus
    from datatool.learning.splits import create_split
    from datatool.learning.training import TrainConfig, train
    from tests.labels_util import ingest_demo_with_labels

    root = init_workspace(tmp_path_factory.mktemp("trained") / "ws").root
    workspace = open_workspace(root)
    ingest_demo_with_labels(workspace, demo_dir)
    make_consensus(workspace, "staple")
    create_split(workspace, "s", ratios="1:1:1", folds=0, seed=1)
    run = train(workspace, "s", config=TrainConfig(preset="tiny", epochs=3, batch=4, device="cpu"))
    assert run is not None
    yield workspace, run.run
    workspace.close()


@pytest.fixture(scope="session")
def trained_interactive(trained, tmp_path_factory):
    """A copy of ``trained`` with one more run: the tiny preset trained with clicks
    (``--interactive``) for 3 epochs on the CPU: ``(workspace, interactive run id)``."""
    from datatool.learning.training import TrainConfig, train
    from tests.qa_util import clone

    source, _ = trained
    workspace = clone(source, tmp_path_factory.mktemp("interactive") / "ws")
    config = TrainConfig(preset="tiny", epochs=3, batch=4, device="cpu", interactive=True)
    run = train(workspace, "s", config=config)
    assert run is not None
    yield workspace, run.run
    workspace.close()


def pytest_collection_finish(session):
    start_early(session)  # the Label Studio server starts while the first tests run


def pytest_sessionfinish(session, exitstatus):
    stop_early()
