"""The catalogue's counts (``datatool status``) on a catalogue of thousands of images."""

from __future__ import annotations

from sqlalchemy import insert, select

from datatool.core.catalogue import Image
from datatool.ingest import deid
from datatool.ingest.inventory import status
from datatool.ingest.pipeline import ingest

FULL = [{"x0": 0, "y0": 0, "x1": 10_000, "y1": 10_000}]  # covers any image: no banner room


def test_status_judges_each_region_setting_once(ws, us_file, monkeypatch):
    """Images blanked outside regions that leave no room for a banner are counted, judging
    each distinct (regions, size) once: 3,000 images of three settings, three judgements."""
    assert ingest(ws, [us_file("OBXXXX1A.dcm")], workers=0).ok
    with ws.session() as s:
        first = s.scalar(select(Image))
        own = first.regions
        base = {c: getattr(first, c) for c in ("series_id", "source_file_id", "store_hash",
                                               "rows", "cols")}  # fmt: skip
        first.pixel_handling = "blanked_outside_regions"
        rows = [
            dict(base, frame_index=k, pixel_handling="blanked_outside_regions",
                 regions=(FULL if k % 3 == 0 else own if k % 3 == 1 else None))
            for k in range(1, 3000)
        ]  # fmt: skip
        rows[0]["pixel_handling"] = "not_burned_in"  # frame 1: not blanked, not counted
        s.execute(insert(Image), rows)
    calls = []
    judge = deid.room_for_banner

    def counted(regions, n_rows, n_cols):
        calls.append(1)
        return judge(regions, n_rows, n_cols)

    monkeypatch.setattr(deid, "room_for_banner", counted)
    got = status(ws)
    assert got.images == 3000
    # frames 3, 6, ..., 2997 cover the whole image (999); the file's own regions and none at
    # all (frames 2, 5, ...: nothing is covered) leave room.
    assert got.blanked_without_room == 999
    assert len(calls) == 3
