"""Label maps <-> Label Studio brush results. Pure functions: no database, no network.

A label map is a 2D uint8 array holding 0 (background) or the protocol's label values (see
``masks``). In Label Studio a rater's drawing on an image is a list of *result entries*; a
brush region is::

    {"type": "brushlabels", "from_name": "label", "to_name": "image",
     "original_width": W, "original_height": H, "image_rotation": 0,
     "value": {"format": "rle", "rle": [...], "brushlabels": ["sciatic nerve"]}}

whose RLE (``label_studio_sdk.converter.brush``) encodes a flat RGBA image of H x W x 4 bytes;
a pixel belongs to the region when its alpha byte (channel 3) is above 0.

Going out, one entry is made per structure present in the map (in protocol order), so the
rater sees one region per structure. Coming back, every entry must be a brush region with
exactly one label that the protocol knows (by name or alias, case-insensitive) and the image's
size; anything else raises :class:`masks.BadLabel` with the reason. Regions of the same
structure are merged. **Overlaps:** where regions of two different structures cover the same
pixel, the later entry in the result list wins (Label Studio draws later regions on top); each
such overlap is reported in :attr:`LabelMap.notes` with its pixel count, never silently.

**Clicks.** In a project pushed for an interactive run (``labelstudio push --interactive``) a
rater may also place points with the smart KeyPointLabels tool (``CLICKS_NAME``): each point
goes to the interactive ML backend, which answers with the redrawn brush region. The points
are the rater's clicks, not labels: :func:`results_to_mask` skips ``keypointlabels`` entries.
A redrawn region carries its provenance in its ``meta`` (:func:`clicks_meta`: the model
version and the number of points it was redrawn from), which Label Studio keeps on the region
when the rater accepts it; :func:`clicks_of` reads it back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datatool.core.protocol import Protocol
from datatool.labels.masks import BadLabel
from datatool.labels.quoting import excerpt

FROM_NAME = "label"
TO_NAME = "image"
CLICKS_NAME = "clicks"  # the smart KeyPointLabels tool of an interactive project
CLICKS_META = "datatool_clicks"  # a redrawn brush region's provenance, in its result's meta
CLICK_TYPE = "keypointlabels"


@dataclass
class LabelMap:
    """A label map decoded from result entries, with what the decoding had to decide."""

    mask: np.ndarray
    notes: list[str] = field(default_factory=list)  # overlaps, reported not errors


def mask_to_results(
    mask: np.ndarray, protocol: Protocol, from_name: str = FROM_NAME, to_name: str = TO_NAME
) -> list[dict]:
    """Result entries for a label map: one ``brushlabels`` region per structure present.

    Values that are not the protocol's raise :class:`BadLabel`; an empty map gives ``[]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BadLabel(f"label map is {mask.ndim}-D {mask.shape}, expected a 2D map")
    height, width = mask.shape
    present = [int(v) for v in np.unique(mask) if v != 0]
    unknown = [v for v in present if v not in protocol.values]
    if unknown:
        raise BadLabel(
            f"unknown label value(s) {unknown} "
            f"(protocol {protocol.name} knows {list(protocol.values)})"
        )
    results = []
    for structure in protocol.structures:
        if structure.value not in present:
            continue
        binary = np.where(mask == structure.value, 255, 0).astype(np.uint8)
        results.append(
            {
                "id": f"datatool-{structure.value}",
                "type": "brushlabels",
                "from_name": from_name,
                "to_name": to_name,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": [int(b) for b in mask2rle(binary)],
                    "brushlabels": [structure.name],
                },
            }
        )
    return results


def clicks_meta(model_version: str, clicks: int) -> dict:
    """The ``meta`` of a brush region redrawn by a model from ``clicks`` points: Label Studio
    keeps it on the region when the rater accepts it, so sync can tell the label's origin."""
    return {CLICKS_META: {"model_version": str(model_version), "clicks": int(clicks)}}


@dataclass(frozen=True)
class Clicked:
    """What an annotation's regions say of the clicks they were redrawn from."""

    model_version: str  # the model that redrew them (the first region's when several)
    clicks: int  # points, summed over the redrawn regions
    regions: int  # brush regions redrawn from clicks
    versions: tuple[str, ...] = ()  # every model version named, in order (several: a note)


def clicks_of(results: Any) -> Clicked | None:
    """The click provenance of a result list: from the brush regions whose ``meta`` holds
    :func:`clicks_meta` (a malformed one is ignored); None when no region was redrawn."""
    versions: list[str] = []
    clicks = regions = 0
    for entry in results if isinstance(results, list) else []:
        if not isinstance(entry, dict) or entry.get("type") != "brushlabels":
            continue
        meta = entry.get("meta")
        info = meta.get(CLICKS_META) if isinstance(meta, dict) else None
        if not isinstance(info, dict):
            continue
        version, count = info.get("model_version"), info.get("clicks")
        if not isinstance(version, str) or not version.strip():
            continue
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < 10**6:
            continue
        regions += 1
        clicks += count
        if version not in versions:
            versions.append(version)
    if not regions:
        return None
    return Clicked(versions[0], clicks, regions, tuple(versions))


