"""Load the demo data's two raters' label maps straight into a workspace (independent of the
sync commands, so tests of later steps do not depend on them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom


def ingest_demo_with_labels(ws, demo_dir: Path, raters=("rater1", "rater2")) -> None:
    ingest(ws, [demo_dir / "dicom"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    for name in raters:
        add_rater(ws, name)
        with ws.session() as s:
            rater = get_rater(s, name)
            for f in sorted((demo_dir / "labels" / name).rglob("*.nii.gz")):
                rel = f.relative_to(demo_dir / "labels" / name)
                image = image_for_dicom(
                    s, ws.key, demo_dir / "dicom" / str(rel).replace(".nii.gz", ".dcm")
                )
                mask = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8)
                store_annotation(s, ws.store, image, rater, mask, "itksnap", str(rel), protocol)
