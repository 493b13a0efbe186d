"""Label maps <-> Label Studio brush results (no server)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from datatool.core.protocol import Protocol, Structure, load_protocol
from datatool.labels.labelstudio.formats import mask_to_results, results_to_mask, rle_values
from datatool.labels.masks import BadLabel

P = load_protocol()


def _every_case_mask() -> np.ndarray:
    """Every structure, holes, single pixels, regions touching each other and the edges."""
    h, w = 37, 53  # odd sizes: no alignment luck
    mask = np.zeros((h, w), np.uint8)
    mask[0:10, 0:12] = 1  # femur in the top-left corner (touches two edges)
    mask[3:6, 4:8] = 0  # a hole in it
    mask[0:10, 12:20] = 2  # adductor touching the femur
    mask[h - 1, w - 1] = 3  # single nerve pixel in the bottom-right corner
    mask[20:30, 25:40] = 3
    mask[24:26, 30:33] = 0  # hole in the nerve
    mask[25, 31] = 4  # single semitendinosus pixel inside the nerve's hole
    mask[h - 5 : h, 0:w] = 6  # artery along the whole bottom edge
    mask[h - 1, w - 1] = 3
    mask[12, 0] = 4
    mask[12, w - 1] = 6  # single pixels on the left and right edges
    return mask


def test_round_trip_every_structure_exact():
    mask = _every_case_mask()
    results = mask_to_results(mask, P)
    assert [r["value"]["brushlabels"] for r in results] == [[s.name] for s in P.structures]
    assert all(
        r["type"] == "brushlabels"
        and r["from_name"] == "label"
        and r["to_name"] == "image"
        and r["original_width"] == 53
        and r["original_height"] == 37
        for r in results
    )
    json.dumps(results)  # plain JSON for the API
    back = results_to_mask(results, P, mask.shape)
    assert back.notes == []
    assert back.mask.dtype == np.uint8
    np.testing.assert_array_equal(back.mask, mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (64, 64), (120, 160)])
def test_round_trip_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.choice(np.array([0, *P.values], np.uint8), size=shape)
    back = results_to_mask(mask_to_results(mask, P), P, shape)
    np.testing.assert_array_equal(back.mask, mask)


def test_empty_map_gives_no_results_and_back():
    mask = np.zeros((5, 6), np.uint8)
    assert mask_to_results(mask, P) == []
    assert not results_to_mask([], P, (5, 6)).mask.any()


def test_full_image_single_label():
    mask = np.full((30, 40), 3, np.uint8)
    np.testing.assert_array_equal(results_to_mask(mask_to_results(mask, P), P, (30, 40)).mask, mask)


def test_aliases_and_case_map_to_structures():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 3
    results = mask_to_results(mask, P)
    results[0]["value"]["brushlabels"] = ["  NERVE "]
    np.testing.assert_array_equal(results_to_mask(results, P, (8, 8)).mask, mask)


def test_same_structure_regions_merge_without_notes():
    a = np.zeros((10, 10), np.uint8)
    a[0:5, 0:5] = 1
    b = np.zeros((10, 10), np.uint8)
    b[3:8, 3:8] = 1
    out = results_to_mask(mask_to_results(a, P) + mask_to_results(b, P), P, (10, 10))
    assert out.notes == []
    np.testing.assert_array_equal(out.mask, np.where((a > 0) | (b > 0), 1, 0))


def test_overlap_later_wins_and_is_reported():
    nerve = np.zeros((10, 10), np.uint8)
    nerve[2:6, 2:6] = 3  # 16 px
    artery = np.zeros((10, 10), np.uint8)
    artery[4:8, 4:8] = 6  # 16 px, 4 of them on the nerve
    results = mask_to_results(nerve, P) + mask_to_results(artery, P)
    out = results_to_mask(results, P, (10, 10))
    assert out.mask[4, 4] == 6 and out.mask[2, 2] == 3 and out.mask[7, 7] == 6
    assert out.notes == [
        "sciatic nerve and femoral artery overlap on 4 px: the later region (femoral artery) wins"
    ]
    reverse = results_to_mask(results[::-1], P, (10, 10))
    assert reverse.mask[4, 4] == 3 and "(sciatic nerve) wins" in reverse.notes[0]


def test_unknown_label_rejected():
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = 1
    results = mask_to_results(mask, P)
    results[0]["value"]["brushlabels"] = ["tibia"]
    with pytest.raises(BadLabel, match=r"unknown label 'tibia'"):
        results_to_mask(results, P, (6, 6))


def test_size_mismatch_rejected():
    mask = np.zeros((6, 8), np.uint8)
    mask[1, 1] = 1
    results = mask_to_results(mask, P)
    with pytest.raises(BadLabel, match=r"size mismatch.*8x6.*the image is 6x8"):
        results_to_mask(results, P, (8, 6))
    del results[0]["original_width"], results[0]["original_height"]  # the RLE still tells
    with pytest.raises(BadLabel, match=r"size mismatch"):
        results_to_mask(results, P, (6, 9))


def test_non_brush_and_malformed_results_rejected():
    rect = {
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["femur"]},
    }
    with pytest.raises(BadLabel, match=r"'rectanglelabels' result, not a brush mask"):
        results_to_mask([rect], P, (6, 6))
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = 1
    entry = mask_to_results(mask, P)[0]
    two = json.loads(json.dumps(entry))
    two["value"]["brushlabels"] = ["femur", "nerve"]
    with pytest.raises(BadLabel, match=r"exactly one label"):
        results_to_mask([two], P, (6, 6))
    none = json.loads(json.dumps(entry))
    none["value"]["brushlabels"] = []
    with pytest.raises(BadLabel, match=r"exactly one label"):
        results_to_mask([none], P, (6, 6))
    no_rle = json.loads(json.dumps(entry))
    del no_rle["value"]["rle"]
    with pytest.raises(BadLabel, match=r"without an RLE"):
        results_to_mask([no_rle], P, (6, 6))
    cut = json.loads(json.dumps(entry))
    cut["value"]["rle"] = cut["value"]["rle"][:3]
    with pytest.raises(BadLabel, match=r"does not decode|size mismatch"):
        results_to_mask([cut], P, (6, 6))


def test_unknown_value_in_mask_refused():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 5  # not in the protocol
    with pytest.raises(BadLabel, match=r"unknown label value\(s\) \[5\]"):
        mask_to_results(mask, P)


def test_partial_alpha_counts_as_drawn():
    """Label Studio's canvas can leave antialiased alpha below 255: any alpha > 0 is drawn."""
    from label_studio_sdk.converter.brush import encode_rle

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[1, 2] = (10, 20, 30, 1)
    rgba[3, 4] = (0, 0, 0, 200)
    entry = {
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "img",
        "original_width": 5,
        "original_height": 4,
        "value": {"format": "rle", "rle": list(encode_rle(rgba.ravel())), "brushlabels": ["Femur"]},
    }
    out = results_to_mask([entry], P, (4, 5)).mask
    assert out[1, 2] == 1 and out[3, 4] == 1 and out.sum() == 2


