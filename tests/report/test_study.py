"""The study report (``datatool/report/``): opened in real headless Chromium, its
tables hold the catalogue's numbers, every image loads, nothing is fetched, no patient
identifier appears; Markdown and PDF; a workspace with no model gets a report of what it has."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from datatool.analysis.agreement import run_agreement
from datatool.analysis.qa import run_qa
from datatool.cli import app
from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.generator import INSTITUTION, PHI_TOKEN
from datatool.ingest.clinical import cohort, ingest_clinical
from datatool.learning.scoring import score_run
from datatool.learning.splits import show_split
from datatool.report.chromium import chromium_command, find_chromium
from datatool.report.gather import reference_study
from datatool.report.study import study_report
from tests.ci import unavailable
from tests.labels_util import ingest_demo_with_labels
from tests.qa_util import clone
from tests.report.page import Page, parse
from tests.report.page import value as _value

runner = CliRunner()


def _unavailable(reason: str):
    """Skip, or under CI (tests/ci.py's rule) fail: CI must open the report in a browser."""
    unavailable(f"{reason}: the report must be tested in Chromium")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        _unavailable("Chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


def _chromium(chromium: str, tmp: Path, *args: str, timeout: int = 120):
    return subprocess.run(
        chromium_command(chromium, tmp / f"profile-{len(list(tmp.glob('profile-*')))}", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network for (Chromium's own background requests, which carry
    no origin, are not the page's)."""
    data = json.loads(netlog.read_text())
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    return [
        e["params"]["url"]
        for e in data["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB"
        and "url" in e.get("params", {})
        and e["params"].get("initiator") != "not an origin"
    ]


def _open(chromium: str, page: Path, tmp: Path, *extra: str) -> tuple[Page, list[str]]:
    """The page as Chromium rendered it (its DOM after load) and what it fetched."""
    netlog = tmp / f"net-{page.stem}.json"
    done = _chromium(
        chromium,
        tmp,
        *extra,
        f"--log-net-log={netlog}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse(done.stdout), _page_requests(netlog)


# --------------------------------------------------------------------------- the workspace


@pytest.fixture(scope="module")
def study(trained, demo_dir, tmp_path_factory):
    """A copy of the trained workspace with the clinical table, an agreement sample, the
    run scored and the review queue filled, and its report as HTML and Markdown."""
    ws0, run_id = trained
    root = tmp_path_factory.mktemp("report") / "ws"
    ws = clone(ws0, root)
    ingest_clinical(ws, demo_dir / "clinical.csv")
    agreement = run_agreement(ws)
    score = score_run(ws, run_id, device="cpu")
    run_qa(ws, run=run_id)
    html = study_report(ws)
    md = study_report(ws, fmt="md")
    yield {
        "ws": ws,
        "run": run_id,
        "agreement": agreement,
        "score": score,
        "html": Path(html.out),
        "md": Path(md.out),
        "report": html,
        "md_report": md,
    }
    ws.close()


def test_the_report_in_chromium_holds_the_catalogues_numbers(study, chromium, tmp_path):
    page = study["html"]
    assert page == study["ws"].root / "reports" / "study.html"
    dom, fetched = _open(chromium, page, tmp_path)

    # every image loaded, nothing fetched, no URL but data: URIs and in-page anchors
    figures = study["report"].figures
    assert len(figures) >= 8  # 5 Bland-Altman, loss, IoU per structure, overlays
    assert dom.body["data-images-total"] == str(len(figures))
    assert dom.body["data-images-loaded"] == str(len(figures))
    assert fetched == []
    assert dom.links and all(link.startswith(("data:image/png;base64,", "#")) for link in dom.links)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page.read_text())

    # cohort: as `datatool cohort` has it
    c = cohort(study["ws"])
    rows = dom.rows("cohort-table", "data-key")
    assert _value(rows["patients"][1]) == c.patients == 3
    assert _value(rows["female"][1]) == c.female
    assert rows["female"][1][1] == f"{c.female} ({c.female_pct:.1f} %)"
    assert rows["age-range"][1][1] == f"{c.age.min:.0f}-{c.age.max:.0f}"
    assert rows["bmi-range"][1][1] == f"{c.bmi.min:.1f}-{c.bmi.max:.1f}"
    assert sum(_value(rows[f"asa-{k}"][1]) for k in c.asa) == c.patients
    assert _value(rows["images"][1]) == c.images
    age = study["report"].cohort.age
    assert age.n == c.age.n and age.mean == pytest.approx(c.age.mean)
    assert "Shapiro-Wilk" in rows["age"][2][1]
    shown = f"{age.mean:.1f} ± {age.sd:.1f}" if age.normal else f"{age.median:.1f} ("
    assert rows["age"][1][1].startswith(shown)

    # agreement: as run_agreement computed it
    ag = study["agreement"]
    rows = dom.rows("agreement-table", "data-structure")
    for st in ag.structures:
        cells = rows[st.structure]
        assert _value(cells[1]) == pytest.approx(st.icc.icc)
        assert cells[1][1] == f"{st.icc.icc:.3f}"
        assert cells[2][1] == f"[{st.icc.ci_low:.3f}, {st.icc.ci_high:.3f}]"
        assert cells[3][1] == f"{st.dice['mean']:.3f} ± {st.dice['sd']:.3f}"
        assert cells[6][1] == f"{st.iou['median']:.3f} ({st.iou['p25']:.3f}, {st.iou['p75']:.3f})"
    assert _value(rows["all structures"][1]) == pytest.approx(ag.overall_icc.icc)
    assert _value(rows["published"][1]) == reference_study()["agreement"]["icc"] == 0.842

    # split: as `datatool split show` has it
    split = show_split(study["ws"], "s")
    rows = dom.rows("split-table", "data-set")
    for name, counts in split.subsets.items():
        assert _value(rows[name][1]) == counts.patients
        assert _value(rows[name][2]) == counts.images
        assert _value(rows[name][5]) == counts.female
    assert split.hash in " ".join(dom.text)

    # results per structure: as score_run computed them, beside the published numbers
    sc = study["score"]
    rows = dom.rows("results-table", "data-structure")
    published = reference_study()["structures"]
    for st in sc.structures:
        if not st.images:
            continue
        cells = rows[st.structure]
        assert _value(cells[1]) == st.images
        assert _value(cells[2]) == pytest.approx(st.iou["mean"])
        assert cells[2][1] == f"{st.iou['mean']:.3f} ± {st.iou['sd']:.3f}"
        assert cells[3][1] == (f"{st.iou['median']:.3f} ({st.iou['p25']:.3f}, {st.iou['p75']:.3f})")
        assert _value(cells[5]) == pytest.approx(st.pooled_iou)
        assert _value(cells[6]) == pytest.approx(st.dice["mean"])
        assert _value(cells[8]) == pytest.approx(st.f1["mean"])
        study_row = rows[f"{st.structure} (study)"]
        assert _value(study_row[2]) == published[st.structure]["iou_mean"]
        assert _value(study_row[6]) == published[st.structure]["dice"]
    assert _value(rows["sciatic nerve (study)"][8]) == 0.718
    assert float(dom.ids["mean-iou-per-image"]["data-value"]) == pytest.approx(
        sc.mean_iou_per_image
    )
    if sc.anova_iou is not None:
        assert float(dom.ids["anova-line"]["data-f"]) == pytest.approx(sc.anova_iou.F)
        assert len(dom.tables["bonferroni-table"]) - 1 == len(sc.anova_iou.pairwise_bonferroni)
    text = " ".join(dom.text)
    assert f"{sc.inference_ms['mean']:.1f} ± {sc.inference_ms['sd']:.1f}" in text
    assert "218 ± 51" in text

    # the review queue and the provenance
    assert dom.tables["qa-table"]
    counts = dom.rows("counts-table", "data-key")
    assert _value(counts["images"][1]) == c.images
    assert "datatool score" in text and "datatool agreement" in text


def test_the_report_renders_sorts_and_fits_a_phone(study, chromium, tmp_path):
    """A screenshot at a desktop and at a phone's width; a click on a header sorts."""
    for width, height in ((1280, 2400), (390, 2400)):
        shot = tmp_path / f"shot-{width}.png"
        done = _chromium(
            chromium,
            tmp_path,
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            study["html"].as_uri(),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        with PILImage.open(shot) as im:
            assert im.size == (width, height)
            pixels = np.asarray(im.convert("L"))
        assert pixels.std() > 10  # text, tables and figures, not a blank page

    # sort the agreement table by ICC, in the browser: a click on the header
    page = tmp_path / "sorted.html"
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var th = document.querySelector('#agreement-table thead th:nth-child(2)');"
        "th.click();"
        "var order = Array.prototype.map.call("
        "document.querySelectorAll('#agreement-table tbody tr'),"
        "function (r) { return r.getAttribute('data-structure'); });"
        "document.body.setAttribute('data-sorted', order.join('|'));"
        "document.body.setAttribute('data-wide', String("
        "document.documentElement.scrollWidth > window.innerWidth));"
        "});</script></body>"
    )
    page.write_text(study["html"].read_text().replace("</body>", probe))
    dom, fetched = _open(chromium, page, tmp_path, "--window-size=390,844")
    assert dom.body["data-wide"] == "false"  # on a phone, wide tables scroll in their box
    order = dom.body["data-sorted"].split("|")
    table = study["agreement"]
    icc = {s.structure: s.icc.icc for s in table.structures}
    icc["all structures"] = table.overall_icc.icc
    icc["published"] = 0.842
    assert sorted(order) == sorted(icc)
    assert order == sorted(icc, key=icc.get)
    assert fetched == []


def _phi(demo_dir: Path) -> set[str]:
    """Every identifier the demo's DICOM files carry: names (and their parts), IDs, birth
    dates, institution, accession numbers, the original UIDs."""
    found = {PHI_TOKEN, INSTITUTION}
    for f in sorted((demo_dir / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for keyword in (
            "PatientName",
            "PatientID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "OperatorsName",
            "StationName",
            "InstitutionName",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            value = str(ds.get(keyword, "") or "")
            if value:
                found.add(value)
                found.update(part for part in value.split("^") if len(part) > 2)
        birth = str(ds.get("PatientBirthDate", "") or "")
        if birth:
            found.update({birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"})
    return found


def _without_images(text: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", text)


def test_no_patient_identifier_in_the_html_or_the_markdown(study, demo_dir):
    phi = _phi(demo_dir)
    assert any(p.startswith("MRN") for p in phi) and any("." in p for p in phi)
    html = _without_images(study["html"].read_text())
    md = study["md"].read_text()
    for text in (html, md):
        for value in phi:
            assert not re.search(rf"(?<![\w.]){re.escape(value)}(?![\w])", text), value
    with study["ws"].session() as s:
        from sqlalchemy import text as sql

        pseudonyms = [p for (p,) in s.execute(sql("select pseudonym from patients"))]
    assert pseudonyms
    for p in pseudonyms:
        assert p not in html and p not in md


def test_the_markdown_has_its_pngs_beside_it(study):
    md_path, report = study["md"], study["md_report"]
    assert md_path == study["ws"].root / "reports" / "study.md"
    text = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(report.figures) >= 8
    for link in links:
        png = md_path.parent / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sc = study["score"]
    nerve = next(s for s in sc.structures if s.structure == "sciatic nerve")
    assert f"{nerve.iou['mean']:.3f} ± {nerve.iou['sd']:.3f}" in text
    assert "| *sciatic nerve (the study)* |" in text
    assert "Boundaries on the whole image" in text and "## Each rater's quality" in text
    assert not [p for p in md_path.parent.rglob(".*") if p.is_file()]  # no temp files left


def test_pdf_through_chromium(study, chromium, tmp_path):
    out = tmp_path / "supplement.pdf"
    result = runner.invoke(
        app, ["report", "--format", "pdf", "--out", str(out), "-w", str(study["ws"].root)]
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 50_000
    # no temp files left (the ledger of datatool's own outputs, core.outputs, is no temp file)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in left if p.name != ".datatool-outputs.json"]


def test_pdf_without_chromium_is_one_line(study, tmp_path, monkeypatch):
    monkeypatch.setenv("DATATOOL_CHROMIUM", str(tmp_path / "no-such-browser"))
    out = tmp_path / "x.pdf"
    result = runner.invoke(
        app, ["report", "--format", "pdf", "--out", str(out), "-w", str(study["ws"].root)]
    )
    assert result.exit_code == 1
    assert "apt-get install chromium" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_page_that_fetches_is_caught(chromium, tmp_path):
    """The check itself: a page that asks the network for an image is seen doing so."""
    page = tmp_path / "fetching.html"
    page.write_text('<html><body><img src="http://example.test/a.png"></body></html>')
    _dom, fetched = _open(chromium, page, tmp_path)
    assert fetched == ["http://example.test/a.png"]


def test_the_cli_json_and_usage_errors(study):
    root = str(study["ws"].root)
    result = runner.invoke(app, ["report", "--json", "-w", root])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["out"] == str(study["ws"].root / "reports" / "study.html")
    assert data["score"]["run"] == study["run"]
    assert data["split"]["hash"] == show_split(study["ws"], "s").hash
    assert data["agreement"]["sample"] == study["agreement"].sample.id
    assert all("_png" not in f for f in data["figures"])
    assert {"age", "bmi"} <= set(data["cohort"])
    # the whole image's surface distances, as score_run computed them
    assert data["score"]["surface_unit"] == "mm" and data["score"]["nsd_tolerance"] == 2.0
    surface = {s["structure"]: s for s in data["score"]["surface"]}
    assert set(surface) == {st.structure for st in study["score"].whole_image}
    for st in study["score"].whole_image:
        got, want = surface[st.structure], st.surface
        assert (got["one_empty"], got["both_empty"]) == (want["one_empty"], want["both_empty"])
        assert got["hd95"]["n"] == want["hd95"]["n"]
        assert got["nsd"]["mean"] == pytest.approx(want["nsd"]["mean"])
    # each rater's quality, from the consensus the split's reference came from
    assert data["quality"]["method"] == "staple" and data["quality"]["rows"]
    assert data["cohort"]["age"]["convention"] in ("mean ± SD", "median (P25, P75)")
    table = study["ws"].root / "sections.csv"
    result = runner.invoke(app, ["report", "--csv", str(table), "-w", root])
    assert result.exit_code == 0, result.output
    lines = table.read_text().splitlines()
    assert lines[0] == "section,in the report,from"
    assert 'results,True,"run ' in "\n".join(lines)
    for args in (["--run", "99"], ["--agreement", "99"], ["--split", "nope"]):
        result = runner.invoke(app, ["report", *args, "-w", root])
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def test_a_workspace_without_a_model_gets_what_it_has(demo_dir, tmp_path, chromium):
    root = init_workspace(tmp_path / "ws").root
    ws = open_workspace(root)
    try:
        ingest_demo_with_labels(ws, demo_dir)
    finally:
        ws.close()
    out = tmp_path / "early.html"
    result = runner.invoke(app, ["report", "-w", str(root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["cohort"]["patients"] == 3
    assert data["run"] is None and data["score"] is None and data["split"] is None
    commands = {m["section"]: m["command"] for m in data["missing"]}
    assert commands["agreement"].startswith("datatool agreement")
    assert commands["split"].startswith("datatool split create")
    assert commands["training"].startswith("datatool train")
    assert commands["results"].startswith("datatool score")
    assert commands["cohort"] == "datatool ingest-clinical FILE.csv"
    dom, fetched = _open(chromium, out, tmp_path)
    assert dom.body["data-images-total"] == "0" and fetched == []
    text = " ".join("".join(dom.text).split())
    assert "Missing: no training run. Make it with datatool train --split NAME." in text
    assert dom.rows("cohort-table", "data-key")["patients"][1][1] == "3"


HOSTILE = ("<img src=x onerror=alert(1)>", "b`|*a_ [x](y)")


def test_user_text_stays_text_in_the_html_and_the_markdown(demo_dir, tmp_path, chromium):
    """Rater names are user text: in the page they are escaped (no element made of them), in
    the Markdown they break no table and make no markup."""
    from datatool.core.catalogue import Rater

    ws = open_workspace(init_workspace(tmp_path / "ws").root)
    try:
        ingest_demo_with_labels(ws, demo_dir)
        with ws.session() as s:
            for rater, name in zip(s.query(Rater).order_by(Rater.name), HOSTILE):
                rater.name = name
        run_agreement(ws)
        html = Path(study_report(ws).out)
        md = Path(study_report(ws, fmt="md").out)
    finally:
        ws.close()
    page = html.read_text()
    assert HOSTILE[0] not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    dom, fetched = _open(chromium, html, tmp_path)
    figures = len(re.findall(r"<img src=\"data:image/png", page))
    assert figures == 5 and dom.body["data-images-total"] == str(figures)  # no <img> of a name
    assert dom.body["data-images-loaded"] == str(figures) and fetched == []
    assert HOSTILE[0] in " ".join(dom.text)  # shown as the text it is
    text = md.read_text()
    # outside code spans (commands, where CommonMark shows everything literally)
    outside = re.sub(r"`[^`\n]*`", "", re.sub(r"`` .*? ``", "", text))
    assert HOSTILE[0] not in outside and HOSTILE[1] not in outside
    assert "``" in text  # a command holding a backtick gets a longer fence
    assert r"\<img src=x onerror=alert(1)\>" in text
    for line in text.splitlines():
        if line.startswith(("| rater1", "| \\<img")):
            assert line.count("|") - line.count("\\|") == 5  # 4 cells, no extra column
    drafts = [line for line in text.splitlines() if line.startswith("| b")]
    assert drafts and all(r"b\`\|\*a\_ \[x\](y)" in line for line in drafts)


# --------------------------------------------------------------------------- writing


def test_a_full_disk_names_the_file_that_could_not_be_written(rated_copy, small_disk):
    """The page does not fit on a 16 KiB file system: one line naming the file (it said
    "a file"), exit 1, nothing half-written left there."""
    ws, _, _ = rated_copy
    out = small_disk / "study.html"
    result = runner.invoke(app, ["report", "--out", str(out), "-w", str(ws.root)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "No space left" in errors[0]
    assert "a file:" not in result.output and "Traceback" not in result.output
    assert list(small_disk.iterdir()) == []


def test_a_failed_markdown_report_leaves_no_empty_files_folder(rated_copy, small_disk):
    ws, _, _ = rated_copy
    out = small_disk / "study.md"
    result = runner.invoke(app, ["report", "--format", "md", "--out", str(out), "-w", str(ws.root)])
    assert result.exit_code == 1, result.output
    assert str(small_disk / "study_files") in result.output and "No space left" in result.output
    assert list(small_disk.iterdir()) == []  # no study_files/, empty or half-filled


def test_a_markdown_report_without_figures_makes_no_files_folder(rated_copy, tmp_path):
    ws, _, _ = rated_copy
    for png in (ws.root / "reports").rglob("*.png"):
        png.unlink()
    out = tmp_path / "early.md"
    report = study_report(ws, fmt="md", out=out)
    assert report.figures == [] and report.written == [str(out)]
    assert not (tmp_path / "early_files").exists()
    # an existing folder of an earlier report is kept when a later write fails
    (tmp_path / "early_files").mkdir()
    (tmp_path / "early_files" / "old.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    study_report(ws, fmt="md", out=out)
    assert (tmp_path / "early_files" / "old.png").is_file()


def test_the_pages_pooled_and_per_image_iou_are_the_predictions_counts(study):
    """The page read back as HTML (no browser needed) against figures worked out here from
    the run's own predictions and the split's frozen reference labels (not from
    ``score_run``): each structure's pooled IoU (its pixels summed over the images), their
    mean over the structures, and the mean IoU over every (image, structure) row."""
    from statistics import fmean

    from tests.scoring_util import confusion, expected_scores

    dom = parse(study["html"].read_text())
    _, preds, refs = expected_scores(study["ws"], study["run"])
    names = ["femur", "adductor magnus", "sciatic nerve", "semitendinosus", "femoral artery"]
    pooled, every_row = {}, []
    for c, name in enumerate(names, start=1):
        counts = [t for t in (confusion(p, r, c) for p, r in zip(preds, refs)) if sum(t)]
        every_row += [tp / (tp + fp + fn) for tp, fp, fn in counts]
        if counts:
            tp, fp, fn = (sum(t[j] for t in counts) for j in range(3))
            pooled[name] = tp / (tp + fp + fn)
    assert pooled and every_row
    rows = dom.rows("results-table", "data-structure")
    for name, value in pooled.items():
        assert _value(rows[name][5]) == pytest.approx(value, rel=1e-9)
    shown = dom.ids["pooled-mean-iou"]
    assert float(shown["data-value"]) == pytest.approx(fmean(pooled.values()), rel=1e-9)
    per_image = dom.ids["mean-iou-per-image"]
    assert float(per_image["data-value"]) == pytest.approx(fmean(every_row), rel=1e-9)
    # the two figures are different numbers on this run, so neither can stand in for the other
    assert abs(fmean(pooled.values()) - fmean(every_row)) > 1e-6
