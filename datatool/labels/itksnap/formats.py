"""ITK-SNAP files: images and segmentations as NIfTI, workspace files, label maps read back.

Pure functions of arrays and files, no database. Every 2D array is written and read in the
same orientation: array row 0 is the top row of the image, column 0 its left column (index
(x, y) of the ITK image is ``array[y, x]``; direction identity, origin 0), with the pixel
spacing in mm so that ITK-SNAP shows true sizes (1 mm when the image is not calibrated).
A segmentation is written exactly like its image (same size, spacing, origin, direction), as
ITK-SNAP requires; ITK-SNAP saves it back as W x H x 1, which :func:`read_label_map` accepts.

A 3D Slicer segmentation (``.seg.nrrd`` whose header describes segments) is read by segment
name when a protocol is given (``itksnap.slicer``): its values are Slicer's, not the
protocol's; a ``.seg.nrrd`` without segments in its header is a plain label map.

Label maps are read by content, not by name alone: a file is read with the reader of its
extension only (a PNG renamed ``.nii.gz`` is not silently read as a PNG), and a NIfTI file
cut short (which ITK would read, filling the rest with garbage) is refused.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import SimpleITK as sitk

from datatool.core.atomic import atomic_path, write_text_atomic
from datatool.core.files import not_regular
from datatool.core.protocol import Protocol
from datatool.labels.itksnap import nifti, slicer
from datatool.labels.masks import BadLabel

#: Label map file endings, longest first (``x.seg.nrrd`` is a ``.seg.nrrd``, not a ``.nrrd``).
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")
_FORMATS = {  # suffix -> (ITK ImageIO, name for people)
    ".nii.gz": ("NiftiImageIO", "NIfTI"),
    ".nii": ("NiftiImageIO", "NIfTI"),
    ".seg.nrrd": ("NrrdImageIO", "NRRD"),
    ".nrrd": ("NrrdImageIO", "NRRD"),
    ".mha": ("MetaImageIO", "MetaImage"),
    ".mhd": ("MetaImageIO", "MetaImage"),
}
#: The version date written into workspace files: that of ITK-SNAP 3.4's workspaces, which
#: every later ITK-SNAP opens.
WORKSPACE_VERSION = "20151215"
_HEAD_BYTES = 4096
_MAX_HEADER = 1 << 20  # a NRRD or MetaImage header (and a LIST of data files) is read up to this


def label_suffix(name: str) -> str | None:
    """The label map ending of a file name (case-insensitive, returned lower-case), or None."""
    lower = name.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


def strip_label_suffix(name: str) -> str:
    suffix = label_suffix(name)
    return name[: -len(suffix)] if suffix else name


def spacing_mm(mm_per_px_x: float | None, mm_per_px_y: float | None) -> tuple[float, float]:
    """(x, y) pixel spacing in mm; (1.0, 1.0) when the image is not calibrated."""
    if mm_per_px_x and mm_per_px_y:
        return float(mm_per_px_x), float(mm_per_px_y)
    return 1.0, 1.0


# --------------------------------------------------------------------------- writing


def _write_2d(path: Path, array: np.ndarray, spacing: tuple[float, float]) -> None:
    array = np.asarray(array)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"expected a 2D uint8 array, got {array.dtype} {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # size (W, H)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin((0.0, 0.0))
    with atomic_path(Path(path)) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_image(path: Path, pixels: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write a 2D 8-bit grayscale image as (compressed) NIfTI, atomically. The same pixels
    and spacing give the same bytes."""
    _write_2d(path, pixels, spacing)