ODD = Protocol(
    name="odd",
    title="names that need escaping",
    structures=(
        Structure('A & "B"', 1, (255, 0, 0)),
        Structure("<nerve>", 2, (0, 128, 255), aliases=("it's",)),
    ),
)


def test_config_escapes_structure_names():
    expected = (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true" />\n'
        '  <BrushLabels name="label" toName="image">\n'
        '    <Label value="A &amp; &quot;B&quot;" background="#ff0000" />\n'
        '    <Label value="&lt;nerve&gt;" background="#0080ff" />\n'
        "  </BrushLabels>\n"
        "</View>\n"
    )
    assert ODD.labelstudio_config() == expected
    # Label Studio's own reading of the config gives the names back as they are
    interface = LabelInterface(ODD.labelstudio_config())
    brush = interface.get_control("label")
    assert brush.tag == "BrushLabels" and brush.to_name == ["image"]
    assert list(brush.labels) == ['A & "B"', "<nerve>"]
    assert interface.get_object("image").value == "$image"


def test_round_trip_with_names_that_need_escaping():
    mask = np.zeros((8, 10), np.uint8)
    mask[1:3, 1:4] = 1
    mask[5:7, 6:9] = 2
    results = mask_to_results(mask, ODD)
    assert [r["value"]["brushlabels"] for r in results] == [['A & "B"'], ["<nerve>"]]
    np.testing.assert_array_equal(results_to_mask(results, ODD, mask.shape).mask, mask)


