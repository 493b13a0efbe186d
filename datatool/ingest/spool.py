"""The listener's spool: objects ``datatool listen`` received, on disk before their C-STORE
success was sent, until ingest has catalogued them.

Layout, inside the workspace's private folder (``.datatool/spool``):

* ``partial/``: objects still arriving (pynetdicom writes each one there as its fragments
  come in). Never acknowledged, so a listener that starts removes what is left there.
* ``incoming/``: whole objects, acknowledged. A file arrives here by one ``os.replace``
  from ``partial/`` (the same file system), so it is there whole or not at all. Its name is
  its *receipt*: ``<time in ns>-<random token>-<calling AE title in hex>.dcm``, so the order
  of names is the order of arrival and two arrivals of the same bytes are two receipts.

A batch of receipts goes through the same steps as ``datatool ingest`` (pseudonyms, blanked
banners, quarantine, dedupe by content: :func:`datatool.ingest.pipeline.process_file` and
:func:`~datatool.ingest.pipeline.record_batch`); each receipt's ``received`` row is written in
the same transaction as its catalogue rows, and only after that transaction has committed is
the spool file removed. A receipt already in ``received`` (the process was killed after the
commit, before the removal) is removed without ingesting it again.

A rejected, quarantined or conflicting object is removed too, once its outcome and reason are
in ``received`` (and, quarantined, in ``source_files`` as ``ingest`` records it): the spool
holds identified bytes only until they are catalogued, never at rest. The sender (scanner,
PACS) keeps its copy; a quarantined object is resent after ``--allow-burned-in`` is decided,
or its exported file ingested with it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.atomic import PRIVATE_FILE, make_private_dirs, write_bytes_atomic
from datatool.core.catalogue import Received
from datatool.core.processes import pool_context
from datatool.core.workspace import Workspace
from datatool.ingest.pipeline import (
    FileResult,
    IngestReport,
    Options,
    _init_worker,
    known_hashes,
    process_file,
    record_batch,
)
from datatool.ingest.spoolfolders import SpoolFolders

SUFFIX = ".dcm"
NOT_INGESTED = ("rejected", "quarantined", "conflict")  # logged, one line each


@dataclass(frozen=True)
class Receipt:
    """One acknowledged object waiting in ``incoming/``."""

    name: str  # the file's stem: what ``received.receipt`` holds
    calling_ae: str
    received_at: dt.datetime  # UTC, naive (as the catalogue keeps times)
    path: Path


def receipt_name(calling_ae: str, now_ns: int | None = None) -> str:
    """A new receipt for an object from ``calling_ae``: arrival time, a random token and the
    title in hex (any bytes a peer sends are safe in a file name that way)."""
    ns = time.time_ns() if now_ns is None else now_ns
    title = calling_ae.strip().encode("ascii", "backslashreplace")[:16].hex()
    return f"{ns:020d}-{secrets.token_hex(6)}-{title}"


def parse_receipt(path: Path) -> Receipt | None:
    """The receipt a spool file's name holds, or None for a name the spool did not make."""
    parts = path.name.removesuffix(SUFFIX).split("-")
    if len(parts) != 3 or not path.name.endswith(SUFFIX) or not parts[0].isdigit():
        return None
    try:
        title = bytes.fromhex(parts[2]).decode("ascii")
    except ValueError:
        return None
    at = dt.datetime.fromtimestamp(int(parts[0]) / 1e9, dt.UTC).replace(tzinfo=None)
    return Receipt(path.name.removesuffix(SUFFIX), title, at, path)