def _write_3d(path: Path, array: np.ndarray, spacing: tuple[float, float]) -> None:
    array = np.asarray(array)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an N x H x W uint8 array, got {array.dtype} {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))  # size (W, H, N)
    image.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    image.SetOrigin((0.0, 0.0, 0.0))
    with atomic_path(Path(path)) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_segmentation_volume(path: Path, masks: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write a cine's label maps (uint8 N x H x W, frame k in slice k) as one W x H x N NIfTI
    volume, as ITK-SNAP saves the segmentation of a multi-frame image, atomically."""
    _write_3d(path, masks, spacing)


def write_segmentation(path: Path, mask: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write a 2D label map (uint8) as NIfTI with the geometry of its image, atomically."""
    _write_2d(path, mask, spacing)


def write_volume(path: Path, stack: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write a cine's frames (or their label maps) as one W x H x N NIfTI volume (uint8,
    ``stack[k]`` the k-th slice), atomically: the pixel spacing in mm, the slice spacing 1,
    origin 0, direction identity, as :func:`write_image` writes a still. The same stack and
    spacing give the same bytes."""
    _write_3d(path, stack, spacing)


def workspace_xml(
    image_file: str,
    segmentation_file: str,
    size: tuple[int, int],
    protocol: Protocol,
    slices: int = 1,
) -> str:
    """An ITK-SNAP workspace (``.itksnap``): the main image layer, the segmentation layer and
    the protocol's label table, with the layers' paths relative to the workspace's folder.

    ITK-SNAP finds the layers of a workspace whose folder differs from its ``SaveLocation``
    by taking each layer path's part below ``SaveLocation`` and looking for it beside the
    workspace file. ``SaveLocation`` is ``.`` and the paths are ``./NAME``: never a real
    folder, so ITK-SNAP always looks beside the workspace file, wherever it was copied.
    ``slices``: a cine's frames (the image is W x H x N)."""
    width, height = size
    lines: list[str] = []

    def entry(depth: int, key: str, value) -> None:
        lines.append(f"{'  ' * depth}<entry key={quoteattr(key)} value={quoteattr(str(value))} />")

    def folder(depth: int, key: str) -> None:
        lines.append(f"{'  ' * depth}<folder key={quoteattr(key)} >")

    def end(depth: int) -> None:
        lines.append(f"{'  ' * depth}</folder>")

    def layer(path: str, role: str, alpha: int, sticky: int) -> None:
        """A layer's file, role and metadata (inside its ``Layer[NNN]`` folder)."""
        entry(3, "AbsolutePath", path)
        entry(3, "Role", role)
        entry(3, "Tags", "")
        folder(3, "LayerMetaData")
        entry(4, "Alpha", alpha)
        entry(4, "CustomNickName", "")
        entry(4, "Sticky", sticky)
        entry(4, "Tags", "")
        end(3)

    lines += [
        '<?xml version="1.0" encoding="UTF-8" ?>',
        "<!--ITK-SNAP (itksnap.org) Project File",
        "",
        "Made by datatool. The image and segmentation paths are relative to this file's",
        "folder: keep the three files together and the folder can be moved or copied.",
        "-->",
        "<!DOCTYPE registry [",
        "<!ELEMENT registry (entry*,folder*)>",
        "<!ELEMENT folder (entry*,folder*)>",
        "<!ELEMENT entry EMPTY>",
        "<!ATTLIST folder key CDATA #REQUIRED>",
        "<!ATTLIST entry key CDATA #REQUIRED>",
        "<!ATTLIST entry value CDATA #REQUIRED>",
        "]>",
        "<registry>",
    ]
    entry(1, "SaveLocation", ".")
    entry(1, "Version", WORKSPACE_VERSION)
    folder(1, "Layers")
    folder(2, "Layer[000]")
    layer(f"./{image_file}", "MainRole", alpha=255, sticky=0)
    folder(3, "ProjectMetaData")
    folder(4, "Files")
    folder(5, "Grey")
    entry(6, "Dimensions", f"{width} {height} {slices}")
    end(5)
    end(4)
    folder(4, "IRIS")
    folder(5, "LabelState")
    entry(6, "DrawingLabel", protocol.structures[0].value if protocol.structures else 1)
    entry(6, "OverwriteLabel", 0)
    entry(6, "SegmentationAlpha", 0.5)
    end(5)
    folder(5, "LabelTable")
    entry(6, "NumberOfElements", len(protocol.structures))
    for i, s in enumerate(protocol.structures):
        folder(6, f"Element[{i}]")
        entry(7, "Alpha", 255)
        entry(7, "Color", " ".join(str(c) for c in s.color))
        entry(7, "Flags", "1 1")
        entry(7, "Index", s.value)
        entry(7, "Label", s.name)
        end(6)
    end(5)
    end(4)
    end(3)
    end(2)
    folder(2, "Layer[001]")
    layer(f"./{segmentation_file}", "SegmentationRole", alpha=0, sticky=1)
    end(2)
    end(1)
    lines.append("</registry>")
    return "\n".join(lines) + "\n"


def write_workspace(
    path: Path,
    image_path: Path,
    segmentation_path: Path,
    size: tuple[int, int],
    protocol: Protocol,
    slices: int = 1,
) -> None:
    """Write an ITK-SNAP workspace for an image and its segmentation, which must lie in the
    workspace file's folder (the paths inside are relative to it)."""
    path = Path(path)
    for layer in (image_path, segmentation_path):
        if Path(layer).parent.resolve() != path.parent.resolve():
            raise ValueError(f"{layer} is not in the workspace's folder {path.parent}")
    write_text_atomic(
        path,
        workspace_xml(Path(image_path).name, Path(segmentation_path).name, size, protocol, slices),
    )


def workspace_layers(path: Path) -> dict[str, Path]:
    """The layer files a workspace written by :func:`write_workspace` names, resolved against
    its folder: ``{"MainRole": path, "SegmentationRole": path}``."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    layers: dict[str, Path] = {}
    for layer in root.iterfind("./folder[@key='Layers']/folder"):
        values = {e.get("key"): e.get("value") for e in layer.iterfind("entry")}
        role, where = values.get("Role"), values.get("AbsolutePath")
        if role is not None and where is not None:
            layers[role] = Path(path).parent / where
    return layers


# --------------------------------------------------------------------------- reading

_MAGICS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)


def _what_is(head: bytes) -> str:
    """A few words on what a file that is not the expected format seems to be."""
    if not head:
        return "an empty file"
    if len(head) > 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    if head[:2] == b"\x1f\x8b":
        return "gzip data"
    sample = head[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "a text file"
    return "an unknown kind of file"


def _nifti_payload(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/2 stream must hold (header, extensions and voxels), from
    its header; None when the bytes are not a NIfTI header."""
    if len(header) < 348:
        return None
    for order in "<>":
        (size,) = struct.unpack(order + "i", header[:4])
        if size == 348 and header[344:348] == b"n+1\x00":
            dims = struct.unpack(order + "8h", header[40:56])
            (bitpix,) = struct.unpack(order + "h", header[72:74])
            (offset,) = struct.unpack(order + "f", header[108:112])
            offset = max(int(offset), 352)
        elif size == 540 and len(header) >= 540 and header[4:8] == b"n+2\x00":
            (bitpix,) = struct.unpack(order + "h", header[14:16])
            dims = struct.unpack(order + "8q", header[16:80])
            (offset,) = struct.unpack(order + "q", header[168:176])
            offset = max(int(offset), 544)
        else:
            continue
        if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1 : dims[0] + 1]):
            return None
        return offset + int(np.prod([max(int(d), 1) for d in dims[1 : dims[0] + 1]])) * bitpix // 8
    return None


