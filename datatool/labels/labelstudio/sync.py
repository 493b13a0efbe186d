"""Label Studio sync: bring a rater's labels back, from their own project(s) on the server
(``sync_from_server``, projects pushed by ``labelstudio.push``) or from a JSON export of a
project made before datatool (``sync_from_export``).

Sync takes each task's latest submitted (not cancelled) annotation. Everything not stored is
reported: skipped tasks (notes), tasks not annotated yet (``not_annotated``), tasks datatool
did not push, tasks whose image does not match the catalogue, unknown labels, wrong sizes
(rejected).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from sqlalchemy import select

from datatool.core.catalogue import Image, LabelStudioProject, LabelStudioTask, Rater, audit
from datatool.core.errors import DatatoolError, StoreObjectMissing, UsageError
from datatool.core.files import not_regular
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    DraftOrigin,
    SyncReport,
    draft_origin,
    get_rater,
    labelling_rater,
    latest_annotation,
    store_annotation,
)
from datatool.labels.draftlink import OVERLAP, closest_draft
from datatool.labels.frames import frame_places
from datatool.labels.handouts import (
    BREACH,
    Handout,
    Handouts,
    audit_copies,
    check_allow_copy,
    copies_of_others,
    origin_of,
)
from datatool.labels.labelstudio.connection import (
    _plain,
    _rater_projects,
    _recorded_project,
    _server_project,
    _server_tasks,
    rater_server,
)
from datatool.labels.labelstudio.formats import (
    BadExport,
    clicks_of,
    parse_export,
    results_to_mask,
)
from datatool.labels.labelstudio.news import read_news, take_news
from datatool.labels.masks import BadLabel, validate_mask
from datatool.labels.matching import (
    NoImage,
    image_by_id,
    image_for_dicom,
    image_for_sop_uid,
    image_name,
)
from datatool.labels.quoting import clipped, excerpt

UID_RE = re.compile(r"^\d+(\.\d+){2,}$")
MAX_REFERENCE = 4096  # the longest path a file system takes (PATH_MAX): longer is free text


# --------------------------------------------------------------------------- sync


def _when(annotation: dict):
    value = annotation.get("updated_at") or annotation.get("created_at")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float("-inf")


def _pick_annotation(task: dict, item: str, report: SyncReport) -> dict | None:
    """The task's latest submitted annotation, or None with a note saying why."""
    annotations = [_plain(a) for a in task.get("annotations") or []]
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    if not submitted:
        if annotations:
            report.notes.append(
                (item, "skipped by the rater (cancelled annotation): nothing stored")
            )
        else:
            report.not_annotated.append(item)
        return None
    return max(submitted, key=lambda a: (_when(a), int(a.get("id") or 0)))


def _draft_of(
    s, ws: Workspace, task: dict, annotation: dict, protocol: Protocol, shape: tuple[int, int]
) -> DraftOrigin | None:
    """The model draft an annotation started from: Label Studio's ``parent_prediction``,
    looked up among the task's predictions for its model version and label map. A parent
    prediction the task no longer lists still counts as a draft (of unknown origin)."""
    parent = annotation.get("parent_prediction")
    if parent is None or parent == "":
        return None
    parent_id = parent.get("id") if isinstance(parent, dict) else parent
    for item in task.get("predictions") or []:
        prediction: dict = _plain(item) if not isinstance(item, int) else {"id": item}
        if str(prediction.get("id")) != str(parent_id):
            continue
        version = str(prediction.get("model_version") or f"prediction {parent_id}")
        try:
            drafted = results_to_mask(prediction.get("result") or [], protocol, shape).mask
        except BadLabel:
            return draft_origin(s, version)
        return draft_origin(s, version, ws.store.put_array(drafted))
    return DraftOrigin(f"prediction {parent_id}")