class Spool(SpoolFolders):
    """The spool folders of one workspace (see the module docstring)."""

    def prepare(self) -> int:
        """Make the folders; remove what a stopped listener left half-received in
        ``partial/`` (never acknowledged). Returns how many such files were removed."""
        for folder in (self.partial, self.incoming):
            make_private_dirs(folder)
        removed = 0
        for entry in os.scandir(self.partial):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        for entry in os.scandir(self.incoming):  # a killed put_bytes' temp file
            if entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return removed

    def accept(self, received: Path, calling_ae: str, durable: bool = True) -> Receipt:
        """Move a whole received file (written in ``partial/``) into ``incoming/``: one
        rename, so it is there whole or not at all; ``durable``: the file and the rename are
        flushed to the disk first (fsync), so that a power cut loses nothing acknowledged
        either. Raises OSError when it cannot."""
        name = receipt_name(calling_ae)
        target = self.incoming / f"{name}{SUFFIX}"
        os.chmod(received, PRIVATE_FILE)
        if durable:  # on the disk before the success is answered, as a PACS does
            _fsync(received)
        os.replace(received, target)
        if durable:
            _fsync(self.incoming)  # the rename too
        receipt = parse_receipt(target)
        assert receipt is not None
        return receipt

    def put_bytes(self, data: bytes, calling_ae: str) -> Receipt:
        """Write an object held in memory to ``incoming/`` atomically."""
        name = receipt_name(calling_ae)
        target = self.incoming / f"{name}{SUFFIX}"
        write_bytes_atomic(target, data, mode=PRIVATE_FILE)
        receipt = parse_receipt(target)
        assert receipt is not None
        return receipt

    def pending(self, limit: int | None = None) -> list[Receipt]:
        """The receipts in ``incoming/``, oldest first."""
        names = sorted(e.name for e in os.scandir(self.incoming) if not e.name.startswith("."))
        out = []
        for name in names:
            receipt = parse_receipt(self.incoming / name)
            if receipt is not None:
                out.append(receipt)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def finish(self, receipt: Receipt) -> None:
        """Remove a receipt's file once its outcome is catalogued."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(receipt.path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class SpoolReport:
    """What ingesting the spool did, all batches together."""

    received: int = 0  # receipts catalogued (each counted once)
    ingested: int = 0
    images_added: int = 0
    already_present: int = 0
    rejected: int = 0
    quarantined: int = 0
    conflicts: int = 0
    finished_after_restart: int = 0  # catalogued before a kill, removed only now
    store_failures: list[str] = field(default_factory=list)


class SpoolIngest:
    """Ingests the spool in small batches with ``workers`` processes (0: in this thread).
    Start it before any thread (the pool forks); :meth:`close` it at the end."""

    def __init__(
        self,
        ws: Workspace,
        spool: Spool,
        *,
        workers: int = 0,
        batch: int = 16,
        log: Callable[[str], None] = lambda line: None,
    ):
        self.ws, self.spool, self.batch, self.log = ws, spool, batch, log
        self.report = SpoolReport()
        with ws.session() as session:
            known = known_hashes(session)
        # a pool's known hashes go stale as the listener ingests: that costs a decode of an
        # object sent twice, never a second catalogue row (record_batch dedupes by content)
        init_args = (ws.key, str(ws.store.root), Options(), known)
        self.pool: Pool | None = None
        if workers > 0:
            self.pool = pool_context().Pool(workers, initializer=_init_worker, initargs=init_args)
        else:
            _init_worker(*init_args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def drain(self, stop: Callable[[], bool] = lambda: False) -> int:
        """Ingest batches until the spool is empty (or ``stop()``); returns how many receipts
        were catalogued. A store that cannot be written stops the drain (its objects stay)."""
        done = 0
        while not stop():
            receipts = self.spool.pending(self.batch)
            if not receipts:
                break
            n, failed = self.ingest_batch(receipts)
            done += n
            if failed:
                break
        return done

    def ingest_batch(self, receipts: list[Receipt]) -> tuple[int, bool]:
        """Catalogue one batch; (receipts catalogued, whether the store failed)."""
        with self.ws.session() as session:
            finished = set(
                session.scalars(
                    select(Received.receipt).where(Received.receipt.in_([r.name for r in receipts]))
                ).all()
            )
        for receipt in receipts:  # catalogued before a kill: only the file is left to do
            if receipt.name in finished:
                self.spool.finish(receipt)
                self.report.finished_after_restart += 1
        todo = [r for r in receipts if r.name not in finished]
        if not todo:
            return 0, False
        by_path = {str(r.path): r for r in todo}
        results = self._process(list(by_path))
        failed = [r for r in results if r.kind == "failed"]
        for result in failed:
            self.report.store_failures.append(result.reason)
            self.log(
                f"{by_path[result.path].name}: not ingested yet, left in the spool: {result.reason}"
            )
        recorded = [r for r in results if r.kind != "failed"]
        to_catalogue = [r for r in recorded if r.kind in ("decoded", "quarantined")]
        outcomes: dict[str, tuple[str, str]] = {}
        for result in recorded:
            if result.kind == "known":
                outcomes[result.path] = ("already_present", "")
            elif result.kind == "rejected":
                outcomes[result.path] = ("rejected", result.reason)

        def also(session: Session, batch_outcomes: list[tuple[str, str]]) -> None:
            for result, pair in zip(to_catalogue, batch_outcomes):
                outcomes[result.path] = pair
            for result in recorded:
                receipt = by_path[result.path]
                outcome, reason = outcomes[result.path]
                session.add(
                    Received(
                        receipt=receipt.name,
                        calling_ae=receipt.calling_ae,
                        received_at=receipt.received_at,
                        outcome=outcome,
                        reason=reason or None,
                    )
                )

        ingest_report = IngestReport()
        record_batch(self.ws, to_catalogue, ingest_report, also=also)
        self.report.images_added += ingest_report.images_added
        for result in recorded:  # the transaction has committed: now the files
            receipt = by_path[result.path]
            outcome, reason = outcomes[result.path]
            self.spool.finish(receipt)
            self._count(outcome)
            if outcome in NOT_INGESTED:
                self.log(
                    f"{receipt.name} from AE '{receipt.calling_ae}': {outcome}: "
                    f"{for_the_listener(reason)}"
                )
        return len(recorded), bool(failed)

    def _process(self, paths: list[str]) -> list[FileResult]:
        if self.pool is None:
            return [process_file(p) for p in paths]
        return list(self.pool.imap_unordered(process_file, paths))

    def _count(self, outcome: str) -> None:
        r = self.report
        r.received += 1
        if outcome == "ingested":
            r.ingested += 1
        elif outcome == "already_present":
            r.already_present += 1
        elif outcome == "rejected":
            r.rejected += 1
        elif outcome == "quarantined":
            r.quarantined += 1
        else:
            r.conflicts += 1


def for_the_listener(reason: str | None) -> str | None:
    """An ingest reason told to someone who sent the object: the listener has no
    ``--allow-burned-in`` to re-run with, and the object has left the spool; its sender's copy
    (or an export of it) is ingested with the option instead."""
    if reason is None:
        return None
    return reason.replace(
        "re-run with --allow-burned-in",
        "ingest the sender's copy with 'datatool ingest --allow-burned-in'",
    )
