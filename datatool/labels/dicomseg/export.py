"""DICOM SEG export: one DICOM Segmentation per labelled image, for the PACS the originals
came from (``datatool export dicom-seg``).

The catalogue holds keyed pseudonyms of the originals' UIDs, never the UIDs themselves, so the
originals are found again under ``--dicom-root``: a file whose keyed path is the one ingest
saw is tried first, then every file's SOP Instance UID is read and keyed. An original is used
only if it is still what was ingested: the same bytes (SHA-256), or else the same pixels (the
frame decoded as ingest did, and blanked outside the ultrasound regions where ingest did,
hashes to the image's store hash); one whose pixels changed is refused. The SEG references
the original's SOP Instance UID and carries its patient and study attributes: this is the
one place datatool writes identity out, on purpose. Nothing of it is logged or kept: results
name images by id and the original by its file name only (never its folders).

Each SEG is ``OUT/img000123.dcm``, written atomically; ``OUT/datatool-dicom-seg.json`` records
per file the labels (mask hash) and original (SHA-256) it was made of and the file's SHA-256,
so a re-run leaves a file made of the same labels and original as it is. Its UIDs are derived
from the workspace key, the rater and the labels, and its dates from when the labels were
made: the same labels give the same file.

A cine's frame gets no SEG: highdicom 0.28 cannot reference a frame of a multi-frame
ultrasound image without a Frame of Reference (highdicom issue 284); it is listed as
skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid
from sqlalchemy import select

from datatool import __version__
from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    FileStatus,
    Image,
    Rater,
    RaterKind,
    Series,
    SourceFile,
    Study,
    audit,
)
from datatool.core.errors import UsageError
from datatool.core.files import walk
from datatool.core.protocol import load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.ingest import deid
from datatool.ingest.dicom import BadDicom, decode_frame, read_dataset
from datatool.labels.annotations import get_rater, in_chunks, latest_annotations_query
from datatool.labels.dicomseg.formats import (
    AUTOMATIC,
    MANUAL,
    SEMIAUTOMATIC,
    Provenance,
    SegRefused,
    build_segmentation,
    segment_specs,
    segmentation_bytes,
)
from datatool.labels.dicomseg.push import PushItem
from datatool.labels.frames import frame_place
from datatool.labels.matching import NoImage, image_name, read_sop_instance_uid
from datatool.labels.quoting import excerpt

MANIFEST = "datatool-dicom-seg.json"
MANIFEST_EVERY = 32  # SEGs written between updates of the manifest
KIND = "dicom-seg"

WRITTEN, UNCHANGED, REFUSED, SKIPPED = "written", "unchanged", "refused", "skipped"


@dataclass
class SegItem:
    """What became of one image: ``written``, ``unchanged`` (the file there is already made
    of these labels and this original), ``refused`` (with the reason) or ``skipped`` (a
    cine's frame)."""

    image: str  # img000123 (L_01.dcm): the image, and the original's file name once found
    status: str
    reason: str = ""
    file: str | None = None  # the SEG's file name in the output folder
    structures: int = 0  # structures present in the labels


@dataclass
class DicomSegExport:
    """What a DICOM SEG export wrote (``datatool export dicom-seg``)."""

    rater: str
    out_dir: Path
    items: list[SegItem] = field(default_factory=list)
    pushed_to: str | None = None  # the PACS the files were sent to (--stow, --dimse)
    pushed: list[PushItem] = field(default_factory=list)  # its answer per file

    def _count(self, status: str) -> int:
        return sum(i.status == status for i in self.items)

    @property
    def written(self) -> int:
        return self._count(WRITTEN)

    @property
    def unchanged(self) -> int:
        return self._count(UNCHANGED)

    @property
    def refused(self) -> list[tuple[str, str]]:
        return [(i.image, i.reason) for i in self.items if i.status == REFUSED]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(i.image, i.reason) for i in self.items if i.status == SKIPPED]

    @property
    def push_failed(self) -> list[tuple[str, str]]:
        return [(f"{p.image} {p.file}", p.answer) for p in self.pushed if not p.ok]

    @property
    def exit_code(self) -> int:
        """1 when an image was refused (an original missing or changed, no labels) or the
        PACS did not take a file, else 0."""
        return 1 if self.refused or self.push_failed else 0

    def as_dict(self) -> dict:
        return {
            "rater": self.rater,
            "out_dir": str(self.out_dir),
            "written": self.written,
            "unchanged": self.unchanged,
            "refused": len(self.refused),
            "skipped": len(self.skipped),
            "items": [vars(i) for i in self.items],
            "pushed_to": self.pushed_to,
            "pushed": [vars(p) for p in self.pushed],
            "exit_code": self.exit_code,
        }


# --------------------------------------------------------------------------- who labelled