def test_results_of_the_wrong_types_are_bad_labels_never_a_traceback():
    """A server's annotations (and reviews) are not checked as an export is: the decoding
    itself refuses wrong types with a BadLabel line (once AttributeError, ValueError,
    TypeError or OverflowError ended sync labelstudio in a traceback)."""
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = 1
    entry = mask_to_results(mask, P)[0]

    def changed(**fields):
        out = json.loads(json.dumps(entry))
        for key, value in fields.items():
            if key in out["value"] and key != "value":
                out["value"][key] = value
            else:
                out[key] = value
        return [out]

    cases = {
        "its value must be an object": changed(value=[1, 2]),
        "must be whole numbers": changed(original_width="abc"),
        "must be whole numbers ": changed(original_height=[6]),
        " must be whole numbers": changed(original_width=float("inf")),
        "brushlabels must be a list of names": changed(brushlabels=5),
        "brushlabels must be a list of names ": changed(brushlabels=[["femur"]]),
        "must be a list of regions": {"0": entry},
    }
    for message, results in cases.items():
        with pytest.raises(BadLabel, match=message.strip()):
            results_to_mask(results, P, (6, 6))  # type: ignore[arg-type]
    assert results_to_mask([entry], P, (6, 6)).mask[1, 1] == 1  # the entry itself is fine


# ---------------------------------------------------------------- word for word (issue 28)
# The refusals a rater or a server's answer meets, each message written out in full here:
# a mutant that names the wrong region, drops a field or garbles a reason fails one of them.


def _femur_entry() -> dict:
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = 1
    return mask_to_results(mask, P)[0]


def _with(entry: dict, **fields) -> dict:
    out = json.loads(json.dumps(entry))
    for key, value in fields.items():
        if key in ("format", "rle", "brushlabels"):
            out["value"][key] = value
        else:
            out[key] = value
    return out


KNOWN = "femur, adductor magnus, sciatic nerve, semitendinosus, femoral artery"


@pytest.mark.parametrize(
    ("results", "shape", "message"),
    [
        ([5], (6, 6), "region 1: a result entry must be an object, got int"),
        (
            "second-rectangle",
            (6, 6),
            "region 2 (femur, sciatic nerve): a 'rectanglelabels' result, not a brush mask "
            "(only brushlabels regions can be stored as label maps)",
        ),
        ("value-list", (6, 6), "region 1: its value must be an object, got list"),
        (
            "width-abc",
            (6, 6),
            "region 1 (femur): original_width and original_height must be whole numbers",
        ),
        (
            "as-drawn",
            (6, 8),
            "size mismatch: region 1 (femur) was drawn on a 6x6 image, the image is 8x6 "
            "(width x height)",
        ),
        (
            "png",
            (6, 6),
            "region 1 (femur): brush data in format 'png' without an RLE (only RLE brush masks "
            "are supported)",
        ),
        (
            "no-rle",
            (6, 6),
            "region 1 (femur): brush data in format 'rle' without an RLE (only RLE brush "
            "masks are supported)",
        ),
        (
            "undrawn-9",
            (6, 9),
            "size mismatch: region 1 (femur)'s brush RLE declares 144 values, the 9x6 image "
            "needs 216 (width x height x 4): not decoded",
        ),
        (
            "two-labels",
            (6, 6),
            "region 1 (femur, sciatic nerve): a brush region must carry exactly one label, "
            "it has 2",
        ),
        (
            "tibia",
            (6, 6),
            f"unknown label 'tibia' (protocol anterior_sciatic knows {KNOWN}, and their aliases)",
        ),
        ("labels-5", (6, 6), "region 1: its brushlabels must be a list of names"),
        ({"0": 1}, (6, 6), "the result must be a list of regions, got dict"),
    ],
)
def test_every_refusal_word_for_word(results, shape, message):
    entry = _femur_entry()
    cases = {
        "second-rectangle": [
            entry,
            {"type": "rectanglelabels", "value": {"brushlabels": ["femur", "sciatic nerve"]}},
        ],
        "value-list": [_with(entry, value=[1, 2])],
        "width-abc": [_with(entry, original_width="abc")],
        "as-drawn": [entry],
        "png": [_with(entry, format="png")],
        "no-rle": [_with(entry, rle=[])],
        "undrawn-9": [_with(entry, original_width=None, original_height=None)],
        "two-labels": [_with(entry, brushlabels=["femur", "sciatic nerve"])],
        "tibia": [_with(entry, brushlabels=["tibia"])],
        "labels-5": [_with(entry, brushlabels=5)],
    }
    if isinstance(results, str):
        results = cases[results]
    with pytest.raises(BadLabel) as caught:
        results_to_mask(results, P, shape)
    assert str(caught.value) == message


