"""What the report reads back from the results commands saved (``datatool/report/stored.py``):
each rater's quality from ``consensus.json``, the raters' surface distances from
``agreement.json``; and a figure path in a saved file is data: only a PNG inside the
workspace's reports folder is embedded (a tampered ``agreement.json`` once embedded
``secret.key``)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datatool.cli import app
from datatool.report.study import study_report


def _agreement_json(ws) -> Path:
    return next((ws.root / "reports").glob("agreement-*/agreement.json"))


def test_each_raters_quality_and_the_surface_distances_reach_the_report(rated_copy):
    ws, agreement, consensus = rated_copy
    report = study_report(ws)
    q = report.quality
    assert q is not None and q.method == "staple" and q.raters == ["rater1", "rater2"]
    assert q.source == "reports/consensus-staple/consensus.json"
    assert [(r.structure, r.rater) for r in q.rows] == [
        (c.structure, c.rater) for c in consensus.quality
    ]
    for row, c in zip(q.rows, consensus.quality):
        assert row.images == c.images
        assert row.sensitivity.mean == pytest.approx(c.sensitivity["mean"])
        assert row.specificity.median == pytest.approx(c.specificity["median"])
    a = report.agreement
    assert a is not None and a.surface_unit == "mm" and a.nsd_tolerance == 2.0
    for row, st in zip(a.rows, agreement.structures):
        assert row.hd95 is not None and row.hd95.median == pytest.approx(st.hd95["median"])
        assert row.nsd is not None and row.nsd.mean == pytest.approx(st.nsd["mean"])
    page = Path(report.out).read_text()
    first = consensus.quality[0]
    assert 'id="quality-table"' in page and 'id="agreement-surface-table"' in page
    assert f'data-value="{first.sensitivity["mean"]!r}"' in page
    assert f'data-value="{agreement.structures[0].hd95["median"]!r}"' in page
    md = Path(study_report(ws, fmt="md").out).read_text()
    assert "## Each rater's quality" in md and "| femur | rater1 |" in md
    assert "Boundary agreement (mm" in md


def test_no_quality_without_a_consensus_says_which_command_makes_it(rated_copy):
    ws, _, _ = rated_copy
    (ws.root / "reports" / "consensus-staple" / "consensus.json").unlink()
    report = study_report(ws)
    assert report.quality is None
    assert any(
        m.section == "quality" and m.command == "datatool consensus --method staple"
        for m in report.missing
    )
    (ws.root / "reports" / "consensus-staple" / "consensus.json").write_text("{not json")
    report = study_report(ws)  # a damaged file: one note, the report goes on
    assert report.quality is None and any(
        "consensus.json: cannot read it" in n for n in report.notes
    )


def test_a_tampered_figure_path_is_refused_in_one_line(rated_copy):
    """agreement.json's figures replaced by: the workspace's secret key (by absolute path,
    and by a ``reports/../`` path), a PNG-named link to it inside reports/, and a text file
    named .png inside reports/. None is embedded; each is one line; one real plot stays."""
    ws, _, _ = rated_copy
    path = _agreement_json(ws)
    data = json.loads(path.read_text())
    secret = ws.root / ".datatool" / "secret.key"
    assert secret.is_file()
    link = path.parent / "plot.png"
    link.symlink_to(secret)
    fake = path.parent / "fake.png"
    fake.write_text("not a picture")
    real = data["figures"][0]
    data["figures"] = [
        str(secret),
        str(ws.root / "reports" / ".." / ".datatool" / "secret.key"),
        str(link),
        str(fake),
        real,
    ]
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["report", "--json", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    refused = [n for n in out["notes"] if "refused" in n]
    assert len(refused) == 4 and all("\n" not in n for n in refused)
    assert sum("not inside the workspace's reports folder" in n for n in refused) == 3
    assert sum("not a PNG file" in n for n in refused) == 1
    assert [f["source"] for f in out["figures"]] == [
        str(Path(real).relative_to(Path(real).parents[2]))
    ]
    page = Path(out["out"]).read_text()
    key = base64.b64encode(secret.read_bytes()).decode()
    assert key[:40] not in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 1
    # the terminal shows the refusals too, one line each
    result = CliRunner().invoke(app, ["report", "-w", str(ws.root)])
    assert result.exit_code == 0
    assert sum("refused" in line for line in result.output.splitlines()) == 4


@pytest.mark.parametrize(
    "content", ['{"structures": [1]}', '{"structures": [], "sample": 3}', "[]", '{"figures": 7}']
)
def test_an_agreement_json_of_the_wrong_shape_is_one_line(rated_copy, content):
    ws, _, _ = rated_copy
    path = _agreement_json(ws)
    path.write_text(content)
    result = CliRunner().invoke(app, ["report", "-w", str(ws.root)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and "agreement.json" in errors[0]
        and "run 'datatool agreement" in errors[0]
    )


def test_an_agreement_without_surface_distances_shows_no_table_of_them(rated_copy):
    from datatool.analysis.agreement import run_agreement

    ws, _, _ = rated_copy
    run_agreement(ws, surface=False)  # the saved sample again, its agreement.json rewritten
    report = study_report(ws)
    assert report.agreement is not None and report.agreement.surface_unit is None
    page = Path(report.out).read_text()
    assert 'id="agreement-table"' in page and 'id="agreement-surface-table"' not in page
    assert "Boundary agreement" not in Path(study_report(ws, fmt="md").out).read_text()


def test_images_that_need_adjudication_are_named_in_the_quality_section(rated_copy):
    """rater2's label of one image made rater1's with the two muscles swapped: consensus
    leaves that image to adjudication, and the report says so (HTML and Markdown)."""
    from sqlalchemy import select

    from datatool.analysis.consensus import make_consensus
    from datatool.core.catalogue import Annotation, Rater
    from datatool.core.protocol import load_protocol
    from datatool.labels.annotations import get_rater, store_annotation

    ws, _, consensus = rated_copy
    assert consensus.adjudication == []  # the small demo has no swap of its own
    protocol = load_protocol(ws.protocol_name)
    am = protocol.by_label("adductor magnus").value
    st = protocol.by_label("semitendinosus").value
    with ws.session() as s:
        ann = s.scalars(
            select(Annotation)
            .join(Rater)
            .where(Rater.name == "rater1")
            .order_by(Annotation.image_id)
        ).first()
        mask = ws.store.get_array(ann.mask_hash)
        assert (mask == am).sum() > 100 and (mask == st).sum() > 100
        swapped = mask.copy()
        swapped[mask == am], swapped[mask == st] = st, am
        image_id = ann.image_id
        store_annotation(
            s, ws.store, ann.image, get_rater(s, "rater2"), swapped, "itksnap", None, protocol
        )
    again = make_consensus(ws, "staple")
    assert [a.image_id for a in again.adjudication] == [image_id]
    report = study_report(ws)
    assert report.quality is not None and report.quality.adjudication == [image_id]
    page = Path(report.out).read_text()
    note = page[page.index('id="adjudication"') :].split("</p>")[0]
    assert "1 image needs adjudication and has no consensus label" in note
    assert f"Images {image_id};" in note
    md = Path(study_report(ws, fmt="md").out).read_text()
    assert (
        "Images that need adjudication, with no consensus label (two raters drew one region "
        f"under different names): {image_id} (1;"
    ) in md


def test_the_compiled_templates_are_kept_only_in_a_private_folder(tmp_path, monkeypatch):
    """Jinja's bytecode cache lives in its per-user folder of the temporary directory (made
    mode 700); where that name is not this user's own folder (a link here) the report
    compiles its templates each time."""
    import os
    import tempfile

    from datatool.report.render import _bytecode_cache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    kept = _bytecode_cache()
    assert kept is not None and kept.directory == str(tmp_path / f"_jinja2-cache-{os.getuid()}")
    assert (os.stat(kept.directory).st_mode & 0o777) == 0o700
    os.chmod(kept.directory, 0o755)
    os.rename(kept.directory, tmp_path / "moved")
    (tmp_path / f"_jinja2-cache-{os.getuid()}").symlink_to(tmp_path / "moved")  # not a folder
    assert _bytecode_cache() is None