# NIfTI data types of one value per voxel (uint8 .. float64, int8 .. uint64): a header of
# one of these and at most 3 dimensions is a plain scalar map whose size the header tells
_NIFTI_SCALAR_TYPES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280}


def _nifti_plain_size(header: bytes) -> tuple[int, ...] | None:
    """The voxel counts of a NIfTI-1/2 header (ITK's image size) when it declares a scalar
    map of 2 or 3 dimensions; None for anything else (read the header with ITK instead)."""
    for order in "<>":
        (size,) = struct.unpack(order + "i", header[:4])
        if size == 348 and header[344:348] == b"n+1\x00":
            dims = struct.unpack(order + "8h", header[40:56])
            (datatype,) = struct.unpack(order + "h", header[70:72])
        elif size == 540 and len(header) >= 540 and header[4:8] == b"n+2\x00":
            dims = struct.unpack(order + "8q", header[16:80])
            (datatype,) = struct.unpack(order + "h", header[12:14])
        else:
            continue
        if dims[0] not in (2, 3) or datatype not in _NIFTI_SCALAR_TYPES:
            return None
        found = tuple(int(d) for d in dims[1 : dims[0] + 1])
        return found if all(d >= 1 for d in found) else None
    return None


def _check_nifti(path: Path, head: bytes) -> tuple[int, ...] | None:
    """Refuse a file that is not NIfTI, or whose data is cut short (ITK reads such a file
    without complaint and makes up the missing voxels). Returns the map's size when the
    header declares a plain scalar map (:func:`_nifti_plain_size`), else None."""
    gz = head[:2] == b"\x1f\x8b"
    if gz:
        try:
            header = zlib.decompressobj(47).decompress(head, 1024)
        except zlib.error:
            raise BadLabel("not a readable NIfTI file (corrupt gzip data)") from None
    else:
        header = head
    payload = _nifti_payload(header)
    if payload is None:
        if gz and len(header) < 348:
            raise BadLabel("NIfTI file cut short (the header is incomplete)")
        raise BadLabel(f"not a NIfTI file: it looks like {_what_is(header if gz else head)}")
    if gz:
        with open(path, "rb") as handle:
            handle.seek(-4, 2)
            (isize,) = struct.unpack("<I", handle.read(4))
        if isize != payload % (1 << 32) and not _gzip_complete(path, payload):
            raise BadLabel("NIfTI file cut short or corrupt (its gzip data is incomplete)")
    elif path.stat().st_size < payload:
        raise BadLabel(f"NIfTI file cut short: {path.stat().st_size} bytes for {payload} expected")
    return _nifti_plain_size(header)


