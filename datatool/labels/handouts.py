"""Draft provenance in the catalogue, and blinding checked on content.

Every model draft datatool hands a rater is recorded (``draft_handouts``: image, rater, run,
model version, the draft's label map in the store, and for ITK-SNAP the file export wrote),
before the rater can see it: an ITK-SNAP segmentation exported pre-filled with a run's draft
(``itksnap.export``), a Label Studio prediction on the rater's task (``prelabel``, ``next
--drafts``). A sync then knows a draft by its content wherever the file comes from (copied out
of the export folder, the marker deleted, another rater's export):

* a file byte for byte as export wrote it was never saved: not a label (skipped, noted);
* a label map equal to a handed-out draft is that draft accepted as it is: stored with its
  provenance (model version, run, draft hash), never as a human label made from nothing.

And a new label identical to another human rater's current label of the image is a copy of
their work (double-blind is broken): refused, one line, unless forced with a reason
(``--allow-copy REASON``), which is audited. Empty maps never count as copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import Annotation, DraftHandout, Rater, RaterKind, audit
from datatool.core.errors import UsageError
from datatool.labels.annotations import DraftOrigin, draft_origin, in_chunks
from datatool.labels.annotations import latest_annotations_query as latest_query


@dataclass(frozen=True)
class Handout:
    """One recorded draft handout."""

    image_id: int
    rater_id: int
    run_id: int | None
    model_version: str
    mask_hash: str
    via: str
    file_sha256: str | None


def record_handouts(
    session: Session,
    rater_id: int,
    via: str,
    drafts: Iterable[tuple[int, int | None, str, str]],
    files: dict[tuple[int, str], str] | None = None,
) -> int:
    """Record drafts ``(image id, run id, model version, mask hash)`` handed to a rater by
    ``via`` (``itksnap``, ``labelstudio``), each once; ``files`` gives the ITK-SNAP file
    written for (image id, mask hash), kept up to date. Returns how many were new. The
    caller holds the transaction (commit it before the rater can see the drafts)."""
    wanted = {(i, h): (run, version) for i, run, version, h in drafts}
    files = files or {}
    keys = set(wanted) | set(files)
    if not keys:
        return 0
    have: dict[tuple[int, str], DraftHandout] = {}
    for chunk in in_chunks(sorted({i for i, _ in keys})):
        for row in session.scalars(
            select(DraftHandout).where(
                DraftHandout.rater_id == rater_id,
                DraftHandout.via == via,
                DraftHandout.image_id.in_(chunk),
            )
        ):
            have[(row.image_id, row.mask_hash)] = row
    new = 0
    for (image_id, digest), (run, version) in sorted(wanted.items()):
        if (image_id, digest) not in have:
            row = DraftHandout(
                image_id=image_id,
                rater_id=rater_id,
                run_id=run,
                model_version=version,
                mask_hash=digest,
                via=via,
            )
            session.add(row)
            have[(image_id, digest)] = row
            new += 1
    for key, sha in files.items():
        known = have.get(key)
        if known is not None and sha and known.file_sha256 != sha:
            known.file_sha256 = sha
    session.flush()
    return new


class Handouts:
    """The drafts handed out for some images (to any rater), to look labels up by content."""

    def __init__(self, session: Session, image_ids: Iterable[int]):
        self._by_image: dict[int, list[Handout]] = {}
        for chunk in in_chunks(sorted(set(image_ids))):
            for row in session.scalars(
                select(DraftHandout)
                .where(DraftHandout.image_id.in_(chunk))
                .order_by(DraftHandout.id)
            ):
                self._by_image.setdefault(row.image_id, []).append(
                    Handout(
                        row.image_id,
                        row.rater_id,
                        row.run_id,
                        row.model_version,
                        row.mask_hash,
                        row.via,
                        row.file_sha256,
                    )
                )

    def any_for(self, image_id: int) -> bool:
        return image_id in self._by_image

    def written_file(self, image_id: int, file_sha256: str | None) -> Handout | None:
        """The handout whose ITK-SNAP file is byte for byte ``file_sha256`` (never saved)."""
        if not file_sha256:
            return None
        return next(
            (h for h in self._by_image.get(image_id, ()) if h.file_sha256 == file_sha256), None
        )

    def handed_to(self, image_id: int, rater_id: int) -> list[Handout]:
        """The drafts of an image handed to ``rater_id`` (any tool), oldest first."""
        return [h for h in self._by_image.get(image_id, ()) if h.rater_id == rater_id]

    def written_draft(self, image_id: int, mask_hash: str) -> Handout | None:
        """A draft of this label map that export wrote into an ITK-SNAP file (still as drafted
        when a saved cine's frame is this map)."""
        return next(
            (
                h
                for h in self._by_image.get(image_id, ())
                if h.mask_hash == mask_hash and h.via == "itksnap" and h.file_sha256
            ),
            None,
        )

    def draft(self, image_id: int, mask_hash: str, rater_id: int) -> Handout | None:
        """The draft whose label map ``mask_hash`` is, preferring one handed to ``rater_id``."""
        found = [h for h in self._by_image.get(image_id, ()) if h.mask_hash == mask_hash]
        own = [h for h in found if h.rater_id == rater_id]
        chosen = own or found
        return chosen[-1] if chosen else None


def origin_of(session: Session, handout: Handout) -> DraftOrigin:
    """A handout as the draft origin a label records."""
    found = draft_origin(session, handout.model_version, handout.mask_hash)
    return (
        found
        if found.run_id is not None
        else DraftOrigin(handout.model_version, handout.run_id, handout.mask_hash)
    )


def check_allow_copy(reason: str | None) -> str | None:
    """``--allow-copy REASON``: a reason of a few words, or a usage error."""
    if reason is None:
        return None
    reason = " ".join(reason.split())
    if not reason:
        raise UsageError("--allow-copy needs a reason (a few words, recorded in the audit log)")
    return reason[:500]


def copies_of_others(
    session: Session, rater_id: int, labels: Sequence[tuple[int, str]]
) -> dict[int, str]:
    """Of ``labels`` ``(image id, mask hash)``, those identical to another human rater's
    current (latest) label of the image: image id -> that rater's name."""
    wanted = dict(labels)
    if not wanted:
        return {}
    humans = dict(
        session.execute(
            select(Rater.id, Rater.name).where(Rater.kind == RaterKind.human, Rater.id != rater_id)
        ).all()
    )
    found: dict[int, str] = {}
    if not humans:
        return found
    for chunk in in_chunks(sorted(wanted)):
        query = latest_query(list(humans)).where(Annotation.image_id.in_(chunk))
        for annotation in session.scalars(query):
            if wanted.get(annotation.image_id) == annotation.mask_hash:
                found.setdefault(annotation.image_id, humans[annotation.rater_id])
    return found


def audit_copies(
    session: Session, command: str, rater: str, copies: dict[int, str], reason: str
) -> None:
    """Record labels stored though identical to another rater's (``--allow-copy``)."""
    if copies:
        audit(
            session,
            command,
            "copy allowed",
            rater=rater,
            reason=reason,
            images=sorted(copies),
            copied_from=sorted(set(copies.values())),
        )


BREACH = (
    "identical to another rater's current label of this image: a copy breaks the "
    "double-blind, not stored (each rater labels on their own; to store it anyway give "
    "--allow-copy REASON)"
)