def _draft_by_overlap(
    s,
    ws: Workspace,
    handouts: Handouts,
    image: Image,
    rater: Rater,
    task: dict,
    mask: np.ndarray,
    protocol: Protocol,
) -> DraftOrigin | None:
    """The draft handed to this rater for this image (recorded by prelabel, next --drafts,
    an export; or a prediction on the rater's own task) that a label without
    ``parent_prediction`` is close to by the overlap rule (``labels.draftlink``): Label
    Studio drops the link when it restores its autosaved working copy (a task labelled over
    two sittings). None when no draft is that close."""
    shape = mask.shape
    candidates: list[tuple[object, np.ndarray]] = []
    known = set()
    for h in reversed(handouts.handed_to(image.id, rater.id)):  # newest first
        if h.mask_hash in known:
            continue
        known.add(h.mask_hash)
        try:
            candidates.append((h, ws.store.get_array(h.mask_hash)))
        except StoreObjectMissing:  # a draft missing from the store: not a candidate
            continue
    for item in task.get("predictions") or []:
        if not isinstance(item, dict) and not hasattr(item, "model_dump"):
            continue
        prediction = _plain(item)
        try:
            drafted = results_to_mask(prediction.get("result") or [], protocol, shape).mask
        except BadLabel:
            continue
        version = str(prediction.get("model_version") or f"prediction {prediction.get('id')}")
        candidates.append((version, drafted))
    found = closest_draft(mask, candidates, protocol)
    if found is None:
        return None
    if isinstance(found.key, Handout):
        origin = origin_of(s, found.key)
    else:
        drafted = next(d for k, d in candidates if k is found.key)
        digest = ws.store.put_array(np.ascontiguousarray(drafted))
        handout = handouts.draft(image.id, digest, rater.id)
        origin = (
            origin_of(s, handout)
            if handout is not None
            else draft_origin(s, str(found.key), digest)
        )
    return DraftOrigin(origin.version, origin.run_id, origin.mask_hash, OVERLAP, found.ious)


def _with_clicks(
    s, draft: DraftOrigin | None, annotation: dict, item: str, report: SyncReport
) -> DraftOrigin | None:
    """The draft origin with the clicks the annotation's regions were redrawn from (their
    ``meta``, see ``formats.clicks_of``): a label made with clicks started from the model
    that redrew it, like a draft. Started from a parent prediction too, it keeps that draft
    and adds the clicks."""
    clicked = clicks_of(annotation.get("result"))
    if clicked is None:
        return draft
    if len(clicked.versions) > 1:
        report.notes.append(
            (
                item,
                f"regions redrawn by {len(clicked.versions)} models "
                f"({', '.join(excerpt(v) for v in clicked.versions)}): stored as made with "
                f"{excerpt(clicked.model_version)}",
            )
        )
    if draft is None:
        return replace(draft_origin(s, clicked.model_version), clicks=clicked.clicks)
    if draft.version != clicked.model_version:
        report.notes.append(
            (
                item,
                f"started from the draft {excerpt(draft.version)}, then redrawn with clicks "
                f"by {excerpt(clicked.model_version)}: stored as started from the draft",
            )
        )
    return replace(draft, clicks=clicked.clicks)


def _ious_text(draft: DraftOrigin) -> str:
    return ", ".join(f"{name} {v:.3f}" for name, v in (draft.ious or {}).items())


@dataclass
class _Copies:
    """Labels identical to another rater's: refused, or allowed with ``allow`` (the reason)."""

    allow: str | None
    refused: int = 0
    allowed: dict[int, str] = field(default_factory=dict)  # image id -> copied rater