def _gzip_complete(path: Path, payload: int) -> bool:
    """Decompress a whole gzip file: True when its first member ends properly and holds at
    least ``payload`` bytes (the slow check, for files whose size trailer is unusual)."""
    inflater = zlib.decompressobj(47)
    total = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(inflater.decompress(chunk))
                if inflater.eof:
                    break
    except zlib.error:
        return False
    return inflater.eof and total >= payload


def _check_header(path: Path, suffix: str, head: bytes) -> tuple[int, ...] | None:
    """Refuse a file that is not of its suffix's type; a NIfTI file's size when its header
    declares a plain scalar map (ITK need not read the header again), else None."""
    name = _FORMATS[suffix][1]
    if not head:
        raise BadLabel(f"empty file (0 bytes), not a {name} file")
    if name == "NIfTI":
        return _check_nifti(path, head)
    elif name == "NRRD" and not head.startswith(b"NRRD000"):
        raise BadLabel(f"not a NRRD file: it looks like {_what_is(head)}")
    elif name == "MetaImage" and not re.search(rb"(?m)^\s*NDims\s*=", head[:_HEAD_BYTES]):
        raise BadLabel(f"not a MetaImage file: it looks like {_what_is(head)}")
    return None


@dataclass
class LabelFile:
    """A label map as read, turned to the orientation datatool writes (row 0 the top row,
    column 0 the left column), with its geometry in that orientation."""

    array: np.ndarray  # 2D (a stack: 3D, slice first), of the file's pixel type
    spacing: tuple[float, float]  # mm (x, y)
    origin: tuple[float, float]  # mm (x, y) of pixel (0, 0)
    reoriented: list[str] = field(default_factory=list)  # e.g. "flipped along x"
    notes: list[str] = field(default_factory=list)  # what reading noted (Slicer overlaps)


def read_label_map(path: Path, within: Path | None = None) -> np.ndarray:
    """The array of :func:`read_label_file` (see there)."""
    return read_label_file(path, within).array


class SliceCount(BadLabel):
    """A stack whose slice count is not one of those expected (``count``), known from the
    header alone; ``str()`` is a one-line reason the caller may reword."""

    def __init__(self, count: int, expected: tuple[int, ...]):
        self.count = count
        self.expected = expected
        super().__init__(
            f"label map has {count} slices; expected {' or '.join(map(str, expected))}"
        )