def _region_name(entry: dict, index: int) -> str:
    value = entry.get("value") if isinstance(entry, dict) else None
    labels = value.get("brushlabels") if isinstance(value, dict) else None
    if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
        return f"region {index + 1} ({', '.join(labels)})"
    return f"region {index + 1}"


def _brush_labels(entry: dict, what: str) -> list[str]:
    """A decoded region's ``brushlabels``: a list of names, else BadLabel (never its value)."""
    labels = entry["value"].get("brushlabels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise BadLabel(f"{what}: its brushlabels must be a list of names")
    return labels


def decode_region(entry: dict, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """The boolean pixel mask of one brush result entry (checked against ``shape``, H x W)."""
    height, width = shape
    what = _region_name(entry, index)
    if not isinstance(entry, dict):
        raise BadLabel(f"{what}: a result entry must be an object, got {type(entry).__name__}")
    kind = entry.get("type")
    if kind != "brushlabels":
        raise BadLabel(
            f"{what}: a {excerpt(kind)} result, not a brush mask (only brushlabels "
            "regions can be stored as label maps)"
        )
    ow, oh = entry.get("original_width"), entry.get("original_height")
    if ow is not None and oh is not None:
        try:
            drawn = (int(ow), int(oh))
        except (TypeError, ValueError, OverflowError):
            raise BadLabel(
                f"{what}: original_width and original_height must be whole numbers"
            ) from None
        if drawn != (width, height):
            raise BadLabel(
                f"size mismatch: {what} was drawn on a {drawn[0]}x{drawn[1]} image, "
                f"the image is {width}x{height} (width x height)"
            )
    value = entry.get("value") or {}
    if not isinstance(value, dict):
        raise BadLabel(f"{what}: its value must be an object, got {type(value).__name__}")
    if value.get("format", "rle") != "rle" or not value.get("rle"):
        raise BadLabel(
            f"{what}: brush data in format {excerpt(value.get('format'))} without an RLE "
            "(only RLE brush masks are supported)"
        )
    declared = rle_values(value["rle"])
    if declared != height * width * 4:  # checked before decoding: the decoder trusts it
        raise BadLabel(
            f"size mismatch: {what}'s brush RLE declares {declared} values, the "
            f"{width}x{height} image needs {height * width * 4} (width x height x 4): not "
            "decoded"
        )
    try:
        flat = decode_rle(value["rle"])
    except Exception as exc:  # corrupt or truncated RLE
        raise BadLabel(f"{what}: brush RLE does not decode ({type(exc).__name__})") from None
    if flat.size != height * width * 4:
        raise BadLabel(
            f"size mismatch: {what} holds {flat.size // 4} pixels, the image has "
            f"{height * width} ({width}x{height})"
        )
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def rle_values(rle: Any) -> int:
    """How many values (bytes of the RGBA image) a Label Studio brush RLE declares in its
    32-bit header; -1 when it has no readable header."""
    try:
        head = [int(b) for b in rle[:4]]
    except (TypeError, ValueError, KeyError):
        return -1
    if len(head) < 4 or any(not 0 <= b <= 255 for b in head):
        return -1
    return (head[0] << 24) | (head[1] << 16) | (head[2] << 8) | head[3]


def results_to_mask(results: list[dict], protocol: Protocol, shape: tuple[int, int]) -> LabelMap:
    """The label map (H x W = ``shape``) of a list of result entries.

    Raises :class:`BadLabel` for an unknown or missing label name, several labels on one
    region, a size that differs from the image, or a result that is not a brush mask. The
    rater's clicks (``keypointlabels`` entries of an interactive project) are not labels and
    are skipped.
    Where regions of different structures overlap the later entry wins; each overlap is
    reported in the returned notes.
    """
    height, width = (int(shape[0]), int(shape[1]))
    mask = np.zeros((height, width), np.uint8)
    notes: list[str] = []
    if not isinstance(results or [], list):  # a server's annotation is not checked as an export
        raise BadLabel(f"the result must be a list of regions, got {type(results).__name__}")
    for index, entry in enumerate(results or []):
        if isinstance(entry, dict) and entry.get("type") == CLICK_TYPE:
            continue  # a click for the interactive backend, not a label
        region = decode_region(entry, (height, width), index)
        labels = _brush_labels(entry, _region_name(entry, index))
        if len(labels) != 1:
            raise BadLabel(
                f"{_region_name(entry, index)}: a brush region must carry exactly one "
                f"label, it has {len(labels)}"
            )
        try:
            structure = protocol.by_label(str(labels[0]))
        except KeyError:
            known = ", ".join(s.name for s in protocol.structures)
            raise BadLabel(
                f"unknown label {excerpt(labels[0])} (protocol {protocol.name} knows "
                f"{known}, and their aliases)"
            ) from None
        covered = mask[region]
        clash = covered[(covered != 0) & (covered != structure.value)]
        for value, count in zip(*np.unique(clash, return_counts=True)):
            notes.append(
                f"{protocol.by_value(int(value)).name} and {structure.name} overlap on "
                f"{int(count)} px: the later region ({structure.name}) wins"
            )
        mask[region] = structure.value
    return LabelMap(mask, notes)


# --------------------------------------------------------------------------- JSON exports
# A Label Studio JSON export is a list of tasks. Each task is checked against these models on
# its own: a task of the wrong shape (a result value that is a list, a size that is not a
# number, an annotation that is not an object, ...) is one rejected line, the rest go on.
# Fields the models do not name are kept as they are.

MAX_JSON_DEPTH = 64  # deeper than any Label Studio task; deeper input is refused unparsed
_Byte = Annotated[int, Field(ge=0, le=255)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ExportValue(_Open):
    format: str | None = None
    rle: list[_Byte] | None = None
    brushlabels: list[str] | None = None


class ExportResult(_Open):
    type: str | None = None
    from_name: str | None = None
    to_name: str | None = None
    original_width: Annotated[int, Field(ge=0)] | None = None
    original_height: Annotated[int, Field(ge=0)] | None = None
    value: ExportValue | None = None


class ExportAnnotation(_Open):
    id: int | None = None
    result: list[ExportResult] | None = None
    was_cancelled: bool | None = None
    created_at: str | float | None = None
    updated_at: str | float | None = None
    project: int | None = None
    task: int | None = None  # the task it belongs to (checked against the task holding it)


class ExportTask(_Open):
    id: int | None = None
    data: dict[str, Any] | None = None
    annotations: list[ExportAnnotation] | None = None
    project: int | None = None


@dataclass
class ExportItem:
    """One task of an export: its checked content (``task``), or why it was refused."""

    index: int  # 1-based position in the export
    task: dict | None = None
    problem: str | None = None

    @property
    def name(self) -> str:
        """How messages name the task: its id when it has a usable one."""
        tid = self.task.get("id") if self.task else None
        return f"task {tid}" if tid is not None else f"task #{self.index}"


def check_task(raw: Any, index: int) -> ExportItem:
    """A task checked against :class:`ExportTask`; the first problem is one line naming
    where it is (never the value found there: it is the file's data)."""
    if not isinstance(raw, dict):
        return ExportItem(index, problem=f"not a task: an {type(raw).__name__}, not an object")
    try:
        task = ExportTask.model_validate(raw).model_dump(exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the task"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        tid = raw.get("id")
        item = ExportItem(index, task={"id": tid} if isinstance(tid, int) else None)
        message = re.sub(r" or instance of \w+", "", first["msg"])
        item.problem = f"not a valid Label Studio task: {where}: {message}{more}"
        return item
    return ExportItem(index, task=task)


class BadExport(ValueError):
    """An export that is not a JSON list of tasks at all; ``str()`` is the reason."""


def parse_export(text: str) -> list[ExportItem]:
    """The tasks of a Label Studio JSON export (a list of tasks, or one task), each checked
    on its own. Raises :class:`BadExport` when the text is not such JSON."""
    try:
        tasks: Any = json.loads(text)
    except RecursionError:  # nested deeper than the parser goes: split it, refuse the deep
        return list(_split_deep_export(text))
    except ValueError as exc:
        raise BadExport(f"not JSON ({exc})") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise BadExport("not a Label Studio JSON export (a list of tasks)")
    return [_checked(task, n) for n, task in enumerate(tasks, 1)]


def _checked(task: Any, index: int) -> ExportItem:
    depth = _depth(task)
    if depth > MAX_JSON_DEPTH:
        return ExportItem(
            index, problem=f"nested {depth} levels deep (at most {MAX_JSON_DEPTH}): not a task"
        )
    return check_task(task, index)


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item if isinstance(v, dict | list))
    return deepest


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def _split_deep_export(text: str) -> Iterator[ExportItem]:
    """The elements of a top-level JSON list, found without parsing: an element nested
    deeper than MAX_JSON_DEPTH is refused, the others are parsed and checked one by one."""
    depth, start, deepest, index = 0, None, 0, 0
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth == 1:
                if char != "[":
                    raise BadExport("a task nested too deeply to read (not a list of tasks)")
                start = token.end()
            deepest = max(deepest, depth)
        elif char in "]}" or (char == "," and depth == 1):
            if depth == 1 and start is not None:
                element = text[start : token.start()]
                if element.strip():
                    index += 1
                    yield _element(element, index, deepest - 1)
                start, deepest = token.end(), 1
            if char != ",":
                depth -= 1
    if depth != 0:
        raise BadExport("not JSON (it ends inside a list or object)")


def _element(element: str, index: int, depth: int) -> ExportItem:
    if depth > MAX_JSON_DEPTH:
        return ExportItem(
            index, problem=f"nested {depth} levels deep (at most {MAX_JSON_DEPTH}): not a task"
        )
    try:
        return check_task(json.loads(element), index)
    except ValueError as exc:
        return ExportItem(index, problem=f"not JSON ({exc})")