def _store_task(
    s,
    ws: Workspace,
    image: Image,
    rater: Rater,
    annotation: dict,
    protocol: Protocol,
    item: str,
    ref: str,
    allow_empty: bool,
    report: SyncReport,
    task: dict | None = None,
    copies: _Copies | None = None,
) -> None:
    """Store a task's annotation as the rater's label: with the draft it started from (Label
    Studio's parent prediction, else a handed-out draft it equals); a copy of another rater's
    current label is rejected unless allowed (``labels.handouts``)."""
    shape = (image.rows, image.cols)
    try:
        converted = results_to_mask(annotation.get("result") or [], protocol, shape)
        mask = validate_mask(converted.mask, protocol, shape, allow_empty=allow_empty)
    except BadLabel as exc:
        report.rejected.append((item, str(exc)))
        return
    for note in converted.notes:
        report.notes.append((item, note))
    draft = _draft_of(s, ws, task or {}, annotation, protocol, shape)
    draft = _with_clicks(s, draft, annotation, item, report)
    digest = pixel_digest(np.ascontiguousarray(mask))
    if draft is None:
        handouts = Handouts(s, [image.id])
        handout = handouts.draft(image.id, digest, rater.id)
        draft = None if handout is None else origin_of(s, handout)
        if draft is None:
            draft = _draft_by_overlap(s, ws, handouts, image, rater, task or {}, mask, protocol)
            if draft is not None:
                report.notes.append(
                    (
                        item,
                        f"no parent_prediction, but close to the draft {excerpt(draft.version)} "
                        f"handed to {rater.name} (IoU {_ious_text(draft)}): stored as started "
                        "from it",
                    )
                )
    elif draft.run_id is None and draft.mask_hash is not None:
        # a prediction datatool handed this rater (prelabel --propagate): its recorded origin
        handout = Handouts(s, [image.id]).draft(image.id, draft.mask_hash, rater.id)
        if handout is not None and handout.rater_id == rater.id:
            draft = origin_of(s, handout)
    own = latest_annotation(s, image.id, rater.id)
    copied = (
        copies_of_others(s, rater.id, [(image.id, digest)])
        if mask.any()
        and (own is None or own.mask_hash != digest)
        and (draft is None or draft.mask_hash != digest)
        else {}
    )
    if copied:
        copies = copies if copies is not None else _Copies(None)
        if copies.allow is None:
            copies.refused += 1
            report.rejected.append((item, BREACH))
            return
        copies.allowed.update(copied)
    stored = store_annotation(
        s, ws.store, image, rater, mask, "labelstudio", ref, protocol, draft=draft
    )
    if stored.created:
        report.new_versions += 1
    else:
        report.unchanged += 1


def sync_from_server(
    ws: Workspace,
    rater: str,
    url: str | None = None,
    token: str | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
    project_id: int | None = None,
    allow_copy: str | None = None,
) -> SyncReport:
    """Bring the rater's labels from their Label Studio project(s) into the catalogue. A
    label identical to another rater's current label is rejected as a copy unless
    ``allow_copy`` gives the reason (audited)."""
    copies = _Copies(check_allow_copy(allow_copy))
    protocol = load_protocol(ws.protocol_name)
    report = SyncReport(source="labelstudio", rater=rater)
    with ws.session() as s:
        r = labelling_rater(s, rater, "'sync labelstudio'")
        report.rater = r.name
        where = rater_server(s, r, url)
        if project_id is not None:
            row = _recorded_project(s, int(project_id), r)
            if row is None:
                raise DatatoolError(
                    f"Label Studio project {project_id} was not pushed by datatool: sync only "
                    "reads projects made by 'datatool labelstudio push' (for a project of your "
                    "own, export it as JSON and use --export)"
                )
            if row.rater_id != r.id:
                raise DatatoolError(
                    f"Label Studio project {project_id} belongs to rater {row.rater.name}, not "
                    f"{r.name}: a rater's labels come only from their own project "
                    "(double-blind)"
                )
            rows = [row]
        else:
            rows = _rater_projects(s, r.id)
        if not rows:
            raise DatatoolError(
                f"rater {r.name} has no Label Studio project yet: run "
                f"'datatool labelstudio push --rater {r.name}' first"
            )
        projects = [(row.id, row.project_id) for row in rows]
        mappings = {
            row_id: dict(
                s.execute(
                    select(LabelStudioTask.task_id, LabelStudioTask.image_id).where(
                        LabelStudioTask.project_id == row_id
                    )
                ).all()
            )
            for row_id, _ in projects
        }
        places = frame_places(s, {i for m in mappings.values() for i in m.values()})

    def named(image_id: int) -> str:  # a cine frame says its file and frame
        place = places.get(image_id)
        return image_name(image_id) + (f", {place}" if place else "")

    conn = where.connect(token)
    fetched = []
    for row_id, pid in projects:
        _server_project(conn, pid, report.rater)
        fetched.append((row_id, pid, _server_tasks(conn, pid, annotations=True)))
    total = sum(len(tasks) for _, _, tasks in fetched)
    done = 0
    with ws.session() as s:
        r = get_rater(s, report.rater)
        for row_id, pid, tasks in fetched:
            mapping = mappings[row_id]
            on_server = set()
            for task in sorted(tasks, key=lambda t: int(t["id"])):
                tid = int(task["id"])
                on_server.add(tid)
                report.seen += 1
                item = f"project {pid} task {tid}"
                data = task.get("data") or {}
                if tid not in mapping:
                    report.rejected.append(
                        (
                            item,
                            "not a task datatool pushed (made on the server "
                            "or by a storage sync): not stored",
                        )
                    )
                elif str(data.get("image_id")) != image_name(mapping[tid]):
                    report.rejected.append(
                        (
                            item,
                            f"its data names image "
                            f"{excerpt(data.get('image_id'))}, but datatool "
                            f"pushed {image_name(mapping[tid])} as this "
                            "task: not stored",
                        )
                    )
                else:
                    item = f"{item} ({named(mapping[tid])})"
                    annotation = _pick_annotation(task, item, report)
                    if annotation is not None:
                        ref = f"project {pid} task {tid} annotation {annotation.get('id')}"
                        _store_task(
                            s,
                            ws,
                            image_by_id(s, mapping[tid]),
                            r,
                            annotation,
                            protocol,
                            item,
                            ref,
                            allow_empty,
                            report,
                            task,
                            copies,
                        )
                done += 1
                if progress:
                    progress(done, total)
            for tid in sorted(set(mapping) - on_server):
                report.notes.append(
                    (
                        f"project {pid} task {tid} ({named(mapping[tid])})",
                        "recorded by datatool but deleted on the server",
                    )
                )
        _news_notes(s, ws, [pid for _, pid in projects], report)
        audit(
            s,
            "sync labelstudio",
            "server",
            rater=report.rater,
            projects=[pid for _, pid in projects],
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
            copies_refused=copies.refused,
            copies_allowed=len(copies.allowed),
        )
        audit_copies(s, "sync labelstudio", report.rater, copies.allowed, copies.allow or "")
    return report


