"""A real PACS for the tests and benchmarks: Debian's Orthanc (1.10) with its DICOMweb plugin.

:func:`start_orthanc` writes an Orthanc configuration into a fresh folder (its own storage and
index, so nothing is shared with another run or with a system Orthanc), starts
``/usr/sbin/Orthanc`` in a session of its own, waits until ``/system`` answers, and stops it
(SIGTERM to its process group, SIGKILL after 20 s) on leaving the ``with`` block.

Reachable from this machine only, as far as Orthanc 1.10 allows: it has no setting for the
address it binds (HTTP and DICOM listen on every interface), so the HTTP server refuses every
client that is not on loopback (``RemoteAccessAllowed: false``) and the DICOM server is off
unless ``dicom_port`` is given. With a DICOM port, stores and echoes are accepted from any
caller (as storescu, an "ultrasound machine", is not a registered modality) while find, get
and move are answered only for the ``modalities`` given, checked by host too.

The ports are free ones picked at start; a start that loses its port to another process (the
pick and Orthanc's bind race) is retried on new ones. The configuration and Orthanc's log
stay in the folder for a failing test to show.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from datatool.demo.labelstudio import stop_process_group

ORTHANC_EXE = Path(os.environ.get("DATATOOL_ORTHANC", "/usr/sbin/Orthanc"))
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3
INSTALL_HINT = (
    "install Debian's orthanc and orthanc-dicomweb packages "
    "(apt-get install orthanc orthanc-dicomweb)"
)


class OrthancError(RuntimeError):
    """Orthanc could not be started (the message names the log to read)."""


@dataclass
class OrthancServer:
    """A running Orthanc. ``dicomweb_url`` is None when the plugin was not loaded;
    ``dicom_port`` None when its DICOM server is off."""

    http_url: str
    dicomweb_url: str | None
    dicom_port: int | None
    aet: str
    folder: Path
    log: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def auth_header(self) -> dict[str, str]:
        if self.username is None:
            return {}
        pair = f"{self.username}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> bytes:
        """One REST call with the server's credentials; raises urllib's errors."""
        headers = self.auth_header()
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(
            self.http_url + path, data=data, method=method, headers=headers
        )
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.request(path))

    def upload(self, file: Path) -> dict:
        """POST one DICOM file to /instances (Orthanc's REST upload); its answer."""
        return json.loads(self.request("/instances", method="POST", data=Path(file).read_bytes()))

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc)
            self._proc = None


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed here, else why not."""
    if not ORTHANC_EXE.exists():
        return f"Orthanc is not installed ({ORTHANC_EXE} is missing): {INSTALL_HINT}"
    if not os.access(ORTHANC_EXE, os.X_OK):
        return f"{ORTHANC_EXE} is not executable"
    if not (PLUGIN_DIR / DICOMWEB_PLUGIN).exists():
        return (
            f"Orthanc's DICOMweb plugin is missing ({PLUGIN_DIR / DICOMWEB_PLUGIN}): {INSTALL_HINT}"
        )
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_config(
    base: Path,
    *,
    http_port: int,
    dicom_port: int | None,
    aet: str,
    modalities: dict[str, tuple[str, str, int]] | None,
    dicomweb: bool,
    users: dict[str, str] | None,
) -> dict:
    """The configuration written for one start (storage and index inside ``base``)."""
    config: dict = {
        "Name": "datatool-test-pacs",
        "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": dicom_port is not None,
        "DicomPort": dicom_port if dicom_port is not None else 4242,
        "DicomAet": aet,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            name: [m_aet, host, port] for name, (m_aet, host, port) in (modalities or {}).items()
        },
        "DicomModalitiesInDatabase": False,
        "OrthancPeersInDatabase": False,
        "UnknownSopClassAccepted": False,
        "SaveJobs": False,
        "StableAge": 1,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "ExecuteLuaEnabled": False,
        "MetricsEnabled": True,
        "Plugins": [str(PLUGIN_DIR / DICOMWEB_PLUGIN)] if dicomweb else [],
    }
    if dicomweb:
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "MainDicomTags",
            "SeriesMetadata": "Full",
        }
    return config


def _system_answers(server: OrthancServer) -> bool:
    try:
        server.request("/system")
        return True
    except (OSError, urllib.error.HTTPError):
        return False


@contextmanager
def start_orthanc(
    folder: Path,
    *,
    dicom_port: int | None = None,
    aet: str = "ORTHANC",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    dicomweb: bool = True,
    users: dict[str, str] | None = None,
    http_port: int | None = None,
    verbose: bool = False,
) -> Iterator[OrthancServer]:
    """Orthanc running from a fresh folder made inside ``folder``; stopped on leaving.

    ``dicom_port``: 0 picks a free port; None leaves the DICOM server off. ``modalities``:
    name -> (AE title, host, port) that may find, get and move. ``users``: HTTP basic
    logins (authentication on); None leaves authentication off. ``verbose``: Orthanc logs
    every HTTP request and DICOM operation (a test counts retrievals in the log). Raises
    :class:`OrthancError` when Orthanc is missing or does not answer within a minute."""
    reason = orthanc_available()
    if reason is not None:
        raise OrthancError(reason)
    Path(folder).mkdir(parents=True, exist_ok=True)
    server = None
    last_error = ""
    for _attempt in range(START_ATTEMPTS):
        base = Path(tempfile.mkdtemp(prefix="orthanc-", dir=folder))
        (base / "storage").mkdir()
        (base / "index").mkdir()
        port = http_port or free_port()
        dport = None if dicom_port is None else (dicom_port or free_port())
        config = orthanc_config(
            base,
            http_port=port,
            dicom_port=dport,
            aet=aet,
            modalities=modalities,
            dicomweb=dicomweb,
            users=users,
        )
        config_path = base / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = base / "orthanc.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(ORTHANC_EXE), *(["--verbose"] if verbose else []), str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=base,
                start_new_session=True,
            )
        user, password = next(iter((users or {}).items()), (None, None))
        server = OrthancServer(
            http_url=f"http://127.0.0.1:{port}",
            dicomweb_url=f"http://127.0.0.1:{port}/dicom-web" if dicomweb else None,
            dicom_port=dport,
            aet=aet,
            folder=base,
            log=log,
            username=user,
            password=password,
            _proc=proc,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _system_answers(server):
            time.sleep(0.1)
        if proc.poll() is None and _system_answers(server):
            break
        server.stop()
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        last_error = f"Orthanc did not start (log {log}): {' | '.join(tail)}"
        server = None
        if http_port is not None:
            break
    if server is None:
        raise OrthancError(last_error)
    try:
        yield server
    finally:
        server.stop()


def remove_folder(server: OrthancServer) -> None:
    """Delete a stopped server's folder (storage, index, log)."""
    shutil.rmtree(server.folder, ignore_errors=True)


# dcmtk's storescu proposes the uncompressed syntaxes and, with one of these options, one
# compressed family: sending each file in its own syntax (no conversion) takes one
# association per option, as a scanner's would
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
}


def storescu_groups(files: list[Path]) -> dict[str, list[Path]]:
    """``files`` grouped by the storescu option that proposes their own transfer syntax
    (``-xe``, explicit little endian, for the uncompressed ones)."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    for f in files:
        syntax = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(STORESCU_PROPOSE.get(syntax, "-xe"), []).append(f)
    return groups
