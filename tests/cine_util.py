"""Cine loops for the analysis tests: a real multi-frame DICOM written from a demo still (its
patient, leg and calibrated region), ingested for real beside the demo's stills, and both
raters' labels of its frames stored through the library's annotation API."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from datatool.core.catalogue import Image, Series, SourceFile
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from tests.qa_util import P, clean


def write_cine(template: Path, path: Path, frames: int, step_px: int = 2) -> Path:
    """An uncompressed 8-bit cine of ``frames`` frames made from the still ``template`` (its
    header: patient, series, leg, ultrasound region), each frame the still's pixels moved
    ``step_px`` further to the right."""
    ds = pydicom.dcmread(template)
    pixels = ds.pixel_array
    if pixels.ndim == 3:  # an RGB still: its grey levels
        pixels = pixels.mean(axis=2)
    grey = np.ascontiguousarray(pixels.astype(np.uint8))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = 99
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword in ("PlanarConfiguration", "LossyImageCompressionRatio"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(np.roll(grey, k * step_px, axis=1).tobytes() for k in range(frames))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def frames_of(ws) -> tuple[list[int], str]:
    """The image ids of the workspace's one cine, in frame order, and its leg."""
    with ws.session() as s:
        rows = s.execute(
            select(Image.id, Series.side)
            .join(Series, Series.id == Image.series_id)
            .join(SourceFile, SourceFile.id == Image.source_file_id)
            .where(SourceFile.n_frames > 1)
            .order_by(Image.frame_index)
        ).all()
    return [i for i, _ in rows], rows[0][1]


def stills_of(ws) -> list[tuple[int, str]]:
    with ws.session() as s:
        return [
            (i, side)
            for i, side in s.execute(
                select(Image.id, Series.side)
                .join(Series, Series.id == Image.series_id)
                .join(SourceFile, SourceFile.id == Image.source_file_id)
                .where(SourceFile.n_frames == 1)
                .order_by(Image.id)
            )
        ]


def ingest_demo_with_cine_labels(ws, demo_dir: Path, raters=("rater1", "rater2")) -> dict:
    """Ingest a demo dataset and store its raters' label maps: a still's 2-D map to its image,
    a cine's W x H x N volume slice by slice to its frames (slice k to frame k). Returns
    {cine's relative path: its frames' image ids in frame order}."""
    import SimpleITK as sitk

    from datatool.core.protocol import load_protocol
    from datatool.ingest import deid
    from datatool.labels.matching import read_sop_instance_uid

    ingest(ws, [demo_dir / "dicom"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    loops: dict[str, list[int]] = {}
    for name in raters:
        add_rater(ws, name)
        with ws.session() as s:
            rater = get_rater(s, name)
            for f in sorted((demo_dir / "labels" / name).rglob("*.nii.gz")):
                rel = str(f.relative_to(demo_dir / "labels" / name))
                dcm = demo_dir / "dicom" / rel.replace(".nii.gz", ".dcm")
                keyed = deid.uid_for(ws.key, read_sop_instance_uid(dcm).strip())
                file_id = s.scalar(select(SourceFile.id).where(SourceFile.sop_uid == keyed))
                images = list(
                    s.scalars(
                        select(Image)
                        .where(Image.source_file_id == file_id)
                        .order_by(Image.frame_index)
                    )
                )
                maps = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8)
                maps = maps[None] if maps.ndim == 2 else maps
                assert len(maps) == len(images), rel
                for image, m in zip(images, maps):
                    store_annotation(s, ws.store, image, rater, m, "itksnap", rel, protocol)
                if len(images) > 1:
                    loops[rel] = [i.id for i in images]
    return loops


Drawer = Callable[[str, str, int], np.ndarray]  # (rater, leg, frame) -> label map


def smooth(rater: str, side: str, frame: int) -> np.ndarray:
    """A loop whose structures glide 2 px a frame (rater B 2 px right of rater A)."""
    return clean(side, 0, 2.0 * frame + (2.0 if rater == "B" else 0.0))


def cine_ws(
    ws,
    demo_dir: Path,
    tmp_path: Path,
    frames: int = 5,
    draw: Drawer = smooth,
    raters: Sequence[str] = ("A", "B"),
):
    """The demo's 12 stills with clean labels of A and B (qa_util.clean, B 2 px right), and
    one cine of ``frames`` frames of the first demo patient's first still, ingested for real,
    each frame labelled by each rater with ``draw``."""
    template = sorted((demo_dir / "dicom").rglob("*.dcm"))[0]
    cine_dir = tmp_path / "cine_in"
    write_cine(template, cine_dir / "L_cine.dcm", frames)
    ingest(ws, [demo_dir / "dicom", cine_dir], workers=0)
    for name in raters:
        add_rater(ws, name)
    ids, side = frames_of(ws)
    assert len(ids) == frames
    with ws.session() as s:
        for k, (image_id, leg) in enumerate(stills_of(ws)):
            for name in raters:
                shift = 2.0 if name == "B" else 0.0
                store_annotation(s, ws.store, s.get(Image, image_id), get_rater(s, name),
                                 clean(leg, k, shift), "itksnap", None, P)  # fmt: skip
        for f, image_id in enumerate(ids):
            for name in raters:
                store_annotation(s, ws.store, s.get(Image, image_id), get_rater(s, name),
                                 draw(name, side, f), "itksnap", None, P)  # fmt: skip
    return ws