def _news_notes(s, ws: Workspace, synced: list[int], report: SyncReport) -> None:
    """What the ML backend's webhooks heard: for the projects just synced (then forgotten),
    and which other datatool projects have news waiting."""
    for news in take_news(ws.meta_dir, synced):
        report.notes.append(
            (
                f"project {news.project_id}",
                f"{news.events} Label Studio events since the last sync (last {news.last})",
            )
        )
    waiting = {n.project_id: n for n in read_news(ws.meta_dir)}
    if waiting:
        for row in s.scalars(
            select(LabelStudioProject).where(LabelStudioProject.project_id.in_(list(waiting)))
        ):
            report.notes.append(
                (
                    f"project {row.project_id}",
                    f"has news ({waiting[row.project_id].events} events): sync it with "
                    f"--rater {row.rater.name}",
                )
            )


# --------------------------------------------------------------------------- export


def _local_files_path(value: str) -> str | None:
    parts = urlsplit(value)
    if "local-files" in parts.path and parts.query:
        d = parse_qs(parts.query).get("d")
        return d[0] if d else None
    return None


class _Escapes(NoImage):
    """A path from a task that would leave ``--dicom-root``; never looked for elsewhere."""


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (OSError, ValueError, RuntimeError):  # outside, or a loop of links
        return False
    return True


def _resolve_path(text: str, dicom_root: Path | None) -> Path | None:
    """An existing file for a path named in a task, under ``dicom_root`` (also after
    dropping leading folders, for paths relative to another root such as the server's
    document root). Raises :class:`_Escapes` for a path that would leave the root: absolute,
    with a ``..``, or through a symbolic link that points out of it."""
    path = Path(text)
    if path.is_absolute():
        raise _Escapes(
            "names an absolute path: paths in task data are taken relative to --dicom-root "
            "only (give them relative to it)"
        )
    if ".." in path.parts:
        raise _Escapes("names a path with '..': paths in task data may not leave --dicom-root")
    if dicom_root is None:
        return None
    parts = path.parts
    for k in range(len(parts)):
        candidate = dicom_root.joinpath(*parts[k:])
        if not _is_file(candidate):
            continue
        if not _inside(candidate, dicom_root):
            raise _Escapes(
                "names a path that leads out of --dicom-root through a symbolic link: not read"
            )
        return candidate
    return None


