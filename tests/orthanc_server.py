"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin (datatool.demo.orthanc).

``orthanc_server`` is one server for the test session: HTTP and DICOMweb on a free loopback
port, its DICOM server on another, authentication off. A test that needs other settings (a
login, its own modalities) calls :func:`orthanc` with them and gets a server of its own.
Where Orthanc is not installed the tests skip with the reason, and fail under CI
(tests/ci.py); ``.ci/run`` installs Debian's orthanc and orthanc-dicomweb when missing.

Import the fixture in the test module that uses it (``from tests.orthanc_server import
orthanc_server``): it is not in conftest.py, so a session without such a test starts nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from datatool.demo.orthanc import OrthancError, OrthancServer, orthanc_available, start_orthanc
from tests.ci import unavailable


@contextmanager
def orthanc(folder: Path, **options) -> Iterator[OrthancServer]:
    """A server of its own (options as :func:`start_orthanc`); skip, or fail under CI,
    where Orthanc is missing or will not start."""
    reason = orthanc_available()
    if reason is not None:
        unavailable(reason)
    try:
        context = start_orthanc(folder, **options)
        server = context.__enter__()
    except OrthancError as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory) -> Iterator[OrthancServer]:
    with orthanc(tmp_path_factory.mktemp("orthanc"), dicom_port=0) as server:
        yield server
