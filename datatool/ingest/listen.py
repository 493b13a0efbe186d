"""``datatool listen``: a DICOM storage SCP (pynetdicom) that feeds the ingest pipeline.

An ultrasound machine (or a PACS, or dcmtk's ``storescu``) sends its images by C-STORE. Each
object is written to the workspace's spool as it arrives (pynetdicom's
``STORE_RECV_CHUNKED_DATASET``: the fragments go to a file in ``spool/partial`` instead of
memory), flushed to the disk (fsync), moved whole into ``spool/incoming`` with one rename
(fsynced too), and only then is the C-STORE success (0x0000) returned. This process's main
thread ingests the spool in small batches through the same steps as ``datatool ingest``
(:mod:`datatool.ingest.spool`), with ``workers`` processes decoding. On start the
spool left by a stopped or killed listener is ingested first, then associations are accepted.

Limits: the calling AE titles in ``allow`` only (others are rejected at association), at most
``max_associations`` at once, PDUs of at most MAX_PDU bytes, and objects of at most
``max_object_mb`` MiB: the bytes of each object are counted as its PDUs arrive, and one over the
bound aborts the association there (a DIMSE peer cannot be told to stop sending otherwise), the
half-received file removed; nothing over the bound is ever held whole, on disk or in memory.
An object that cannot be spooled (a full disk) is answered 0xA700 (out of resources).

What is logged: one line per association (calling AE title, peer address, objects), one line
per object that was refused, rejected, quarantined or kept aside (its receipt and ingest's
one-line reason). Never a patient's name or ID, never a UID, never a traceback: pynetdicom's
own logger is silenced (its debug output can dump a dataset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from datatool.core.catalogue import audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.workspace import Workspace
from datatool.ingest.spool import Spool, SpoolIngest, SpoolReport

DEFAULT_PORT = 11112
DEFAULT_AE = "DATATOOL"
DEFAULT_HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "::1")  # addresses, not a name a hosts file may point elsewhere
MAX_PDU = 1 << 20  # bytes of one PDU this SCP receives (told to the peer at association)
MAX_ASSOCIATIONS = 10
MAX_OBJECT_MB = 1024  # a 2 GB object is refused by default; a long cine is a few hundred MB
NETWORK_TIMEOUT = 60.0  # seconds an association may stay silent
SPOOL_BATCH = 16  # objects per catalogue transaction
RETRY_SECONDS = 5.0  # after the spool could not be ingested (a full disk)

# pydicom.uid's names for them; the first four are pynetdicom's defaults
DEFAULT_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
}
ADDED_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (8-bit)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
TRANSFER_SYNTAXES = [*DEFAULT_SYNTAXES, *ADDED_SYNTAXES]

STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image - For Presentation",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
}
VERIFICATION = "1.2.840.10008.1.1"

log = logging.getLogger("datatool.listen")


@dataclass
class ListenOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    ae_title: str = DEFAULT_AE
    allow: list[str] = field(default_factory=list)
    max_associations: int = MAX_ASSOCIATIONS
    max_object_mb: int = MAX_OBJECT_MB
    workers: int = 0
    batch: int = SPOOL_BATCH


@dataclass
class ListenReport:
    """What one run of the listener did, until it stopped."""

    address: str
    ae_title: str
    associations: int = 0
    refused_associations: int = 0  # calling AE title not allowed
    objects_acknowledged: int = 0
    objects_refused: int = 0  # over the size bound, or could not be spooled
    spooled_at_start: int = 0
    spool: SpoolReport = field(default_factory=SpoolReport)

    def as_dict(self) -> dict:
        return asdict(self)


def check_options(opts: ListenOptions) -> None:
    """Refuse options that make no sense, or an open door: beyond loopback without --allow."""
    if not 0 < opts.port < 65536:
        raise UsageError(f"--port must be 1-65535, not {opts.port}")
    if not _valid_title(opts.ae_title):
        raise UsageError(
            f"--ae-title {opts.ae_title!r}: an AE title is 1-16 characters, printable ASCII "
            "without backslash"
        )
    bad = [t for t in opts.allow if not _valid_title(t)]
    if bad:
        raise UsageError(f"--allow {bad[0]!r}: an AE title is 1-16 printable ASCII characters")
    if opts.host not in LOOPBACK and not opts.allow:
        raise UsageError(
            f"--host {opts.host} listens beyond this machine: name the scanners' calling AE "
            "titles with --allow AE[,AE...] (only they may send), or keep --host 127.0.0.1"
        )
    if opts.max_associations < 1 or opts.max_object_mb < 1 or opts.batch < 1:
        raise UsageError("--max-associations, --max-object-mb and --batch must be at least 1")


def _valid_title(title: str) -> bool:
    text = title.strip()
    return 0 < len(text) <= 16 and all(32 <= ord(c) < 127 and c != "\\" for c in text)


def _quiet_pynetdicom() -> None:
    """pynetdicom logs tracebacks and, at debug level, datasets: none of it reaches a log."""
    logger = logging.getLogger("pynetdicom")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False


class _Scp:
    """The event handlers of one listener (they run in pynetdicom's threads)."""

    def __init__(self, spool: Spool, opts: ListenOptions, report: ListenReport, wake):
        self.spool, self.opts, self.report, self.wake = spool, opts, report, wake
        self.limit = opts.max_object_mb * 1024 * 1024
        self.lock = threading.Lock()
        self.bytes_in: dict[int, int] = {}  # per association: bytes of the object arriving
        self.over: set[int] = set()  # associations aborted for an object over the bound
        self.stored: dict[int, int] = {}  # per association: objects acknowledged

    @staticmethod
    def title(assoc: Any) -> str:
        return str(assoc.requestor.ae_title).strip()

    def on_accepted(self, event: Any) -> None:
        with self.lock:
            self.report.associations += 1
            self.stored[id(event.assoc)] = 0

    def on_rejected(self, event: Any) -> None:
        with self.lock:
            self.report.refused_associations += 1
        log.warning(
            "association from %s refused: calling AE title '%s' is not in --allow",
            event.assoc.requestor.address,
            self.title(event.assoc),
        )

    def on_closed(self, event: Any) -> None:
        key = id(event.assoc)
        with self.lock:
            n = self.stored.pop(key, None)
            self.bytes_in.pop(key, None)
            self.over.discard(key)
        if n is not None:
            log.info(
                "association from AE '%s' (%s) ended: %d objects acknowledged",
                self.title(event.assoc),
                event.assoc.requestor.address,
                n,
            )

    def on_pdu(self, event: Any) -> None:
        """Count each object's bytes as they arrive; abort the association when one is over
        the bound (before pynetdicom has written that PDU)."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        for item in items:
            data = item.presentation_data_value
            if not data:
                continue
            if data[0] & 1:  # a command fragment: a new message begins
                self.bytes_in[key] = 0
                continue
            total = self.bytes_in.get(key, 0) + len(data) - 1
            self.bytes_in[key] = total
            if total > self.limit and key not in self.over:
                self.over.add(key)
                with self.lock:
                    self.report.objects_refused += 1
                log.warning(
                    "object from AE '%s' refused: over %d MiB (--max-object-mb); the "
                    "association was aborted",
                    self.title(event.assoc),
                    self.opts.max_object_mb,
                )
                _drop_partial(event.assoc)
                event.assoc.abort(block=False)

    def on_store(self, event: Any) -> int:
        key = id(event.assoc)
        path: Path | None = None
        with contextlib.suppress(Exception):
            path = Path(event.dataset_path)
        if key in self.over:
            return 0xA700
        if path is None:
            return 0xC000  # nothing to store: cannot understand
        try:
            size = path.stat().st_size
            if size > self.limit + 4096:  # the file meta pynetdicom adds is the 4096
                with self.lock:
                    self.report.objects_refused += 1
                log.warning(
                    "object from AE '%s' refused: over %d MiB (--max-object-mb)",
                    self.title(event.assoc),
                    self.opts.max_object_mb,
                )
                return 0xA700
            self.spool.accept(path, self.title(event.assoc))
        except OSError as exc:
            with self.lock:
                self.report.objects_refused += 1
            log.warning(
                "object from AE '%s' not stored: cannot write the spool (%s); answered 0xA700",
                self.title(event.assoc),
                exc.strerror or type(exc).__name__,
            )
            return 0xA700
        with self.lock:
            self.report.objects_acknowledged += 1
            self.stored[key] = self.stored.get(key, 0) + 1
        self.wake.set()
        return 0x0000


def _drop_partial(assoc: Any) -> None:
    """Remove the half-received file of an aborted object (pynetdicom's temporary file)."""
    with contextlib.suppress(Exception):
        path = assoc.dimse.message._data_set_path
        if path is not None:
            os.unlink(path)


def listen(
    ws: Workspace,
    opts: ListenOptions,
    *,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> ListenReport:
    """Ingest what a stopped listener left in the spool, then receive and ingest until
    ``stop`` is set (or KeyboardInterrupt). ``ready`` is told the address once associations
    are accepted."""
    check_options(opts)
    stop = stop or threading.Event()
    address = f"{opts.host}:{opts.port}"
    report = ListenReport(address=address, ae_title=opts.ae_title.strip())
    spool = Spool(ws)
    spool.prepare()
    report.spooled_at_start = len(spool.pending())
    ingester = SpoolIngest(ws, spool, workers=opts.workers, batch=opts.batch, log=log.warning)
    report.spool = ingester.report
    try:
        if report.spooled_at_start:
            log.info("ingesting %d objects left in the spool first", report.spooled_at_start)
            _drain(ingester)
        with ws.session() as session:
            audit(
                session,
                "listen",
                "listen",
                address=address,
                ae_title=report.ae_title,
                allow=opts.allow,
                spooled_at_start=report.spooled_at_start,
            )
        server, wake = _start_server(spool, opts, report)
        try:
            if ready is not None:
                ready(address)
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop, as SIGTERM does
                while not stop.is_set():
                    wake.wait(1.0)
                    wake.clear()
                    if not _drain(ingester, stop.is_set):
                        stop.wait(RETRY_SECONDS)  # the objects stay spooled meanwhile
        finally:
            server.shutdown()
            _drain(ingester)  # what was acknowledged before the shutdown
    finally:
        ingester.close()
    return report


def _drain(ingester: SpoolIngest, stop: Callable[[], bool] = lambda: False) -> bool:
    """Ingest what is spooled; False when something could not be done now (a full disk, a
    spool folder gone): one log line, the objects stay spooled, the listener goes on."""
    failures = len(ingester.report.store_failures)
    try:
        ingester.drain(stop)
    except (OSError, OperationalError) as exc:
        if isinstance(exc, OperationalError):
            why = str(exc.orig) if exc.orig is not None else type(exc).__name__
        else:
            why = f"{exc.filename or ''}: {exc.strerror or type(exc).__name__}".lstrip(": ")
        log.warning(
            "cannot ingest the spool now (%s): its objects stay spooled; trying again in %g s",
            why,
            RETRY_SECONDS,
        )
        return False
    return len(ingester.report.store_failures) == failures


def _start_server(spool: Spool, opts: ListenOptions, report: ListenReport):
    """Bind and start pynetdicom's server in its threads; returns (server, wake event)."""
    from pynetdicom import AE, _config, evt

    _quiet_pynetdicom()
    _config.STORE_RECV_CHUNKED_DATASET = True
    # the chunked file is a NamedTemporaryFile in tempfile's folder: the spool's partial/,
    # on the same file system as incoming/, so accepting an object is one rename
    tempfile.tempdir = str(spool.partial)
    ae = AE(ae_title=opts.ae_title.strip())
    ae.maximum_associations = opts.max_associations
    ae.maximum_pdu_size = MAX_PDU
    ae.network_timeout = NETWORK_TIMEOUT
    ae.acse_timeout = 30
    ae.dimse_timeout = NETWORK_TIMEOUT
    if opts.allow:
        ae.require_calling_aet = [t.strip() for t in opts.allow]
    for uid in STORAGE_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION)
    wake = threading.Event()
    scp = _Scp(spool, opts, report, wake)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, scp.on_store),
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_PDU_RECV, scp.on_pdu),
        (evt.EVT_ACCEPTED, scp.on_accepted),
        (evt.EVT_REJECTED, scp.on_rejected),
        (evt.EVT_CONN_CLOSE, scp.on_closed),
    ]
    try:
        server = ae.start_server((opts.host, opts.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise DatatoolError(
            f"cannot listen on {opts.host}:{opts.port} ({exc.strerror or exc}): pick another "
            "--port, or stop what listens there"
        ) from None
    return server, wake


__all__ = [
    "ADDED_SYNTAXES",
    "DEFAULT_SYNTAXES",
    "STORAGE_CLASSES",
    "ListenOptions",
    "ListenReport",
    "check_options",
    "listen",
]
