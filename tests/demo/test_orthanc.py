"""The test PACS helper: Orthanc from a written configuration, fresh storage, loopback HTTP
only, DICOMweb answering, authentication when a login is given, stopped on leaving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from datatool.demo.orthanc import orthanc_config
from tests.orthanc_server import orthanc


def test_config_keeps_orthanc_to_itself(tmp_path):
    config = orthanc_config(
        tmp_path,
        http_port=1,
        dicom_port=None,
        aet="PACS",
        modalities={"us": ("DT", "127.0.0.1", 2)},
        dicomweb=True,
        users=None,
    )
    assert config["RemoteAccessAllowed"] is False
    assert config["DicomServerEnabled"] is False
    assert config["StorageDirectory"].startswith(str(tmp_path))
    assert config["IndexDirectory"].startswith(str(tmp_path))
    assert config["DicomModalities"] == {"us": ["DT", "127.0.0.1", 2]}
    assert config["Plugins"][0].endswith("libOrthancDicomWeb.so")
    assert config["AuthenticationEnabled"] is False


def test_start_answer_upload_and_stop(tmp_path, pydicom_data):
    with orthanc(tmp_path, dicom_port=0, aet="PACS") as server:
        system = server.get_json("/system")
        assert system["DicomAet"] == "PACS" and system["DicomPort"] == server.dicom_port
        assert server.get_json("/statistics")["CountInstances"] == 0  # fresh storage
        server.upload(pydicom_data / "US1_UNCR.dcm")
        with urllib.request.urlopen(f"{server.dicomweb_url}/studies", timeout=10) as response:
            studies = json.loads(response.read())
        assert [s["0020000D"]["Value"][0] for s in studies] == [
            "1.3.6.1.4.1.5962.1.2.13.20040826185059.5457"
        ]
        proc = server._proc
    assert proc is not None and proc.poll() is not None  # stopped on leaving
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.http_url}/system", timeout=5)


def test_login_required_when_users_given(tmp_path):
    with orthanc(tmp_path, users={"pacs-user": "s3cret"}) as server:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.http_url}/system", timeout=10)
        assert refused.value.code == 401
        assert server.get_json("/system")["Name"] == "datatool-test-pacs"
