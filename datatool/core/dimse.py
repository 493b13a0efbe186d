"""DICOM network (DIMSE) basics shared by ``pull --dimse`` and the SEG push: where a PACS is,
which storage classes and transfer syntaxes datatool takes, what a status code means."""

from __future__ import annotations

import re
from dataclasses import dataclass

from datatool.core.errors import UsageError

#: Storage SOP classes ultrasound sends (and ingest decodes).
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage

#: The transfer syntaxes ultrasound machines use (pynetdicom offers only the uncompressed
#: ones by default): one presentation context per class and syntax, so the PACS can send
#: each file as it stores it, without transcoding.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable characters, no backslash


@dataclass(frozen=True)
class Peer:
    """A DICOM node: host, port and the AE title it answers to."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = "DATATOOL"

    def __str__(self) -> str:
        return f"{self.host}:{self.port} {self.called_ae}"


def parse_peer(address: str, called_ae: str | None, calling_ae: str, option: str) -> Peer:
    """``HOST:PORT`` and the AE titles from the command line (usage errors say what's wrong)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{option} {address!r}: give HOST:PORT, e.g. pacs.example.org:104")
    if not called_ae:
        raise UsageError(f"{option} needs --called-ae, the AE title of the PACS")
    for name, title in (("--called-ae", called_ae), ("--calling-ae", calling_ae)):
        if not AE_RE.match(title) or not title.strip():
            raise UsageError(f"{name} {title!r}: an AE title is 1-16 printable characters")
    return Peer(host.strip("[]"), int(port_text), called_ae.strip(), calling_ae.strip())


STATUS_WORDS = {
    0x0000: "success",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0211: "unrecognised operation",
    0xB000: "coercion of data elements / some sub-operations failed",
    0xB007: "data set does not match SOP class (warning)",
    0xB006: "elements discarded",
}


def status_text(code: int | None) -> str:
    """``0x0000 success``; a code of no known meaning by its class."""
    if code is None:
        return "no answer"
    word = STATUS_WORDS.get(code)
    if word is None:
        if code & 0xF000 == 0xA000 or code & 0xF000 == 0xC000:
            word = "failure"
        elif code & 0xF000 == 0xB000:
            word = "warning"
        else:
            word = "status"
    return f"0x{code:04X} {word}"
