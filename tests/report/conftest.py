"""A labelled demo workspace with an agreement sample and a STAPLE consensus (no model), and
a fresh copy of it per test, for the report's tests that need no trained run."""

from __future__ import annotations

import pytest

from datatool.analysis.agreement import run_agreement
from datatool.analysis.consensus import make_consensus
from datatool.core.workspace import init_workspace, open_workspace
from tests.disk import small_tmpfs
from tests.labels_util import ingest_demo_with_labels
from tests.qa_util import clone


@pytest.fixture(scope="module")
def rated_demo(demo_dir, tmp_path_factory):
    root = init_workspace(tmp_path_factory.mktemp("rated") / "ws").root
    ws = open_workspace(root)
    ingest_demo_with_labels(ws, demo_dir)
    agreement = run_agreement(ws)
    consensus = make_consensus(ws, "staple")
    yield ws, agreement, consensus
    ws.close()


@pytest.fixture()
def rated_copy(rated_demo, tmp_path):
    """A copy of the rated demo workspace this test may change."""
    ws0, agreement, consensus = rated_demo
    ws = clone(ws0, tmp_path / "copy")
    yield ws, agreement, consensus
    ws.close()


@pytest.fixture()
def small_disk(tmp_path):
    """A 16 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    with small_tmpfs(tmp_path, "16k") as mount:
        yield mount