def _fields(data: dict) -> str:
    """A task's field names for a message: a few, each a short escaped excerpt."""
    names = sorted(map(str, data))
    shown = ", ".join(excerpt(n, 24) for n in names[:8])
    return (shown + f" and {len(names) - 8} more" if len(names) > 8 else shown) or "none"


@dataclass(frozen=True)
class _Named:
    """A field of a task's data naming its image: by SOP Instance UID or DICOM path."""

    field: str
    kind: str  # "uid" or "path"
    ref: str


def _references(data: dict, field: str | None, dicom_root: Path | None) -> list[_Named]:
    """The fields of a task that name its DICOM image, each as a UID or a path under
    ``dicom_root``; raises NoImage when none does or a named path may not be read. Without
    ``field``, only a value that could be a path or a UID is looked at: free text (longer than
    any path, or on several lines), and paths that are not DICOM files under the root (the
    server's own image URLs), are not references and are ignored."""
    if field is not None:
        if field not in data:
            raise NoImage(f"its data has no field {excerpt(field)} (fields: {_fields(data)})")
        values = [(field, data[field])]
    else:
        values = list(data.items())
    strong: list[_Named] = []
    weak: list[_Named] = []
    for key, value in values:
        if not isinstance(value, str) or not value.strip():
            continue
        text = value.strip()
        if field is None and (len(text) > MAX_REFERENCE or not text.isprintable()):
            continue  # a comment, a description: not the image reference
        text = _local_files_path(text) or text
        if UID_RE.match(text) and len(text) <= 64:
            strong.append(_Named(str(key), "uid", text))
            continue
        dicom_path = field is not None or text.lower().endswith(".dcm")
        try:
            resolved = _resolve_path(text, dicom_root)
        except _Escapes as exc:
            if not dicom_path:
                continue  # not a DICOM path (e.g. the server's /data/upload/... URL)
            raise _Escapes(f"field {excerpt(key)} {exc}") from None
        if dicom_path:  # an unresolved path is named in messages, never read from the cwd
            where = dicom_root / text if dicom_root is not None else text
            strong.append(_Named(str(key), "path", str(resolved or where)))
        elif resolved is not None:
            weak.append(_Named(str(key), "path", str(resolved)))
    found = strong or weak
    if not found:
        raise NoImage(
            "no field names a DICOM file or SOP Instance UID "
            f"(fields: {_fields(data)}); pass --field NAME"
        )
    for ref in found:
        if ref.kind == "path" and dicom_root is None:
            raise NoImage(
                f"field {excerpt(ref.field)} names the relative path {clipped(ref.ref)}: "
                "pass --dicom-root, the folder it is relative to"
            )
    return found


def _image_of_task(s, key: bytes, data: dict, field: str | None, root: Path | None) -> Image:
    """The catalogued image a task's data names. Several fields may name it (a path, the
    server's URL of the same file, its UID) as long as they all name the same image; fields
    that name different images, or one that names none beside one that does, are an error
    naming both fields (NoImage)."""
    found = _references(data, field, root)
    images: dict[str, Image] = {}  # field -> its image
    by_ref: dict[tuple[str, str], Image] = {}
    for named in found:
        try:
            if (named.kind, named.ref) not in by_ref:
                by_ref[named.kind, named.ref] = (
                    image_for_sop_uid(s, key, named.ref)
                    if named.kind == "uid"
                    else image_for_dicom(s, key, Path(named.ref))
                )
        except NoImage as exc:
            if len(found) == 1:
                raise
            raise NoImage(f"field {excerpt(named.field)}: {exc}") from None
        images[named.field] = by_ref[named.kind, named.ref]
    first_field, first = next(iter(images.items()))
    for other_field, other in images.items():
        if other.id != first.id:
            raise NoImage(
                f"fields {excerpt(first_field)} and {excerpt(other_field)} name different "
                f"images ({image_name(first.id)} and {image_name(other.id)}): not stored; "
                "pass --field NAME for the field that names the labelled image"
            )
    return first


