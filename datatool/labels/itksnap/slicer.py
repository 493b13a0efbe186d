"""3D Slicer segmentations (``.seg.nrrd``) read by segment name, and Slicer colour tables.

Pure functions of files and arrays, no database. A ``.seg.nrrd`` stores each segment's name,
label value and layer in its header (``SegmentN_Name``, ``SegmentN_LabelValue``,
``SegmentN_Layer``); the values are Slicer's own (1, 2, 3 in the order segments were made),
not the protocol's. So a segmentation is read with ``slicerio`` segment by segment:

* each segment is matched to a protocol structure by its name or an alias, in any case and
  with words separated by spaces, underscores or hyphens (``Sciatic_Nerve`` is ``sciatic
  nerve``; :meth:`Protocol.by_segment_name`); a segment no structure answers to refuses the
  file (one line naming the segment: nothing of the file is stored);
* each segment's own mask is taken from its layer; a layered file (4-D: segments that
  overlap lie in several layers) is accepted. The masks are painted into one label map in the
  protocol's painting order (:attr:`Protocol.painting_order`): where two structures claim a
  pixel the one painted later wins, and each such overlap is a note with its pixel count;
* two segments that name the same structure are merged (a note says so); a voxel value that
  no segment of its layer claims refuses the file (the header and the voxels disagree).

The map's geometry (``ijkToLPS``) goes back to :mod:`itksnap.formats`, which turns it to the
orientation datatool writes as for any other label map, which takes one slice (W x H x 1);
:func:`read_segments` itself paints any number of slices (a cine's W x H x N).

``color_table`` writes the protocol as a Slicer colour table (``.ctbl``: ``# Color table
file`` header, then ``value name R G B A`` lines, spaces in names as underscores, alpha
0..255), so an exported segmentation opens in Slicer with the protocol's names and colours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datatool.core.protocol import Protocol
from datatool.labels.masks import BadLabel

#: The colour table ``export itksnap`` writes beside the ITK-SNAP label description.
SLICER_COLORS_FILE = "slicer_colors.ctbl"
_NAME_SHOWN = 60  # characters of a segment name quoted in a message


@dataclass
class SlicerMap:
    """A segmentation painted into protocol values: ``array`` is W x H x N (N = 1 for a
    still's map), indexed ``[i, j, k]`` as the file stores it, with its voxel-to-LPS
    matrix."""

    array: np.ndarray
    ijk_to_lps: np.ndarray  # 4 x 4
    notes: list[str] = field(default_factory=list)


def _shown(name: str) -> str:
    name = " ".join(str(name).split())
    return repr(name if len(name) <= _NAME_SHOWN else name[: _NAME_SHOWN - 3] + "...")


def _header(path: Path) -> dict:
    import nrrd

    try:
        return dict(nrrd.read_header(str(path)))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, KeyError, ...
        raise BadLabel(f"not a readable 3D Slicer segmentation ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def has_segments(path: Path) -> bool:
    """Whether a NRRD file's header describes Slicer segments (``Segment0_...`` fields)."""
    return any(str(key).startswith("Segment0_") for key in _header(path))


def declared_size(path: Path) -> tuple[int, ...]:
    """The spatial sizes (i, j, k) a segmentation's header declares, read before any voxel
    is decoded; a layered file's first (list) axis is left out."""
    header = _header(path)
    sizes = [int(n) for n in np.atleast_1d(header.get("sizes", ()))]
    kinds = [str(k) for k in header.get("kinds", ())]
    if kinds[:1] == ["list"] and len(sizes) == 4:
        sizes = sizes[1:]
    return tuple(sizes)


def read_segments(path: Path, protocol: Protocol) -> SlicerMap:
    """Read a ``.seg.nrrd`` with ``slicerio`` and paint its segments into one map of the
    protocol's values (see the module docstring). Raises :class:`BadLabel` with a one-line
    reason: an unreadable file, a segment name the protocol does not know, a layer or value
    the header and voxels disagree on."""
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises IOError/ValueError for what it does not read
        raise BadLabel(f"not a readable 3D Slicer segmentation ({_reason(exc)})") from None
    voxels = np.asarray(seg.get("voxels"))
    if voxels.ndim == 3:
        layers = voxels[np.newaxis]
    elif voxels.ndim == 4:
        layers = voxels
    else:
        raise BadLabel(f"a 3D Slicer segmentation of {voxels.ndim} dimensions; expected 3 or 4")
    if not np.issubdtype(layers.dtype, np.integer):
        raise BadLabel(f"segmentation voxels are {layers.dtype}, not integer label values")
    segments = list(seg.get("segments") or [])
    matched: dict[int, list[dict]] = {}
    unknown: list[str] = []
    for segment in segments:
        name = str(segment.get("name") or segment.get("id") or "")
        try:
            matched.setdefault(protocol.by_segment_name(name).value, []).append(segment)
        except KeyError:
            unknown.append(name)
    if unknown:
        known = ", ".join(s.name for s in protocol.structures)
        raise BadLabel(
            f"segment{'s' if len(unknown) > 1 else ''} {', '.join(map(_shown, unknown))} "
            f"{'are' if len(unknown) > 1 else 'is'} not in protocol {protocol.name} (it knows "
            f"{known} and their aliases, in any case): file not stored; rename the segment "
            "in Slicer"
        )
    _check_values(layers, segments)
    notes: list[str] = []
    masks: dict[int, np.ndarray] = {}
    for value, owned in matched.items():
        mask = np.zeros(layers.shape[1:], bool)
        for segment in owned:
            mask |= layers[int(segment.get("layer", 0))] == int(segment.get("labelValue", 1))
        masks[value] = mask
        if len(owned) > 1:
            names = ", ".join(_shown(str(s.get("name") or s.get("id"))) for s in owned)
            notes.append(
                f"segments {names} are all {protocol.by_value(value).name}: merged into one"
            )
    out = np.zeros(layers.shape[1:], np.uint8)
    for structure in protocol.painting_order:
        if structure.value not in masks:
            continue
        painted = masks[structure.value]
        covered = out[painted]
        clash = covered[covered != 0]
        for value, count in zip(*np.unique(clash, return_counts=True)):
            notes.append(
                f"{protocol.by_value(int(value)).name} and {structure.name} overlap on "
                f"{int(count)} px: {structure.name} wins (painted later in the protocol's "
                "paint order)"
            )
        out[painted] = structure.value
    return SlicerMap(out, np.asarray(seg["ijkToLPS"], float), notes)


def _check_values(layers: np.ndarray, segments: list[dict]) -> None:
    """Every segment's layer exists, and every non-zero voxel value is some segment's."""
    claimed: dict[int, set[int]] = {}
    for segment in segments:
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < layers.shape[0]:
            raise BadLabel(
                f"segment {_shown(str(segment.get('name')))} is in layer {layer}, but the "
                f"file has {layers.shape[0]} layer(s)"
            )
        claimed.setdefault(layer, set()).add(int(segment.get("labelValue", 1)))
    for layer in range(layers.shape[0]):
        present = {int(v) for v in np.unique(layers[layer])} - {0}
        stray = sorted(present - claimed.get(layer, set()))
        if stray:
            raise BadLabel(
                f"layer {layer} holds value(s) {', '.join(map(str, stray[:5]))} that no "
                "segment in its header claims (the header and the voxels disagree)"
            )


def color_table(protocol: Protocol, name: str = SLICER_COLORS_FILE) -> str:
    """The protocol as a 3D Slicer colour table (``.ctbl``): background 0, then each
    structure's value, name (spaces as underscores, as the format asks), colour and full
    opacity."""
    lines = [
        f"# Color table file {name}",
        f"# {len(protocol.structures) + 1} values",
        "0 Background 0 0 0 0",
    ]
    for s in sorted(protocol.structures, key=lambda s: s.value):
        r, g, b = s.color
        lines.append(f"{s.value} {'_'.join(s.name.split())} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


__all__ = [
    "SLICER_COLORS_FILE",
    "SlicerMap",
    "color_table",
    "declared_size",
    "has_segments",
    "read_segments",
]
