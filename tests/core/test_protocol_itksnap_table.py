"""The ITK-SNAP label table of the anterior sciatic protocol, written out here by hand (values,
colours and names as the study's protocol fixes them), against every place datatool writes
it: the label description file (``IDX R G B A VIS MSH "LABEL"``, A from 0 to 1, read the way
ITK-SNAP reads it: whitespace-separated numbers, then the quoted name), the ``.itksnap``
workspace's LabelTable, and the files ``export itksnap`` and the demo generator write."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET

import numpy as np

from datatool.core.protocol import load_protocol

# IDX, R, G, B, A (0..1), visible, in mesh, label: ITK-SNAP's defaults for labels 1-4 and 6
EXPECTED = [
    (0, 0, 0, 0, 0.0, 0, 0, "Clear Label"),
    (1, 255, 0, 0, 1.0, 1, 1, "femur"),
    (2, 0, 255, 0, 1.0, 1, 1, "adductor magnus"),
    (3, 0, 0, 255, 1.0, 1, 1, "sciatic nerve"),
    (4, 255, 255, 0, 1.0, 1, 1, "semitendinosus"),
    (6, 255, 0, 255, 1.0, 1, 1, "femoral artery"),
]


def parse_label_description(text: str) -> list[tuple]:
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = shlex.split(line)
        assert len(fields) == 8, line
        idx, r, g, b = (int(f) for f in fields[:4])
        alpha = float(fields[4])
        assert 0.0 <= alpha <= 1.0, line
        rows.append((idx, r, g, b, alpha, int(fields[5]), int(fields[6]), fields[7]))
    return rows


def test_the_label_description_file():
    text = load_protocol().itksnap_label_description()
    assert parse_label_description(text) == EXPECTED
    assert text.endswith("\n") and all(line.isascii() for line in text.splitlines())


def test_the_workspace_label_table():
    from datatool.labels.itksnap.formats import workspace_xml

    xml = workspace_xml("image.nii.gz", "seg.nii.gz", (50, 40), load_protocol())
    table = ET.fromstring(xml.split("?>", 1)[1].split("]>", 1)[1]).find(
        ".//folder[@key='LabelTable']"
    )
    entries = {e.get("key"): e.get("value") for e in table.findall("entry")}
    assert entries == {"NumberOfElements": "5"}
    got = []
    for element in table.findall("folder"):
        fields = {e.get("key"): e.get("value") for e in element.findall("entry")}
        assert fields["Alpha"] == "255" and fields["Flags"] == "1 1"
        r, g, b = (int(c) for c in fields["Color"].split())
        got.append((int(fields["Index"]), r, g, b, 1.0, 1, 1, fields["Label"]))
    assert got == EXPECTED[1:]


def test_the_files_export_and_the_demo_write(ws, tmp_path, demo_dir):
    from datatool.ingest.pipeline import ingest
    from datatool.labels.annotations import add_rater
    from datatool.labels.itksnap.export import export_itksnap
    from tests.handmade import write_us

    write_us(tmp_path / "d" / "a.dcm", np.full((40, 50), 80, np.uint8))
    ingest(ws, [tmp_path / "d"], workers=0)
    add_rater(ws, "AN1")
    export_itksnap(ws, "AN1", tmp_path / "out")
    exported = (tmp_path / "out" / "itksnap_labels.txt").read_text()
    assert parse_label_description(exported) == EXPECTED
    demo = (demo_dir / "labels" / "itksnap_labels.txt").read_text()
    assert parse_label_description(demo) == EXPECTED
