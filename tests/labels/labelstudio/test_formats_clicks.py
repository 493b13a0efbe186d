"""An interactive project's labelling config (the smart KeyPointLabels tool beside the
brush), the rater's clicks skipped as labels, and the click provenance a redrawn region
carries in its ``meta`` (no server)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
from label_studio_sdk.label_interface import LabelInterface

from datatool.core.protocol import load_protocol
from datatool.labels.labelstudio.formats import (
    CLICKS_META,
    CLICKS_NAME,
    Clicked,
    clicks_meta,
    clicks_of,
    mask_to_results,
    results_to_mask,
)
from datatool.labels.labelstudio.push import has_clicks_tool

P = load_protocol()
NERVE = next(s for s in P.structures if "nerve" in s.name)


def _click(name: str, x: float, y: float, positive: bool = True) -> dict:
    """A point as Label Studio's smart KeyPointLabels serialises it."""
    return {
        "id": f"kp{x:g}",
        "type": "keypointlabels",
        "from_name": CLICKS_NAME,
        "to_name": "image",
        "original_width": 12,
        "original_height": 10,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [name]},
    }


def test_the_interactive_config_adds_a_smart_keypoint_tool_with_the_brushs_labels():
    plain = P.labelstudio_config()
    config = P.labelstudio_config(interactive=True)
    assert config.startswith(plain.rsplit("</View>", 1)[0])  # the brush part is unchanged
    interface = LabelInterface(config)
    brush, points = interface.get_control("label"), interface.get_control(CLICKS_NAME)
    assert points.tag == "KeyPointLabels" and points.to_name == ["image"]
    assert points.attr["smart"] == "true"
    assert list(points.labels) == list(brush.labels) == [s.name for s in P.structures]
    tool = ET.fromstring(config).find("KeyPointLabels")
    assert tool is not None
    colours = {tag.attrib["value"]: tag.attrib["background"] for tag in tool.iter("Label")}
    assert colours == {s.name: s.hex_color for s in P.structures}
    assert has_clicks_tool(config, P) and not has_clicks_tool(plain, P)
    # a keypoint tool that is not smart, or lacks a structure, is not the clicks tool
    assert not has_clicks_tool(config.replace(' smart="true"', ""), P)
    assert not has_clicks_tool(config.replace(f'<Label value="{NERVE.name}"', "<Label x", 1), P)
    assert not has_clicks_tool("<View>", P) and not has_clicks_tool(None, P)


def test_clicks_are_not_labels_and_the_redrawn_region_says_where_it_came_from():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:8] = NERVE.value
    mask[7:9, 0:4] = 1
    brush = mask_to_results(mask, P)
    redrawn = next(r for r in brush if r["value"]["brushlabels"] == [NERVE.name])
    redrawn["meta"] = clicks_meta("datatool-run-3-split-0123456789ab", 2)
    results = [_click(NERVE.name, 40, 30), *brush, _click(NERVE.name, 10, 90, positive=False)]
    results = json.loads(json.dumps(results))  # as it comes from the server
    np.testing.assert_array_equal(results_to_mask(results, P, (10, 12)).mask, mask)
    assert clicks_of(results) == Clicked(
        "datatool-run-3-split-0123456789ab", 2, 1, ("datatool-run-3-split-0123456789ab",)
    )
    # only clicks: an empty label map (sync refuses it as empty unless allowed)
    assert not results_to_mask([_click(NERVE.name, 40, 30)], P, (10, 12)).mask.any()


def test_click_provenance_sums_regions_and_ignores_what_is_not_it():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:8] = NERVE.value
    mask[7:9, 0:4] = 1
    first, second = mask_to_results(mask, P)
    first["meta"] = clicks_meta("run-a", 1)
    second["meta"] = clicks_meta("run-b", 3)
    found = clicks_of([first, second])
    assert found == Clicked("run-a", 4, 2, ("run-a", "run-b"))
    assert clicks_of(mask_to_results(mask, P)) is None  # drawn by hand
    assert clicks_of(None) is None and clicks_of("x") is None and clicks_of([1, "a"]) is None
    for bad in (
        {CLICKS_META: {"model_version": "", "clicks": 1}},
        {CLICKS_META: {"model_version": "v", "clicks": 0}},
        {CLICKS_META: {"model_version": "v", "clicks": True}},
        {CLICKS_META: {"model_version": "v", "clicks": "2"}},
        {CLICKS_META: {"model_version": 7, "clicks": 2}},
        {CLICKS_META: "v"},
        {"text": ["a rater's note"]},
        "meta",
    ):
        first["meta"] = bad
        assert clicks_of([first]) is None, bad
    # a keypoint with the meta is still not a redrawn region
    point = _click(NERVE.name, 1, 1)
    point["meta"] = clicks_meta("v", 1)
    assert clicks_of([point]) is None
