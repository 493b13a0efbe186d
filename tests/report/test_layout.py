"""The study report's page as a reader meets it, in real headless Chromium: at a phone's
width (390 px) nothing is wider than the viewport, the split hash is shortened with the whole
in a tooltip, wide tables scroll in their box with a cue; printed to A4 (PDF, its pages
rendered to PNG by poppler's pdftoppm) no heading sits in the bottom tenth of a page and no
page but the last is under a fifth full; the first line says the demo's data are synthetic;
the text fixes (p-values, the header, the agreement sample's left-out images, the overlays'
colour key)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from datatool.ingest.clinical import ingest_clinical
from datatool.learning.splits import create_split
from datatool.report.chromium import chromium_command, find_chromium, print_pdf
from datatool.report.gather import gather
from datatool.report.render import render_html, render_markdown
from datatool.report.sections import Figure, p_phrase
from datatool.report.study import study_report
from tests.ci import unavailable
from tests.report.page import parse


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        unavailable("Chromium is not installed (apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def pdftoppm() -> str:
    found = shutil.which("pdftoppm")
    if found is None:
        unavailable("pdftoppm is not installed (apt-get install poppler-utils)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def split_demo(rated_demo, demo_dir, tmp_path_factory):
    """The rated demo (agreement sample, STAPLE consensus) with its clinical table and a
    frozen split: every section but the model's, and a 64-character split hash."""
    from tests.qa_util import clone

    ws0, _, _ = rated_demo
    ws = clone(ws0, tmp_path_factory.mktemp("layout") / "ws")
    ingest_clinical(ws, demo_dir / "clinical.csv")
    create_split(ws, "main", ratios="1:1:1", folds=0)
    html = Path(study_report(ws).out)
    yield ws, html
    ws.close()


def _probe(html: Path, out: Path, script: str) -> Path:
    """A copy of the report that measures itself after load (``script`` sets attributes on
    its body) and posts its body's attributes to the page that frames it."""
    post = (
        "var a = {}; Array.prototype.forEach.call(document.body.attributes, function (x) {"
        "a[x.name] = x.value; }); if (window.parent !== window) window.parent.postMessage(a, '*');"
    )
    out.write_text(
        html.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', function () {setTimeout(function () {"
            + script
            + post
            + "}, 0);});</script></body>",
        )
    )
    return out


def _framed(page: Path, width: int) -> Path:
    """A page holding ``page`` in an iframe ``width`` CSS px wide: a real viewport of that
    width (headless Chromium's window is at least 500 px wide), whose measures it copies
    onto its own body."""
    frame = page.with_name(f"frame-{width}-{page.name}")
    frame.write_text(
        "<!DOCTYPE html><html><body style='margin:0'>"
        f"<iframe src='{page.name}' width='{width}' height='844' style='border:0'></iframe>"
        "<script>window.addEventListener('message', function (e) {"
        "Object.keys(e.data).forEach(function (k) { document.body.setAttribute(k, e.data[k]); });"
        "});</script></body></html>"
    )
    return frame