def test_a_region_decoded_alone_is_region_1():
    from datatool.labels.labelstudio.formats import decode_region

    with pytest.raises(BadLabel) as caught:
        decode_region(_with(_femur_entry(), format="png"), (6, 6))
    assert str(caught.value).startswith("region 1 (femur): brush data in format 'png'")
    np.testing.assert_array_equal(
        decode_region(_femur_entry(), (6, 6)), np.eye(6, dtype=bool) & (np.arange(6) == 1)
    )


def test_an_rle_that_does_not_decode_is_named_with_its_error():
    """A header that declares the right size over a body cut short: label_studio_sdk's
    decoder fails (its error's name is given, never the data)."""
    entry = _femur_entry()
    cut = _with(entry, rle=entry["value"]["rle"][:4])
    with pytest.raises(BadLabel) as caught:
        results_to_mask([cut], P, (6, 6))
    assert re.fullmatch(
        r"region 1 \(femur\): brush RLE does not decode \(\w+Error\)", str(caught.value)
    )


def test_what_the_decoding_accepts():
    """No format means RLE; a size given on one side only is not checked (the RLE's own
    header still is); the region is where alpha is above 0, nowhere else."""
    entry = _femur_entry()
    no_format = json.loads(json.dumps(entry))
    del no_format["value"]["format"]
    one_side = _with(entry, original_height=None, original_width=99)
    for results in ([no_format], [one_side], [entry]):
        out = results_to_mask(results, P, (6, 6)).mask
        assert out[1, 1] == 1 and int(out.sum()) == 1


def test_the_rle_header_is_four_big_endian_bytes():
    """Label Studio's brush RLE begins with the count of values as a 32-bit big-endian
    number: 0x01020304 = 16909060; 6 x 6 x 4 = 144 = 0x90."""
    assert rle_values([1, 2, 3, 4, 9]) == 16909060
    assert rle_values([0, 0, 1, 0]) == 256
    assert rle_values([0, 0, 0, 144]) == 144
    assert rle_values(_femur_entry()["value"]["rle"]) == 144
    assert rle_values([255, 255, 255, 255]) == 2**32 - 1
    assert rle_values([0, 0, 0, 144, 999, "x"]) == 144  # the header alone is read
    for bad in ([0, 0, 0], [256, 0, 0, 0], [0, -1, 0, 0], ["a", 0, 0, 0], None, 7):
        assert rle_values(bad) == -1, bad


def test_one_region_per_structure_with_its_id_and_names():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 0], mask[2, 3] = 6, 2
    results = mask_to_results(mask, P, from_name="tag", to_name="img")
    assert [(r["id"], r["value"]["brushlabels"]) for r in results] == [
        ("datatool-2", ["adductor magnus"]),
        ("datatool-6", ["femoral artery"]),
    ]
    for r in results:
        assert (r["from_name"], r["to_name"], r["image_rotation"]) == ("tag", "img", 0)
        assert (r["original_width"], r["original_height"]) == (4, 3)
        assert r["value"]["format"] == "rle" and rle_values(r["value"]["rle"]) == 48
    with pytest.raises(BadLabel) as caught:
        mask_to_results(np.zeros((2, 2, 2), np.uint8), P)
    assert str(caught.value) == "label map is 3-D (2, 2, 2), expected a 2D map"
    with pytest.raises(BadLabel) as caught:
        mask_to_results(np.array([[0, 5], [7, 1]], np.uint8), P)
    assert str(caught.value) == (
        "unknown label value(s) [5, 7] (protocol anterior_sciatic knows [1, 2, 3, 4, 6])"
    )
