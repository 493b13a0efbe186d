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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from datatool.core.protocol import Protocol
from datatool.labels.masks import BadLabel

FROM_NAME = "label"
TO_NAME = "image"


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


def _region_name(entry: dict, index: int) -> str:
    labels = (entry.get("value") or {}).get("brushlabels") if isinstance(entry, dict) else None
    return f"region {index + 1}" + (f" ({', '.join(map(str, labels))})" if labels else "")


def decode_region(entry: dict, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """The boolean pixel mask of one brush result entry (checked against ``shape``, H x W)."""
    height, width = shape
    what = _region_name(entry, index)
    if not isinstance(entry, dict):
        raise BadLabel(f"{what}: a result entry must be an object, got {type(entry).__name__}")
    kind = entry.get("type")
    if kind != "brushlabels":
        raise BadLabel(
            f"{what}: a {kind!r} result, not a brush mask (only brushlabels "
            "regions can be stored as label maps)"
        )
    ow, oh = entry.get("original_width"), entry.get("original_height")
    if ow is not None and oh is not None and (int(ow), int(oh)) != (width, height):
        raise BadLabel(
            f"size mismatch: {what} was drawn on a {int(ow)}x{int(oh)} image, "
            f"the image is {width}x{height} (width x height)"
        )
    value = entry.get("value") or {}
    if value.get("format", "rle") != "rle" or not value.get("rle"):
        raise BadLabel(
            f"{what}: brush data in format {value.get('format')!r} without an RLE "
            "(only RLE brush masks are supported)"
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


def results_to_mask(results: list[dict], protocol: Protocol, shape: tuple[int, int]) -> LabelMap:
    """The label map (H x W = ``shape``) of a list of result entries.

    Raises :class:`BadLabel` for an unknown or missing label name, several labels on one
    region, a size that differs from the image, or a result that is not a brush mask.
    Where regions of different structures overlap the later entry wins; each overlap is
    reported in the returned notes.
    """
    height, width = (int(shape[0]), int(shape[1]))
    mask = np.zeros((height, width), np.uint8)
    notes: list[str] = []
    for index, entry in enumerate(results or []):
        region = decode_region(entry, (height, width), index)
        labels = entry["value"].get("brushlabels") or []
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
                f"unknown label {labels[0]!r} (protocol {protocol.name} knows "
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
