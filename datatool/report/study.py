"""The study report's service: gather the workspace, render it, write it (HTML, Markdown with
its PNGs beside it, or PDF); every file atomically."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from datatool.core.atomic import write_bytes_atomic, write_text_atomic
from datatool.core.errors import UsageError
from datatool.core.workspace import Workspace
from datatool.report.chromium import print_pdf
from datatool.report.gather import gather
from datatool.report.render import render_html, render_markdown
from datatool.report.sections import ReportFormat, StudyReport


def _default_out(ws: Workspace, fmt: ReportFormat) -> Path:
    return ws.root / "reports" / f"study.{fmt.value}"


def study_report(
    ws: Workspace,
    run: int | None = None,
    agreement: int | None = None,
    split: str | None = None,
    out: Path | None = None,
    fmt: ReportFormat | str = ReportFormat.html,
) -> StudyReport:
    """The study report of the workspace, written to ``out`` (default
    ``reports/study.FORMAT`` in the workspace): one self-contained HTML file, Markdown with
    its PNGs in ``STEM_files/`` beside it, or a PDF printed from the HTML by Chromium."""
    try:
        fmt = ReportFormat(fmt)
    except ValueError:
        choices = ", ".join(f.value for f in ReportFormat)
        raise UsageError(f"--format must be one of {choices}") from None
    target = Path(out) if out is not None else _default_out(ws, fmt)
    if target.is_dir():
        raise UsageError(f"--out {target}: a folder; give a file name (e.g. study.{fmt.value})")
    report = gather(ws, run, agreement, split)
    report.format = fmt
    report.out = str(target)
    if fmt == ReportFormat.html:
        with _named(target):
            write_text_atomic(target, render_html(report))
        report.written = [str(target)]
    elif fmt == ReportFormat.md:
        report.written = _write_markdown(report, target)
    else:
        with _named(target):
            target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="datatool-report-") as tmp:
            page = Path(tmp) / f"{target.stem}.html"
            page.write_text(render_html(report), encoding="utf-8")
            print_pdf(page, target)
        report.written = [str(target)]
    return report


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError that names no file (a write to a full disk) names ``path``: the one-line
    error says which file could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def _write_markdown(report: StudyReport, target: Path) -> list[str]:
    """The Markdown and its PNGs in ``STEM_files/`` beside it (made only when there are
    figures). When a write fails, a ``STEM_files/`` this call made is removed again, so a
    failed report leaves no empty or half-filled folder behind."""
    files = target.parent / f"{target.stem}_files"
    made = bool(report.figures) and not files.exists()
    written = []
    try:
        for fig in report.figures:
            with _named(files / fig.key):
                write_bytes_atomic(files / fig.key, fig._png)
            written.append(str(files / fig.key))
        with _named(target):
            write_text_atomic(target, render_markdown(report, files.name))
    except BaseException:
        if made:
            shutil.rmtree(files, ignore_errors=True)
        raise
    return [str(target), *written]
