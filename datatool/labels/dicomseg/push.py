"""DICOM SEG files back to the PACS: STOW-RS (``export dicom-seg --stow URL``) or C-STORE
(``--dimse HOST:PORT --called-ae AE``), one request per object so that what the PACS
answered is known per object: the HTTP status (and the STOW response's failure reason) or
the C-STORE status code.

The files carry the original identifiers (see ``export dicom-seg``): they go to the PACS they
came from and nowhere else; nothing of their content is printed or logged, only file names
and the PACS's answers. STOW credentials as for ``pull`` (DATATOOL_DICOMWEB_USER and
DATATOOL_DICOMWEB_PASSWORD, or DATATOOL_DICOMWEB_TOKEN), never written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datatool.core.dimse import SEG_CLASS, Peer, quiet_network_logs, status_text
from datatool.core.errors import DatatoolError

if TYPE_CHECKING:
    from datatool.labels.dicomseg.export import DicomSegExport

TIMEOUT_S = 60
SEG_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR LE
FAILURE_REASON = "00081197"  # in the STOW response's Failed SOP Sequence (00081198)


@dataclass
class PushItem:
    """What the PACS answered for one SEG file."""

    image: str  # the image the SEG labels (img000123 (L_01.dcm))
    file: str  # the SEG's file name in the export folder
    answer: str  # HTTP 200 / 0x0000 success / the one-line reason nothing was sent
    ok: bool


def _read(path: Path):
    import pydicom

    return pydicom.dcmread(path)


def push_stow(
    url: str,
    files: Iterable[tuple[str, Path]],
    environ: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[PushItem]:
    """STOW-RS each ``(image, path)`` to the DICOMweb service at ``url``."""
    import requests

    from datatool.ingest.pull import DicomWebSource, http_error_line

    files = list(files)
    client = DicomWebSource(url, environ).client
    codes: list[int] = []
    client._session.hooks["response"].append(lambda r, *a, **k: codes.append(r.status_code))
    items = []
    for done, (image, path) in enumerate(files, start=1):
        codes.clear()
        try:
            ds = _read(path)
        except Exception as exc:  # a file that cannot be read is that file's answer
            items.append(PushItem(image, path.name, f"cannot read the SEG file ({exc})", False))
            continue
        try:
            answer = client.store_instances([ds])
        except requests.RequestException as exc:
            line = http_error_line(exc, "STOW-RS")
            if isinstance(exc, requests.ConnectionError):
                raise DatatoolError(f"{client.base_url}: {line}") from None
            items.append(PushItem(image, path.name, line.removeprefix("STOW-RS: "), False))
            continue
        code = codes[-1] if codes else 200
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "")
            items.append(PushItem(image, path.name, f"HTTP {code}, failure reason {reason}", False))
        else:
            items.append(PushItem(image, path.name, f"HTTP {code}", 200 <= code < 300))
        if progress:
            progress(done, len(files))
    client._session.close()
    return items


def push_dimse(
    peer: Peer,
    files: Iterable[tuple[str, Path]],
    progress: Callable[[int, int], None] | None = None,
) -> list[PushItem]:
    """C-STORE each ``(image, path)`` to ``peer`` on one association."""
    from pynetdicom import AE

    quiet_network_logs()
    files = list(files)
    if not files:
        return []
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for syntax in SEG_SYNTAXES:
        ae.add_requested_context(SEG_CLASS, syntax)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        raise DatatoolError(
            f"{peer}: the PACS {why} (check HOST:PORT and --called-ae, and that it accepts "
            f"stores from the calling AE title {peer.calling_ae})"
        )
    items = []
    try:
        for done, (image, path) in enumerate(files, start=1):
            try:
                ds = _read(path)
                status = assoc.send_c_store(ds)
            except Exception as exc:  # this file's answer; the others go on
                items.append(PushItem(image, path.name, f"not sent: {type(exc).__name__}", False))
                continue
            code = int(status.Status) if status is not None and "Status" in status else None
            ok = code is not None and (code == 0 or code & 0xF000 == 0xB000)
            items.append(PushItem(image, path.name, status_text(code), ok))
            if progress:
                progress(done, len(files))
    finally:
        if assoc.is_established:
            assoc.release()
    return items


def push_export(
    result: DicomSegExport,
    *,
    stow: str | None = None,
    peer: Peer | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomSegExport:
    """Send every SEG file the export wrote or found unchanged to the PACS (``stow`` URL or
    DIMSE ``peer``) and record its answer per file in ``result``."""
    files = [
        (item.image, result.out_dir / item.file)
        for item in result.items
        if item.file and item.status in ("written", "unchanged")
    ]
    if stow is not None:
        result.pushed_to = stow.rstrip("/")
        result.pushed = push_stow(stow, files, progress=progress)
    elif peer is not None:
        result.pushed_to = str(peer)
        result.pushed = push_dimse(peer, files, progress=progress)
    return result
