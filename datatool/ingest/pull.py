"""``datatool pull``: studies from a PACS, by DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND +
C-GET), into the same pipeline as ``ingest``.

The way of one pull: search the PACS for studies (filters: study UIDs, modality, study date
range), leave out the studies the catalogue already holds whole, retrieve the others into a
spool folder inside the workspace (``.datatool/spool/pull-*``, each instance written
atomically, in the PACS's own transfer syntax: no transcoding), ingest each spooled batch with
:func:`datatool.ingest.pipeline.ingest` (pseudonyms, blanked banners, quarantine, dedupe by
content), and delete the batch once its catalogue transaction has committed. Retrieval runs
in a thread of its own, so the next batch arrives while the last one is decoded.

Resumable without the original UIDs: the catalogue keeps only keyed replacements
(:func:`datatool.ingest.deid.uid_for`, HMAC of the original UID with the workspace key), so
the pull computes the same replacement for each UID the PACS answers and compares those.
Each study found has its instances listed (one more search; left out while the catalogue is
empty) and is skipped without any retrieval when every instance's replaced SOP Instance UID
is catalogued (quarantined ones included, unless ``--allow-burned-in`` asks to look at them
again); a study none of whose instances is catalogued is retrieved whole, one in part only
its missing instances. An instance rejected before (never catalogued) is retried by every
pull.

Credentials (DICOMweb): HTTP basic from ``DATATOOL_DICOMWEB_USER`` and
``DATATOOL_DICOMWEB_PASSWORD``, or a bearer token from ``DATATOOL_DICOMWEB_TOKEN``; read from
the environment for the requests only, never written to the catalogue, the audit, a log or a
message (a URL with a login in it is refused). Messages name studies and instances by their
replaced UIDs, never the PACS's own.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import queue
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from datatool.core.atomic import make_private_dirs, write_bytes_atomic
from datatool.core.catalogue import FileStatus, SourceFile, audit
from datatool.core.dimse import quiet_network_logs
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.workspace import Workspace
from datatool.ingest import deid
from datatool.ingest.pipeline import IngestReport, ingest

USER_ENV = "DATATOOL_DICOMWEB_USER"
PASSWORD_ENV = "DATATOOL_DICOMWEB_PASSWORD"
TOKEN_ENV = "DATATOOL_DICOMWEB_TOKEN"
# Instances per ingest call: the first batch small, so that decoding starts while the rest
# downloads; each next one twice as large, up to BATCH_FILES, since every ingest call costs a
# pool of workers, a catalogue read and an audit commit (about 0.3-0.5 s on a loaded machine).
BATCH_FIRST = 32
BATCH_FILES = 512
BATCH_BYTES = 512 << 20  # or this many bytes spooled, whichever comes first
QUEUED_BATCHES = 2  # retrieved batches waiting for ingest: bounds the spool on disk
SPOOL = "spool"
TIMEOUT_S = 60
PAGE = 1000  # QIDO-RS answers per request
CREDENTIAL_HINT = (
    f"set {USER_ENV} and {PASSWORD_ENV} (HTTP basic) or {TOKEN_ENV} (bearer) for this server"
)


# --------------------------------------------------------------------------- the result


@dataclass
class PullReport:
    """What a pull found, skipped, retrieved and ingested (``datatool pull``)."""

    source: str  # the DICOMweb URL or HOST:PORT AE (never a login)
    studies_found: int = 0
    studies_skipped: int = 0  # catalogued whole: nothing retrieved
    studies_retrieved: int = 0  # whole or the missing instances
    instances_retrieved: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    failed: list[tuple[str, str]] = field(default_factory=list)  # retrievals that failed

    @property
    def ok(self) -> bool:
        return not self.failed and self.ingest.ok

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "studies_found": self.studies_found,
            "studies_skipped": self.studies_skipped,
            "studies_retrieved": self.studies_retrieved,
            "instances_retrieved": self.instances_retrieved,
            "ingest": self.ingest.as_dict(),
            "failed": [{"what": w, "reason": r} for w, r in self.failed],
            "exit_code": self.exit_code,
        }


def _merge(total: IngestReport, part: IngestReport, names: dict[str, str]) -> None:
    """Add one batch's ingest report to the pull's, spool paths replaced by what they are."""
    for name in ("files_seen", "ingested", "images_added", "already_present", "skipped"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for name in ("rejected", "quarantined", "conflicts", "notes"):
        getattr(total, name).extend((names.get(p, p), r) for p, r in getattr(part, name))
    total.frames_mode = part.frames_mode


# --------------------------------------------------------------------------- the query


@dataclass(frozen=True)
class Query:
    """Which studies: given UIDs, a modality in the study, a study date range (inclusive)."""

    studies: tuple[str, ...] = ()
    modality: str | None = None
    since: dt.date | None = None
    until: dt.date | None = None

    def date_range(self) -> str | None:
        """DICOM date range matching (``20240101-20241231``, open at either end), or None."""
        if self.since is None and self.until is None:
            return None
        one = self.since.strftime("%Y%m%d") if self.since else ""
        two = self.until.strftime("%Y%m%d") if self.until else ""
        return f"{one}-{two}"


UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def make_query(
    studies: Iterable[str] = (),
    modality: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Query:
    """Validate the command line's filters (usage errors, exit 2, say what is wrong)."""
    uids = tuple(s.strip() for s in studies)
    for uid in uids:
        if not UID_RE.match(uid) or len(uid) > 64:
            raise UsageError(f"--study {uid!r}: not a DICOM UID (digits and dots, at most 64)")
    mod = modality.strip().upper() if modality else None
    if mod is not None and not re.fullmatch(r"[A-Z0-9]{1,16}", mod):
        raise UsageError(f"--modality {modality!r}: a DICOM modality such as US")
    first, last = _date(since, "--since"), _date(until, "--until")
    if first and last and first > last:
        raise UsageError(f"--since {since} is after --until {until}")
    return Query(uids, mod, first, last)