def provenance_of(rater: Rater) -> Provenance:
    """A person's labels are MANUAL; a consensus (computed from people's labels) is
    SEMIAUTOMATIC, a model's AUTOMATIC, each with its algorithm identified."""
    kind = RaterKind(rater.kind)
    if kind == RaterKind.human:
        return Provenance(MANUAL, rater.name)
    method = rater.name.partition(":")[2]
    if kind == RaterKind.consensus:
        return Provenance(
            SEMIAUTOMATIC,
            rater.name,
            algorithm_name=f"datatool consensus {method}",
            algorithm_version=__version__,
            # no family names label fusion; its inputs are people's manual segmentations
            algorithm_family=codes.cid7162.ManualProcessing,
            parameters={"method": method},
        )
    return Provenance(
        AUTOMATIC,
        rater.name,
        algorithm_name=f"datatool model run {method}",
        algorithm_version=__version__,
        algorithm_family=codes.cid7162.ArtificialIntelligence,
        parameters={"run": method, "datatool": __version__},
    )


# --------------------------------------------------------------------------- originals


class _Originals:
    """The files under ``--dicom-root`` by the keyed SOP Instance UID they hold, read as
    needed: first the files whose keyed path ingest recorded, then (for what is still
    missing) every other file's SOP Instance UID."""

    def __init__(self, root: Path, key: bytes):
        self.key = key
        self.files = walk([root]).files
        self.by_uid: dict[str, list[Path]] = {}
        self.read: set[Path] = set()

    def _read(self, path: Path) -> None:
        if path in self.read:
            return
        self.read.add(path)
        try:
            uid = read_sop_instance_uid(path)
        except NoImage:
            return  # not a DICOM file: not an original of anything
        self.by_uid.setdefault(deid.uid_for(self.key, uid), []).append(path)

    def find(self, wanted: dict[str, str]) -> None:
        """Read the files that may hold ``wanted`` (keyed SOP UID -> keyed path)."""
        paths = set(wanted.values())
        for path in self.files:
            if deid.path_key(self.key, str(path.resolve())) in paths:
                self._read(path)
        if set(wanted) - self.by_uid.keys():
            for path in self.files:
                self._read(path)

    def candidates(self, keyed_uid: str) -> list[Path]:
        return self.by_uid.get(keyed_uid, [])