def read_label_file(
    path: Path,
    within: Path | None = None,
    shape: tuple[int, int] | None = None,
    protocol: Protocol | None = None,
    slices: tuple[int, ...] | None = None,
) -> LabelFile:
    """Read a label map (.nii.gz, .nii, .nrrd, .seg.nrrd, .mha, .mhd): a 2D array of its
    stored pixel type, row 0 the top row: W x H, or W x H x 1 as ITK-SNAP saves a 2D
    segmentation. A map whose direction flips or swaps the axes is turned back to the
    orientation datatool writes (and says so in ``reoriented``); a rotated one is refused.

    Raises :class:`BadLabel` with a one-line reason for a file of another type (or not a
    regular file), an unreadable or truncated file, a header whose detached data file lies
    outside ``within`` (default: the file's own folder), a multi-component (colour) image
    or a volume of more than one slice. Values are not checked here (see
    ``masks.validate_mask``). No message quotes the file's data.

    With ``shape`` (the image's rows, cols), a map whose header declares another size (its
    axes in either order) is refused from the header, before any pixel is decoded: a small
    compressed file declaring a huge map would otherwise be inflated whole.

    With ``protocol``, a 3D Slicer segmentation is read by segment name into the protocol's
    values (see ``itksnap.slicer``; its overlaps are in ``notes``).

    With ``slices`` (the slice counts a cine's map may have), a W x H x K stack is read
    instead: ``array`` is K x H x W, slice k the k-th, and a K not in ``slices`` is refused
    from the header (:class:`SliceCount`). A stack whose slices run backwards along the
    third axis is turned back (and says so)."""
    path = Path(path)
    suffix = label_suffix(path.name)
    if suffix is None:
        raise BadLabel(f"not a label map file (expected one of {', '.join(LABEL_SUFFIXES)})")
    io_name, kind = _FORMATS[suffix]
    odd = not_regular(path)
    if odd is not None:
        raise BadLabel(f"{odd}: not read (only regular files are label maps)")
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as exc:
        raise BadLabel(f"cannot read the file: {exc.strerror or exc}") from None
    plain_size = _check_header(path, suffix, head)
    if kind in ("NRRD", "MetaImage"):
        _check_data_files(path, kind, within)
    if suffix == ".seg.nrrd" and protocol is not None and slicer.has_segments(path):
        return _read_slicer(path, protocol, shape, slices)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io_name)
    reader.SetFileName(str(path))
    unreadable = f"not a readable {kind} file (corrupt, or its data file is missing)"
    if plain_size is not None:
        size = plain_size  # a plain NIfTI map: its header, parsed above, says its size
    else:
        try:
            reader.ReadImageInformation()  # the header alone: sizes are checked before decoding
        except RuntimeError:
            raise BadLabel(unreadable) from None
        components = reader.GetNumberOfComponents()
        if components != 1:
            raise BadLabel(
                f"{kind} file holds {components} values per pixel (a colour or vector "
                "image), not a label map"
            )
        size = reader.GetSize()
    extra = size[3:] if slices is not None else size[2:]
    if len(size) < 2 or any(n != 1 for n in extra):
        volume = " x ".join(str(n) for n in size)
        expected = "W x H x N, N a cine's frames" if slices else "W x H, or W x H x 1"
        raise BadLabel(f"label map is a {volume} volume; expected a 2D map ({expected})")
    count = int(size[2]) if len(size) > 2 else 1
    if slices is not None and count not in slices:
        raise SliceCount(count, tuple(slices))
    if shape is not None and sorted(size[:2]) != sorted((int(shape[1]), int(shape[0]))):
        raise BadLabel(
            f"size mismatch: label map is {size[0]}x{size[1]}, the image is "
            f"{int(shape[1])}x{int(shape[0])} (width x height)"
        )
    # a plain NIfTI map whose header ITK read before, byte for byte: decoded without ITK
    fast = nifti.fast_read(path) if plain_size is not None else None
    if fast is not None:
        values, geometry = fast
    else:
        try:
            image = reader.Execute()
        except RuntimeError:
            raise BadLabel(unreadable) from None
        values = sitk.GetArrayFromImage(image)
        geometry = nifti.Geometry.of(image, values.dtype)
        if plain_size is not None:
            nifti.remember(path, geometry)
    size = geometry.size
    if slices is None:
        return _reorient(values.reshape(size[1], size[0]), geometry)
    return _reorient(values.reshape(count, size[1], size[0]), geometry)