def _dump(chromium: str, page: Path, tmp: Path, width: int):
    done = subprocess.run(
        chromium_command(
            chromium,
            tmp / f"profile-{width}",
            "--window-size=1300,900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            _framed(page, width).as_uri(),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse(done.stdout)


WIDEST = """
var vw = document.documentElement.clientWidth, worst = '', right = 0;
document.querySelectorAll('main *').forEach(function (el) {
  if (el.closest('.scroll')) return;
  var r = el.getBoundingClientRect().right;
  if (r > right) {
    right = r;
    worst = el.tagName + '.' + el.className + ':' + el.textContent.slice(0, 40);
  }
});
var boxes = Array.prototype.map.call(document.querySelectorAll('.scroll'), function (b) {
  return (b.scrollWidth > b.clientWidth + 1) + ':' + b.getAttribute('data-overflow') + ':'
    + !b.previousElementSibling.hidden;
});
document.body.setAttribute('data-vw', String(vw));
document.body.setAttribute('data-inner', String(window.innerWidth));
document.body.setAttribute('data-scroll-width', String(document.documentElement.scrollWidth));
document.body.setAttribute('data-right', String(Math.ceil(right)));
document.body.setAttribute('data-worst', worst);
document.body.setAttribute('data-boxes', boxes.join('|'));
"""


def test_at_a_phones_width_nothing_is_wider_than_the_viewport(split_demo, chromium, tmp_path):
    ws, html = split_demo
    dom = _dump(chromium, _probe(html, tmp_path / "phone.html", WIDEST), tmp_path, 390)
    body = dom.body
    assert body["data-inner"] == "390"  # the window really is a phone's width
    assert int(body["data-scroll-width"]) <= 390, body
    assert int(body["data-right"]) <= int(body["data-vw"]), body["data-worst"]
    boxes = [b.split(":") for b in body["data-boxes"].split("|")]
    assert any(wide == "true" for wide, _, _ in boxes)  # some table is wider than a phone
    # every box that overflows says so (data-overflow) and shows its cue; no other does
    assert all(wide == flag == cue for wide, flag, cue in boxes), boxes
    # the 64-character split hash: 12 characters shown, the whole in the tooltip
    with ws.session() as s:
        from datatool.core.catalogue import Split

        full = s.scalars(__import__("sqlalchemy").select(Split.content_hash)).one()
    assert len(full) == 64
    page = html.read_text()
    assert f'<code class="hash" title="{full}">{full[:12]}</code>' in page
    assert f">{full}</code> (the whole" not in page


def test_at_a_desktops_width_no_table_is_cut_without_a_cue(split_demo, chromium, tmp_path):
    _, html = split_demo
    dom = _dump(chromium, _probe(html, tmp_path / "desk.html", WIDEST), tmp_path, 1280)
    assert int(dom.body["data-scroll-width"]) <= 1280
    boxes = [b.split(":") for b in dom.body["data-boxes"].split("|")]
    assert all(wide == flag == cue for wide, flag, cue in boxes), boxes


HEADING = (0, 255, 1)  # painted behind the headings in the measured copy only


def _pages(pdftoppm: str, pdf: Path, tmp: Path) -> list[np.ndarray]:
    subprocess.run(
        [pdftoppm, "-r", "40", "-png", str(pdf), str(tmp / "page")], check=True, timeout=120
    )
    pages = []
    for png in sorted(tmp.glob("page-*.png"), key=lambda p: int(p.stem.split("-")[-1])):
        with PILImage.open(png) as im:
            pages.append(np.asarray(im.convert("RGB")).astype(int))
    return pages


def test_the_pdf_keeps_headings_with_their_text_and_fills_its_pages(
    split_demo, chromium, pdftoppm, tmp_path
):
    """Printed to A4 by Chromium (the report's own print_pdf), with the headings' background
    painted a colour found nowhere else (layout unchanged): each page rendered to PNG, no
    heading starts in its bottom tenth, and every page but the last is at least a fifth
    full (its lowest ink row)."""
    _, html = split_demo
    marked = tmp_path / "marked.html"
    marked.write_text(
        html.read_text().replace(
            "</style>",
            "h1, h2, h3 { background: rgb(0, 255, 1) !important;"
            " -webkit-print-color-adjust: exact; print-color-adjust: exact; }</style>",
        )
    )
    pdf = tmp_path / "report.pdf"
    print_pdf(marked, pdf)
    pages = _pages(pdftoppm, pdf, tmp_path)
    assert len(pages) >= 3
    headings_seen = 0
    for k, page in enumerate(pages, start=1):
        height = page.shape[0]
        green = np.all(page == HEADING, axis=2).sum(axis=1) > 20
        tops = [r for r in np.nonzero(green)[0] if r == 0 or not green[r - 1]]
        headings_seen += len(tops)
        low = [r for r in tops if r > 0.9 * height]
        assert not low, f"page {k}: a heading starts at row {low[0]} of {height}"
        ink = np.nonzero((page < 200).any(axis=2).any(axis=1))[0]
        if k < len(pages):
            assert len(ink) and ink.max() >= height / 5, f"page {k} is under a fifth full"
    assert headings_seen >= 8


def test_the_first_line_says_the_demo_is_synthetic_and_the_text_fixes(split_demo, demo_dir):
    ws, html = split_demo
    page = html.read_text()
    main = page[page.index("<main>") :]
    first = main[: main.index("<h1>")]
    with ws.session() as s:
        from sqlalchemy import func, select

        from datatool.core.catalogue import Image

        images = s.scalar(select(func.count(Image.id)))
    assert f"Synthetic data: all {images} images come from datatool's demo generator" in first
    assert "workspace ws" not in page and "from the catalogue in <code>ws/</code>" in page
    assert "p = &lt;" not in page and "p = <" not in page
    assert p_phrase(0.0004) == "p < 0.001" and p_phrase(0.25) == "p = 0.250"
    md = render_markdown(gather(ws), "files")
    assert md.startswith(f"**Synthetic data: all {images} images")
    assert "p = <" not in md


def test_a_workspace_of_real_files_says_nothing_of_synthetic(ws, tmp_path):
    from datatool.ingest.pipeline import ingest
    from tests.handmade import write_us

    write_us(tmp_path / "d" / "a.dcm", np.full((20, 30), 90, np.uint8))
    ingest(ws, [tmp_path / "d"], workers=0)
    report = gather(ws)
    assert report.synthetic is None
    assert "Synthetic" not in render_html(report)


def test_the_overlays_have_a_colour_key(split_demo):
    ws, _ = split_demo
    report = gather(ws)
    assert 'id="colour-key"' not in render_html(report)  # no overlays, no key
    from io import BytesIO

    buffer = BytesIO()
    PILImage.new("RGB", (8, 8)).save(buffer, format="PNG")
    report.figures.append(Figure("overlays.png", "overlays", "examples", "test", buffer.getvalue()))
    page = render_html(report)
    key = page[page.index('id="colour-key"') :].split("</p>")[0]
    from datatool.core.protocol import load_protocol

    for st in load_protocol(ws.protocol_name).structures:
        assert f"background: {st.hex_color}" in key and st.name in key
    assert "solid" in key and "dashed" in key