def _same_original(path: Path, source: SourceFile, image: Image):
    """(dataset, SHA-256 of the file, "") if ``path`` is the original of ``image`` as
    ingested (the same bytes, or else the same pixels), else (None, "", the reason)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, "", f"cannot read its original ({exc.strerror or type(exc).__name__})"
    try:
        ds = read_dataset(data)
    except BadDicom as exc:
        return None, "", f"its original is no longer a readable DICOM image ({exc})"
    sha = hashlib.sha256(data).hexdigest()
    if sha == source.sha256:
        return ds, sha, ""
    try:
        gray = decode_frame(ds, image.frame_index)
    except BadDicom as exc:
        return None, "", f"its original's pixels cannot be decoded ({exc})"
    if image.pixel_handling == "blanked_outside_regions" and image.regions:
        gray = deid.blank_outside_regions(gray, image.regions)
    if pixel_digest(gray) != image.store_hash:
        return (
            None,
            "",
            (
                "its original's pixels no longer match the catalogue (the file under --dicom-root "
                "was changed since ingest): no SEG is made for other pixels than were labelled"
            ),
        )
    return ds, sha, ""


# --------------------------------------------------------------------------- manifest


def _read_manifest(out_dir: Path) -> dict:
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("kind") == KIND else {}


def _write_manifest(out_dir: Path, rater: str, files: dict[str, dict]) -> None:
    write_text_atomic(
        out_dir / MANIFEST,
        json.dumps(
            {"kind": KIND, "rater": rater, "datatool": __version__, "files": files},
            indent=1,
            sort_keys=True,
        ),
    )


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


# --------------------------------------------------------------------------- export


def export_dicom_seg(
    ws: Workspace,
    rater: str,
    dicom_root: Path,
    out_dir: Path,
    image_ids: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DicomSegExport:
    """Write one DICOM SEG per image labelled by ``rater`` (a person, ``consensus:M`` or
    ``model:RUN``; its latest labels) into ``out_dir`` (see the module docstring).
    ``image_ids``: only these images (an image without the rater's labels is refused)."""
    out_dir, dicom_root = Path(out_dir), Path(dicom_root)
    if not dicom_root.is_dir():
        raise UsageError(f"--dicom-root {dicom_root}: no such folder of original DICOM files")
    protocol = load_protocol(ws.protocol_name)
    segments = segment_specs(protocol.structures)
    with ws.session() as s:
        rater_row = get_rater(s, rater)
        provenance = provenance_of(rater_row)
        latest = {
            a.image_id: a
            for a in s.scalars(
                latest_annotations_query([rater_row.id]).order_by(Annotation.image_id)
            )
        }
        wanted = sorted(latest) if image_ids is None else sorted(set(image_ids))
        rows = {
            image.id: (image, source, study_uid)
            for chunk in in_chunks(wanted)
            for image, source, study_uid in s.execute(
                select(Image, SourceFile, Study.uid)
                .join(SourceFile, Image.source_file_id == SourceFile.id)
                .join(Series, Image.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Image.id.in_(chunk))
            )
        }
    manifest = _read_manifest(out_dir)
    owner = manifest.get("rater")
    if owner is not None and owner != rater_row.name:
        raise UsageError(
            f"{out_dir} holds rater {owner}'s DICOM SEGs; export rater {rater_row.name}'s "
            "into another folder"
        )
    files: dict[str, dict] = dict(manifest.get("files") or {})
    result = DicomSegExport(rater_row.name, out_dir)
    originals = _Originals(dicom_root, ws.key)
    originals.find(
        {
            source.sop_uid: source.path_key
            for image, source, _ in rows.values()
            if source.n_frames == 1 and image.id in latest
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ws.store
    for done, image_id in enumerate(wanted, start=1):
        name = image_name(image_id)
        row = rows.get(image_id)
        annotation = latest.get(image_id)
        if row is None:
            item = SegItem(name, REFUSED, "no such image in this catalogue")
        else:
            image, source, study_uid = row
            item = _one(
                ws.key,
                store,
                originals,
                files,
                out_dir,
                image,
                source,
                study_uid,
                annotation,
                rater_row.name,
                provenance,
                segments,
            )
        result.items.append(item)
        if done % MANIFEST_EVERY == 0:
            _write_manifest(out_dir, rater_row.name, files)
        if progress:
            progress(done, len(wanted))
    _write_manifest(out_dir, rater_row.name, files)
    with ws.session() as s:
        audit(
            s,
            "export dicom-seg",
            "export",
            rater=rater_row.name,
            written=result.written,
            unchanged=result.unchanged,
            refused=len(result.refused),
            skipped=len(result.skipped),
        )
    return result


def _one(
    key: bytes,
    store,
    originals: _Originals,
    files: dict[str, dict],
    out_dir: Path,
    image: Image,
    source: SourceFile,
    study_uid: str,
    annotation: Annotation | None,
    rater: str,
    provenance: Provenance,
    segments,
) -> SegItem:
    """One image's SEG: written, unchanged, refused or skipped (see :class:`SegItem`)."""
    name = image_name(image.id)
    if source.n_frames > 1:
        return SegItem(
            f"{name} ({frame_place(source.id, image.frame_index, source.n_frames)})",
            SKIPPED,
            "a cine's frame: highdicom 0.28 cannot reference one frame of a multi-frame "
            "ultrasound image without a Frame of Reference (highdicom issue 284); no SEG",
        )
    if annotation is None:
        return SegItem(name, REFUSED, f"no labels of rater {excerpt(rater)} for this image")
    if source.status != FileStatus.ingested:
        return SegItem(name, REFUSED, f"its file is {source.status} in the catalogue")
    found = originals.candidates(source.sop_uid)
    if not found:
        return SegItem(
            name,
            REFUSED,
            "its original (the DICOM file with its SOP Instance UID) is not under --dicom-root",
        )
    ds, sha, reason = None, "", ""
    for path in found:  # the same UID in several files (a copy): any that is the original
        ds, sha, reason = _same_original(path, source, image)
        if ds is not None:
            break
    shown = f"{name} ({path.name})"
    if ds is None:
        return SegItem(shown, REFUSED, reason)
    mask = store.get_array(annotation.mask_hash)
    target = out_dir / f"{name}.dcm"
    present = sum(int((mask == s.value).any()) for s in segments)
    record = {
        "image": image.id,
        "mask_hash": annotation.mask_hash,
        "original_sha256": sha,
    }
    old = files.get(target.name)
    if (
        isinstance(old, dict)
        and {k: old.get(k) for k in record} == record
        and old.get("sha256") is not None
        and old.get("sha256") == _file_sha256(target)
    ):
        return SegItem(shown, UNCHANGED, file=target.name, structures=present)
    entropy = [key.hex(), rater, str(image.id), annotation.mask_hash, sha]
    try:
        seg = build_segmentation(
            ds,
            mask,
            segments,
            provenance,
            series_uid=generate_uid(
                prefix=PYDICOM_ROOT_UID,
                entropy_srcs=["dicom-seg series", key.hex(), rater, study_uid],
            ),
            sop_uid=generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["dicom-seg", *entropy]),
            software_version=f"datatool {__version__}",
            content_description=f"{rater} labels, version {annotation.version} (datatool)",
            made=annotation.created_at,
        )
        data = segmentation_bytes(seg)
    except SegRefused as exc:
        return SegItem(shown, REFUSED, str(exc))
    write_bytes_atomic(target, data)
    files[target.name] = {**record, "sha256": hashlib.sha256(data).hexdigest()}
    return SegItem(shown, WRITTEN, file=target.name, structures=present)
