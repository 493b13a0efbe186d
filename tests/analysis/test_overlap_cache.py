"""``agreement`` on a saved sample whose labels did not change reads no mask again: each
image's overlap and surface distances are kept by the SHA-256 of what they are computed from
(``analysis/overlap_cache.py``), and the report is the same to the last digit."""

from __future__ import annotations

import json
import math

import pytest

from datatool.analysis import overlap_cache
from datatool.analysis.agreement import run_agreement
from datatool.analysis.metrics import Surface
from tests.labels_util import ingest_demo_with_labels


@pytest.fixture()
def labelled(ws, demo_dir):
    ingest_demo_with_labels(ws, demo_dir)
    return ws


def test_a_rerun_on_the_saved_sample_reads_no_mask(labelled, counted, tmp_path):
    ws = labelled
    first = run_agreement(ws, sample=8, seed=3, out_dir=tmp_path / "a", plots=False)
    assert len(counted) == 16  # both raters' maps of the 8 images, once each
    counted.clear()
    again = run_agreement(ws, sample=8, seed=3, out_dir=tmp_path / "b", plots=False)
    assert counted == [] and again.sample.reused
    assert again.structures == first.structures and again.overall_icc == first.overall_icc
    # another tolerance is another measure: every image measured again
    other = run_agreement(ws, sample=8, seed=3, plots=False, tolerance=1.5)
    assert len(counted) == 16 and other.structures != first.structures
    text = (ws.meta_dir / "cache" / overlap_cache.CACHE_NAME).read_text()
    assert "MRN" not in text and "rater" not in text and len(json.loads(text)["entries"]) == 16


def test_without_surfaces_the_overlaps_alone_are_kept(labelled, counted):
    ws = labelled
    plain = run_agreement(ws, sample=6, seed=1, plots=False, surface=False)
    assert counted
    counted.clear()
    again = run_agreement(ws, sample=6, seed=1, plots=False, surface=False)
    assert counted == [] and again.structures == plain.structures
    # the surface distances were not measured: asking for them measures every image
    run_agreement(ws, sample=6, seed=1, plots=False)
    assert len(counted) == 12


def test_entries_round_trip_with_the_stated_empty_cases(tmp_path, monkeypatch):
    cache = overlap_cache.OverlapCache(tmp_path)
    nan = math.nan
    measures = [
        (120, Surface(1.5, 0.25, 0.875, 2.0)),
        (0, Surface(nan, nan, nan, 2.0, "one empty")),
        (7, Surface(nan, nan, nan, nan, "not asked")),
    ]
    key = overlap_cache.job_key("a" * 64, "b" * 64, [[1, None, True, False, None]], (0.1, 0.2), 2.0)
    assert key != overlap_cache.job_key("a" * 64, "b" * 64, [], (0.1, 0.2), 2.0)
    cache.put(key, measures)
    cache.save()
    back = overlap_cache.OverlapCache(tmp_path).get(key)
    assert back is not None and [o for o, _ in back] == [120, 0, 7]
    assert back[0][1] == measures[0][1]
    assert math.isnan(back[1][1].hd95) and back[1][1].empty == "one empty"
    assert math.isnan(back[2][1].tolerance) and back[2][1].empty == "not asked"
    # the oldest are dropped past KEEP; a broken file is an empty cache
    monkeypatch.setattr(overlap_cache, "KEEP", 2)
    cache = overlap_cache.OverlapCache(tmp_path)  # a cache opened under the smaller KEEP
    for name in ("k1", "k2"):
        cache.put(name, measures[:1])
    cache.save()
    kept = overlap_cache.OverlapCache(tmp_path)
    assert kept.get(key) is None and kept.get("k2") is not None
    kept.path.write_text("{not json")
    assert overlap_cache.OverlapCache(tmp_path).get("k2") is None
