"""Label protocols: the QA keys (components, holes, view, relations, lateral side)."""

from __future__ import annotations

import pytest

from datatool.core.protocol import Relation, StructureCode, load_protocol, load_protocol_file


def test_the_study_protocol_states_what_a_plausible_label_looks_like():
    p = load_protocol("anterior_sciatic")
    by = {s.name: s for s in p.structures}
    for name in ("femur", "sciatic nerve", "femoral artery"):
        assert by[name].max_components == 1 and not by[name].holes and by[name].in_view
    for name in ("adductor magnus", "semitendinosus"):  # muscles may be larger
        assert by[name].max_components == 2 and by[name].holes and not by[name].in_view
    assert Relation("femoral artery", "superficial to", "sciatic nerve") in p.relations
    assert Relation("femur", "lateral to", "sciatic nerve") in p.relations
    # the demo generator's display: a left leg's lateral side on the image's left
    assert p.lateral_image_side("L") == "left" and p.lateral_image_side("r") == "right"
    assert p.lateral_image_side(None) is None


def _write(tmp_path, extra: str, structure_extra: str = ""):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\nstructures:\n"
        f"  - {{name: a, value: 1, color: [1, 2, 3]{structure_extra}}}\n"
        "  - {name: b, value: 2, color: [1, 2, 3]}\n" + extra
    )
    return path


def test_the_qa_keys_are_optional(tmp_path):
    p = load_protocol_file(_write(tmp_path, ""))
    assert p.relations == () and p.lateral_side == ()
    assert all(s.max_components is None and s.holes and not s.in_view for s in p.structures)
    assert p.lateral_image_side("L") is None


@pytest.mark.parametrize(
    "extra,structure_extra,message",
    [
        ("relations:\n  - {structure: a, relation: above, other: b}\n", "", "not one of"),
        ("relations:\n  - {structure: a, relation: deep to, other: c}\n", "", "unknown"),
        ("relations:\n  - {structure: a}\n", "", "needs"),
        ("lateral_side: {L: up}\n", "", "lateral_side"),
        ("", ", max_components: 0", "max_components"),
        ("", ", holes: sometimes", "true or false"),
    ],
)
def test_bad_qa_keys_are_refused(tmp_path, extra, structure_extra, message):
    with pytest.raises(ValueError, match=message):
        load_protocol_file(_write(tmp_path, extra, structure_extra))


# The study protocol's Label Studio config, written out by hand: one brush label per
# structure, named as the study names them, in ITK-SNAP's default colours of labels 1-4 and 6.
STUDY_LABELSTUDIO_CONFIG = """\
<View>
  <Image name="image" value="$image" zoom="true" />
  <BrushLabels name="label" toName="image">
    <Label value="femur" background="#ff0000" />
    <Label value="adductor magnus" background="#00ff00" />
    <Label value="sciatic nerve" background="#0000ff" />
    <Label value="semitendinosus" background="#ffff00" />
    <Label value="femoral artery" background="#ff00ff" />
  </BrushLabels>
</View>
"""


def test_the_study_protocol_s_labelstudio_config():
    from label_studio_sdk.label_interface import LabelInterface

    config = load_protocol("anterior_sciatic").labelstudio_config()
    assert config == STUDY_LABELSTUDIO_CONFIG
    # and as Label Studio's own SDK reads it
    interface = LabelInterface(config)
    brush = interface.get_control("label")
    assert brush.tag == "BrushLabels" and brush.to_name == ["image"]
    assert list(brush.labels) == [
        "femur", "adductor magnus", "sciatic nerve", "semitendinosus", "femoral artery",
    ]  # fmt: skip
    assert interface.get_object("image").tag == "Image"
    assert interface.get_object("image").value == "$image"


def test_a_structure_s_code_is_optional_and_read_whole(tmp_path):
    p = load_protocol_file(
        _write(
            tmp_path, "", ', code: {scheme: SCT, value: "84782009", meaning: Nerve, exact: false}'
        )
    )
    assert p.structures[0].code == StructureCode("SCT", "84782009", "Nerve", exact=False)
    assert p.structures[1].code is None
    exact = load_protocol_file(
        _write(tmp_path, "", ', code: {scheme: SCT, value: "71341001", meaning: Femur}')
    )
    assert exact.structures[0].code == StructureCode("SCT", "71341001", "Femur", True)


@pytest.mark.parametrize(
    "code,message",
    [
        ("{scheme: SCT, value: 71341001, meaning: Femur}", "strings"),  # a number, not a string
        ("{scheme: SCT, meaning: Femur}", "needs scheme, value and meaning"),
        ('{scheme: SCT, value: "1", meaning: " "}', "needs scheme, value and meaning"),
        ("SCT 71341001", "needs scheme"),
        ('{scheme: SCT, value: "1", meaning: x, exact: maybe}', "code.exact"),
    ],
)
def test_bad_codes_are_refused(tmp_path, code, message):
    with pytest.raises(ValueError, match=message):
        load_protocol_file(_write(tmp_path, "", f", code: {code}"))


def test_segment_names_match_ignoring_case_and_word_separators():
    p = load_protocol("anterior_sciatic")
    for name in ("Sciatic_Nerve", " sciatic-nerve ", "SCIATIC  NERVE", "Nerve", "sn"):
        assert p.by_segment_name(name).name == "sciatic nerve", name
    assert p.by_segment_name("Adductor_Magnus_Muscle").name == "adductor magnus"
    assert p.by_segment_name("semitendinosus muscle").name == "semitendinosus"
    for name in ("sciaticnerve", "Segment_1", "nerve 2", ""):
        with pytest.raises(KeyError):
            p.by_segment_name(name)
    # Label Studio names stay exact (datatool writes them itself)
    with pytest.raises(KeyError):
        p.by_label("Sciatic_Nerve")


def test_paint_order_lists_every_structure_once_or_defaults_to_the_listing(tmp_path):
    p = load_protocol("anterior_sciatic")
    assert [s.name for s in p.painting_order] == [
        "adductor magnus",
        "semitendinosus",
        "femur",
        "sciatic nerve",
        "femoral artery",
    ]
    assert [s.name for s in load_protocol_file(_write(tmp_path, "")).painting_order] == ["a", "b"]
    assert load_protocol_file(_write(tmp_path, "paint_order: [b, a]\n")).paint_order == ("b", "a")
    for bad in ("paint_order: [a]\n", "paint_order: [a, b, b]\n", "paint_order: [a, c]\n"):
        with pytest.raises(ValueError, match="paint_order must list every structure once"):
            load_protocol_file(_write(tmp_path, bad))