def _read_slicer(
    path: Path,
    protocol: Protocol,
    shape: tuple[int, int] | None,
    slices: tuple[int, ...] | None = None,
) -> LabelFile:
    """A 3D Slicer segmentation painted into the protocol's values, sizes checked from its
    header first, turned to datatool's orientation like any other map (with ``slices``, a
    cine's W x H x K segmentation: a stack, slice first)."""
    size = slicer.declared_size(path)
    if len(size) != 3 or (slices is None and size[2] != 1):
        volume = " x ".join(str(n) for n in size)
        raise BadLabel(f"label map is a {volume} volume; expected a 2D map (W x H x 1)")
    if slices is not None and int(size[2]) not in slices:
        raise SliceCount(int(size[2]), tuple(slices))
    if shape is not None and sorted(size[:2]) != sorted((int(shape[1]), int(shape[0]))):
        raise BadLabel(
            f"size mismatch: label map is {size[0]}x{size[1]}, the image is "
            f"{int(shape[1])}x{int(shape[0])} (width x height)"
        )
    painted = slicer.read_segments(path, protocol)
    matrix = painted.ijk_to_lps
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(spacing <= 0):
        raise BadLabel("its voxel spacing is zero or not a number: not a label map of an image")
    image = sitk.GetImageFromArray(np.ascontiguousarray(painted.array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in matrix[:3, 3]))
    try:
        image.SetDirection(tuple(float(d) for d in (matrix[:3, :3] / spacing).ravel()))
    except RuntimeError:
        raise BadLabel(
            "its direction is not a rotation (sheared axes): not a label map of this "
            "image's pixel grid"
        ) from None
    geometry = nifti.Geometry.of(image, painted.array.dtype)
    if slices is None:
        label = _reorient(np.ascontiguousarray(painted.array[:, :, 0].T), geometry)
    else:
        label = _reorient(np.ascontiguousarray(painted.array.transpose(2, 1, 0)), geometry)
    label.notes = painted.notes
    return label


def _reorient(array: np.ndarray, geometry: nifti.Geometry) -> LabelFile:
    """Turn a map (or a stack of maps, slice first) whose direction is a signed permutation
    of the axes into identity direction (the orientation datatool writes); refuse any other
    direction. A stack's third axis must be the slice axis (backwards: turned around)."""
    dim = geometry.dimension
    direction = np.array(geometry.direction, float).reshape(dim, dim)
    spacing = np.array(geometry.spacing, float)[:2]
    origin = np.array(geometry.origin, float)[:2]
    size = np.array(geometry.size)[:2]
    plane = direction[:2, :2]
    perm = np.rint(plane)
    if (
        not np.allclose(plane, perm, atol=1e-3)
        or sorted(np.abs(perm).sum(axis=0)) != [1, 1]
        or sorted(np.abs(perm).sum(axis=1)) != [1, 1]
        or (dim > 2 and not np.allclose(direction[:2, 2:], 0, atol=1e-3))
        or (array.ndim == 3 and not np.isclose(abs(direction[2, 2]), 1, atol=1e-3))
    ):
        raise BadLabel(
            "its direction is rotated (not along the image's axes): not a label map of this "
            "image's pixel grid; save it in the image's orientation"
        )
    notes: list[str] = []
    axis_of = [int(np.flatnonzero(perm[k])[0]) for k in (0, 1)]  # index axis along x, y
    signs = [perm[k, axis_of[k]] for k in (0, 1)]
    if axis_of != [0, 1]:
        array = np.swapaxes(array, -1, -2)
        notes.append("its axes were swapped")
    new_spacing = [float(spacing[axis_of[k]]) for k in (0, 1)]
    new_origin = [float(origin[k]) for k in (0, 1)]
    for k, name in ((0, "x"), (1, "y")):
        if signs[k] < 0:
            array = np.flip(array, axis=-1 - k)
            new_origin[k] -= new_spacing[k] * (int(size[axis_of[k]]) - 1)
            notes.append(f"flipped along {name}")
    if array.ndim == 3 and direction[2, 2] < 0:
        array = array[::-1]
        notes.append("its slices ran backwards")
    return LabelFile(
        np.ascontiguousarray(array),
        (new_spacing[0], new_spacing[1]),
        (new_origin[0], new_origin[1]),
        notes,
    )