def _foreign_annotations(task: dict, export_ids: set[int], item: str, report: SyncReport) -> dict:
    """The task without the annotations whose ``task`` field names another task (of this
    export, or one not in it): each is one rejected line, not stored."""
    kept = []
    for annotation in task.get("annotations") or []:
        owner = annotation.get("task") if isinstance(annotation, dict) else None
        if owner is None or owner == task.get("id"):
            kept.append(annotation)
            continue
        where = (
            f"belongs to task {owner} of this export"
            if owner in export_ids
            else f"names task {owner}, which is not in this export"
        )
        report.rejected.append(
            (f"{item} annotation {annotation.get('id')}", f"{where}, not to this task: not stored")
        )
    if len(kept) == len(task.get("annotations") or []):
        return task
    return {**task, "annotations": kept}


def sync_from_export(
    ws: Workspace,
    rater: str,
    export_file: Path | str,
    dicom_root: Path | str | None = None,
    field: str | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
    allow_copy: str | None = None,
) -> SyncReport:
    """Bring a rater's labels in from a Label Studio JSON export of a project made before
    datatool, matching each task to its image through the DICOM file (or SOP Instance UID)
    its data names. Paths from the export are used for matching only, never stored. A label
    identical to another rater's current label is rejected as a copy unless ``allow_copy``
    gives the reason (audited)."""
    copies = _Copies(check_allow_copy(allow_copy))
    protocol = load_protocol(ws.protocol_name)
    export_file = Path(export_file)
    root = Path(dicom_root).expanduser().resolve() if dicom_root else None
    if root is not None and not root.is_dir():
        raise UsageError(f"--dicom-root {dicom_root} is not a folder")
    odd = not_regular(export_file)
    if odd is not None:
        raise UsageError(f"{export_file}: {odd}, not a Label Studio export file")
    try:
        items = parse_export(export_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no export file {export_file}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{export_file} is not UTF-8 text, not a Label Studio export") from None
    except OSError as exc:
        raise UsageError(f"{export_file}: cannot read it ({exc.strerror or exc})") from None
    except BadExport as exc:
        raise UsageError(f"{export_file}: {exc}") from None
    report = SyncReport(source="labelstudio", rater=rater)
    seen_images: dict[int, str] = {}
    export_ids = {
        e.task["id"] for e in items if e.task is not None and isinstance(e.task.get("id"), int)
    }
    with ws.session() as s:
        r = labelling_rater(s, rater, "'sync labelstudio'")
        report.rater = r.name
        for entry in items:
            n = entry.index
            report.seen += 1
            item = entry.name
            if entry.problem is not None or entry.task is None:
                report.rejected.append((item, entry.problem or "not a task"))
                if progress:
                    progress(n, len(items))
                continue
            task = entry.task
            tid = task.get("id", f"#{n}")
            data = task.get("data") or {}
            try:
                image = _image_of_task(s, ws.key, data, field, root)
            except NoImage as exc:
                report.rejected.append((item, str(exc)))
            else:
                name = image_name(image.id)
                item = f"{item} ({name})"
                if image.id in seen_images:
                    report.rejected.append(
                        (
                            item,
                            f"{seen_images[image.id]} of this export "
                            "already labels the same image: not stored",
                        )
                    )
                else:
                    seen_images[image.id] = f"task {tid}"
                    own = _foreign_annotations(task, export_ids, item, report)
                    if own is not task and not own["annotations"]:
                        annotation = None  # its only annotations were another task's
                    else:
                        annotation = _pick_annotation(own, item, report)
                    task = own
                    if annotation is not None:
                        project = annotation.get("project") or task.get("project")
                        ref_text = (
                            f"export project {project} " if project else "export "
                        ) + f"task {tid} annotation {annotation.get('id')}"
                        _store_task(
                            s,
                            ws,
                            image,
                            r,
                            annotation,
                            protocol,
                            item,
                            ref_text,
                            allow_empty,
                            report,
                            task,
                            copies,
                        )
            if progress:
                progress(n, len(items))
        audit(
            s,
            "sync labelstudio",
            "export",
            rater=report.rater,
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
            copies_refused=copies.refused,
            copies_allowed=len(copies.allowed),
        )
        audit_copies(s, "sync labelstudio", report.rater, copies.allowed, copies.allow or "")
    return report