def _date(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    raise UsageError(f"{option} {text!r}: a date such as 2024-03-31")


# --------------------------------------------------------------------------- the sources


@dataclass
class FoundStudy:
    uid: str  # the PACS's own Study Instance UID: used for requests, never shown
    instances: int | None  # NumberOfStudyRelatedInstances, when the PACS says


@dataclass(frozen=True)
class FoundInstance:
    series_uid: str
    sop_uid: str


class Source(Protocol):
    """A PACS to pull from: search studies, list a study's instances, retrieve."""

    name: str

    def search(self, query: Query) -> list[FoundStudy]: ...

    def instances(self, study_uid: str) -> list[FoundInstance]: ...

    def retrieve(
        self, study_uid: str, only: list[FoundInstance] | None, sink: Callable[[bytes], None]
    ) -> None: ...

    def close(self) -> None: ...


class RetrieveError(Exception):
    """One study could not be retrieved (whole or in part); ``str()`` is the one-line reason."""


def _first(item: dict, tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def plain_url(url: str) -> str:
    """The DICOMweb base URL; refuses one with a login in it (credentials go in the
    environment, never on a command line that shells and process lists keep)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--dicomweb {url!r}: an http:// or https:// URL of a DICOMweb service")
    if parts.username or parts.password:
        raise UsageError(
            f"--dicomweb: the URL holds a login; give the URL without it and {CREDENTIAL_HINT}"
        )
    return url.rstrip("/")


def http_error_line(exc: Exception, what: str) -> str:
    """One line for a failed HTTP request (never the request's headers or a login)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return f"{what}: the server refused the credentials (HTTP {code}): {CREDENTIAL_HINT}"
        return f"{what}: the server answered HTTP {code} {exc.response.reason or ''}".rstrip()
    if isinstance(exc, requests.ConnectionError):
        return f"{what}: cannot connect (is the server up and the URL right?)"
    if isinstance(exc, requests.Timeout):
        return f"{what}: no answer within {TIMEOUT_S} s"
    return f"{what}: {type(exc).__name__}"


def _all_pages(search: Callable[..., list[dict]], key: str, **kwargs) -> list[dict]:
    """Every answer of a QIDO-RS search, a page at a time. dicomweb-client's own
    ``get_remaining`` asks until a page comes back empty, forever where a server ignores
    ``offset`` with some filters (Orthanc 1.10's plugin with ModalitiesInStudy): a page
    with nothing new, or a short page, ends the search here."""
    seen: dict[str, dict] = {}
    offset = 0
    while True:
        page = search(limit=PAGE, offset=offset, **kwargs)
        fresh = {_first(item, key): item for item in page if _first(item, key) not in seen}
        seen.update(fresh)
        if not fresh or len(page) < PAGE:
            return list(seen.values())
        offset += len(page)


class DicomWebSource:
    """QIDO-RS and WADO-RS through dicomweb-client, instances as the server stores them."""

    def __init__(self, url: str, environ: dict[str, str] | None = None):
        import requests
        from dicomweb_client.api import DICOMwebClient

        quiet_network_logs()
        env = os.environ if environ is None else environ
        self.url = plain_url(url)
        self.name = self.url
        session = requests.Session()
        headers = {}
        if env.get(TOKEN_ENV):
            headers["Authorization"] = f"Bearer {env[TOKEN_ENV]}"
        elif env.get(USER_ENV):
            session.auth = (env[USER_ENV], env.get(PASSWORD_ENV, ""))
        self.client = DICOMwebClient(self.url, session=session, headers=headers)
        self.client.set_http_retry_params(retry=False)
        self.client._timeout = TIMEOUT_S  # dicomweb-client has no public timeout setting

    def search(self, query: Query) -> list[FoundStudy]:
        filters: dict[str, str] = {}
        if query.modality:
            filters["ModalitiesInStudy"] = query.modality
        if query.date_range():
            filters["StudyDate"] = query.date_range()  # type: ignore[assignment]
        fields = ["StudyInstanceUID", "NumberOfStudyRelatedInstances"]
        runs = [dict(filters, StudyInstanceUID=u) for u in query.studies] or [filters]
        found: dict[str, FoundStudy] = {}
        for search_filters in runs:
            try:
                answer = _all_pages(
                    self.client.search_for_studies,
                    "0020000D",
                    fields=fields,
                    search_filters=search_filters,
                )
            except Exception as exc:  # requests' errors, a server answering non-JSON
                raise DatatoolError(http_error_line(exc, f"{self.name}: study search")) from None
            for item in answer:
                uid = _first(item, "0020000D")
                count = _first(item, "00201208")
                if uid:
                    found[uid] = FoundStudy(uid, int(count) if count is not None else None)
        return list(found.values())

    def instances(self, study_uid: str) -> list[FoundInstance]:
        try:
            answer = _all_pages(
                self.client.search_for_instances,
                "00080018",
                study_instance_uid=study_uid,
                fields=["SeriesInstanceUID", "SOPInstanceUID"],
            )
        except Exception as exc:
            raise RetrieveError(http_error_line(exc, "instance search")) from None
        return [
            FoundInstance(_first(i, "0020000E"), _first(i, "00080018"))
            for i in answer
            if _first(i, "00080018")
        ]

    def _get(self, url: str, sink: Callable[[bytes], None]) -> None:
        # dicomweb-client's retrieve_* parse every instance into a pydicom Dataset (and ask
        # for Explicit VR Little Endian unless told otherwise): its multipart reader is used
        # instead, asking for the stored transfer syntax, so each part's bytes go to disk as
        # the PACS holds them.
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        client = self.client
        try:
            response = client._http_get(url, headers={"Accept": accept}, stream=True)
            if response.headers.get("Content-Type", "").startswith("application/dicom"):
                sink(response.content)
                return
            for part in client._decode_multipart_message(response, stream=True):
                sink(bytes(part))
        except RetrieveError:
            raise
        except Exception as exc:
            raise RetrieveError(http_error_line(exc, "retrieve")) from None

    def retrieve(
        self, study_uid: str, only: list[FoundInstance] | None, sink: Callable[[bytes], None]
    ) -> None:
        base = f"{self.client.base_url}/studies/{study_uid}"
        if only is None:
            self._get(base, sink)
            return
        for inst in only:
            self._get(f"{base}/series/{inst.series_uid}/instances/{inst.sop_uid}", sink)

    def close(self) -> None:
        self.client._session.close()


# --------------------------------------------------------------------------- the pull


def _sop_of(data: bytes) -> str | None:
    """The SOP Instance UID of an instance's bytes (header only), None if unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        )
        return str(ds.SOPInstanceUID)
    except Exception:  # any bad bytes: ingest says why, in its own words
        return None


def clean_stale_spools(root: Path) -> None:
    """Remove pull spools left by a pull that no longer runs (killed): nothing in them was
    catalogued or acknowledged, and the PACS still holds it."""
    if not root.is_dir():
        return
    for folder in root.glob("pull-*"):
        try:
            pid = int((folder / "pid").read_text())
            os.kill(pid, 0)
            continue  # a pull still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            pass
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class _Batch:
    folder: Path
    names: dict[str, str] = field(default_factory=dict)  # spool path -> what it is
    files: int = 0
    size: int = 0


class _Spooler:
    """Retrieved bytes to atomic files in batch folders, handed over when full."""

    def __init__(self, spool: Path, key: bytes, out: queue.Queue):
        self.spool, self.key, self.out = spool, key, out
        self.lock = threading.Lock()
        self.count = 0
        self.limit = BATCH_FIRST  # doubles with every batch handed over, up to BATCH_FILES
        self.batch: _Batch | None = None
        self.study = ""

    def sink(self, data: bytes) -> None:
        with self.lock:
            if self.batch is None:
                self.batch = _Batch(Path(tempfile.mkdtemp(prefix="batch-", dir=self.spool)))
            batch = self.batch
            self.count += 1
            path = batch.folder / f"{self.count:08d}.dcm"
            sop = _sop_of(data)
            label = f"instance {deid.uid_for(self.key, sop)}" if sop else f"part {self.count}"
            batch.names[str(path)] = f"study {self.study} {label}"
            write_bytes_atomic(path, data, make_parents=False)
            batch.files += 1
            batch.size += len(data)
            full = batch.files >= self.limit or batch.size >= BATCH_BYTES
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.batch = self.batch, None
            self.limit = min(2 * self.limit, BATCH_FILES)
        if batch is not None:
            self.out.put(batch)


def pull(
    ws: Workspace,
    source: Source,
    query: Query,
    *,
    workers: int | None = None,
    frames: str = "auto",
    allow_burned_in: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PullReport:
    """Pull the studies ``query`` selects from ``source`` into ``ws`` (module docstring)."""
    report = PullReport(source=source.name)
    report.ingest.frames_mode = frames
    key = ws.key
    # before anything else: a pull killed after it had catalogued everything leaves a spool
    # that a next pull with nothing to retrieve must still remove
    clean_stale_spools(ws.meta_dir / SPOOL)
    try:
        found = source.search(query)
        report.studies_found = len(found)
        with ws.session() as s:
            catalogued = select(SourceFile.sop_uid)
            if allow_burned_in:  # quarantined files are to be looked at again
                catalogued = catalogued.where(SourceFile.status != FileStatus.quarantined)
            known_sops = set(s.scalars(catalogued))
        todo: list[tuple[FoundStudy, str, list[FoundInstance] | None]] = []
        for study in found:
            pseudo = deid.uid_for(key, study.uid)
            if not known_sops:  # nothing catalogued: no need to list the instances
                todo.append((study, pseudo, None))
                continue
            try:
                listed = source.instances(study.uid)
            except RetrieveError as exc:
                report.failed.append((f"study {pseudo}", str(exc)))
                continue
            missing = [i for i in listed if deid.uid_for(key, i.sop_uid) not in known_sops]
            if not missing:
                report.studies_skipped += 1
            elif len(missing) == len(listed):
                study.instances = len(listed)
                todo.append((study, pseudo, None))
            else:
                todo.append((study, pseudo, missing))
        total = sum(
            (len(only) if only is not None else (study.instances or 1)) for study, _, only in todo
        )
        if todo:
            _retrieve_and_ingest(
                ws, source, todo, report, total, workers, frames, allow_burned_in, progress
            )
    finally:
        source.close()
    with ws.session() as s:
        audit(
            s,
            "pull",
            "ingest",
            source=report.source,
            studies_found=report.studies_found,
            studies_skipped=report.studies_skipped,
            studies_retrieved=report.studies_retrieved,
            instances_retrieved=report.instances_retrieved,
            failed=len(report.failed),
        )
    return report


def _retrieve_and_ingest(
    ws: Workspace,
    source: Source,
    todo: list[tuple[FoundStudy, str, list[FoundInstance] | None]],
    report: PullReport,
    total: int,
    workers: int | None,
    frames: str,
    allow_burned_in: bool,
    progress: Callable[[int, int], None] | None,
) -> None:
    root = ws.meta_dir / SPOOL
    make_private_dirs(root)
    spool = Path(tempfile.mkdtemp(prefix="pull-", dir=root))
    (spool / "pid").write_text(str(os.getpid()))
    batches: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
    spooler = _Spooler(spool, ws.key, batches)
    stop = threading.Event()
    done_marker = object()

    def fetch() -> None:
        try:
            for study, pseudo, only in todo:
                if stop.is_set():
                    return
                spooler.study = pseudo
                before = spooler.count
                try:
                    source.retrieve(study.uid, only, spooler.sink)
                except RetrieveError as exc:
                    report.failed.append((f"study {pseudo}", str(exc)))
                except OSError as exc:  # the spool cannot be written: no point going on
                    report.failed.append(
                        (f"study {pseudo}", f"cannot write the spool {spool}: {exc.strerror}")
                    )
                    return
                got = spooler.count - before
                report.instances_retrieved += got
                if got:
                    report.studies_retrieved += 1
                expected = len(only) if only is not None else study.instances
                if expected is not None and got < expected:
                    report.failed.append(
                        (
                            f"study {pseudo}",
                            f"the PACS sent {got} of {expected} instances; pull again to "
                            "fetch the rest",
                        )
                    )
            spooler.flush()
        finally:
            batches.put(done_marker)

    thread = threading.Thread(target=fetch, name="pull-retrieve", daemon=True)
    thread.start()
    done = 0
    try:
        while True:
            batch = batches.get()
            if batch is done_marker:
                break
            base = done

            def step(n: int, _total: int, base: int = base) -> None:
                if progress:
                    progress(base + n, max(total, base + n))

            part = ingest(
                ws,
                [batch.folder],
                workers=workers,
                frames=frames,
                allow_burned_in=allow_burned_in,
                progress=step,
                command="pull",
            )
            _merge(report.ingest, part, batch.names)
            shutil.rmtree(batch.folder, ignore_errors=True)  # catalogued: the spool's done
            done += batch.files
    finally:
        stop.set()
        while thread.is_alive():  # unblock a fetch waiting to hand over a batch
            try:
                leftover = batches.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(leftover, _Batch):
                shutil.rmtree(leftover.folder, ignore_errors=True)
        shutil.rmtree(spool, ignore_errors=True)
    if progress:
        progress(done, max(done, 1) if total == 0 else max(total, done))