def geometry_notes(
    label: LabelFile, spacing: tuple[float, float], rel_tol: float = 1e-3
) -> list[str]:
    """What reading a label map noted (a Slicer segmentation's overlaps), then what differs
    between its geometry and its image's (``spacing`` in mm, origin 0, identity direction,
    as exported), beyond a tolerance: one note each."""
    notes = list(label.notes)
    if label.reoriented:
        notes.append(
            f"its direction differs from the image's ({', '.join(label.reoriented)}): "
            "turned back to the image's orientation"
        )
    if any(not math.isclose(a, b, rel_tol=rel_tol) for a, b in zip(label.spacing, spacing)):
        notes.append(
            f"its spacing {label.spacing[0]:.4g} x {label.spacing[1]:.4g} mm differs from "
            f"the image's {spacing[0]:.4g} x {spacing[1]:.4g} mm: taken pixel for pixel"
        )
    if any(abs(o) > s / 2 for o, s in zip(label.origin, spacing)):
        notes.append(
            f"its origin ({label.origin[0]:.4g}, {label.origin[1]:.4g}) mm differs from the "
            "image's (0, 0) by more than half a pixel: taken pixel for pixel"
        )
    return notes


def _header_text(path: Path, kind: str) -> list[str]:
    """The header lines of a NRRD or MetaImage file (up to its data), decoded loosely."""
    with open(path, "rb") as handle:
        raw = handle.read(_MAX_HEADER)
    lines = raw.decode("latin-1").splitlines()
    if kind == "NRRD":
        end = next((k for k, line in enumerate(lines) if not line.strip()), len(lines))
        return lines[: end + 1] + (lines[end + 1 :] if _nrrd_list(lines[:end]) else [])
    return lines


def _nrrd_list(lines: list[str]) -> bool:
    return any(re.match(r"\s*data\s?file\s*:\s*LIST\b", line, re.IGNORECASE) for line in lines)


def _data_files(path: Path, kind: str) -> list[str] | None:
    """The detached data files a NRRD or MetaImage header names (empty: the data is in the
    file); None for a file-name pattern (``%03d.raw 1 10 1``), which is not supported."""
    lines = _header_text(path, kind)
    field_re = (
        r"\s*data\s?file\s*:=?\s*(.*)" if kind == "NRRD" else r"\s*ElementDataFile\s*=\s*(.*)"
    )
    for k, line in enumerate(lines):
        match = re.fullmatch(field_re, line, re.IGNORECASE)
        if match is None:
            continue
        value = match.group(1).strip()
        if kind == "MetaImage" and value.upper() == "LOCAL":
            return []
        if value.split()[:1] == ["LIST"]:
            tail = lines[k + 1 :]
            if kind == "NRRD":
                end = next((j for j, t in enumerate(tail) if not t.strip()), len(tail))
                tail = tail[end + 1 :]
            return [t.strip() for t in tail if t.strip()]
        if "%" in value:
            return None
        return [value]
    return []


def _check_data_files(path: Path, kind: str, within: Path | None) -> None:
    """Refuse a header whose detached data files lie outside ``within`` (default: the
    header's own folder): a label map is read from the folder being synced, nowhere else."""
    try:
        names = _data_files(path, kind)
    except OSError as exc:
        raise BadLabel(f"cannot read the file: {exc.strerror or exc}") from None
    if names is None:
        raise BadLabel(
            f"its {kind} header names its data files by a pattern: not supported (save the "
            "label map as one file)"
        )
    fence = Path(os.path.realpath(within if within is not None else path.parent))
    for name in names:
        target = Path(os.path.realpath(path.parent / name))
        if not target.is_relative_to(fence):
            raise BadLabel(
                f"its {kind} header points to a data file outside {fence}: refused (a label "
                "map's data must lie in the folder being synced)"
            )
