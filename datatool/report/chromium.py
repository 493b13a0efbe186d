"""Headless Chromium: found on the PATH (or ``DATATOOL_CHROMIUM``), run offline and quiet,
printing the report's HTML page to PDF."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from datatool.core.atomic import atomic_path
from datatool.core.errors import DatatoolError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Offline and quiet: without the networking flags it keeps trying to reach hosts.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Chromium's program (``DATATOOL_CHROMIUM``, else the first of the usual names)."""
    given = os.environ.get("DATATOOL_CHROMIUM")
    if given:
        return shutil.which(given)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def chromium_command(chromium: str, profile: Path, *args: str) -> list[str]:
    return [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]


def print_pdf(html_file: Path, pdf_file: Path, timeout: float = 120) -> None:
    """The HTML page printed to PDF by headless Chromium (written atomically)."""
    chromium = find_chromium()
    if chromium is None:
        raise DatatoolError(
            "--format pdf needs Chromium: install it (apt-get install chromium), or write "
            "--format html and print it from a browser"
        )
    with (
        tempfile.TemporaryDirectory(prefix="datatool-chromium-") as tmp,
        atomic_path(pdf_file) as target,
    ):
        cmd = chromium_command(
            chromium,
            Path(tmp) / "profile",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            html_file.resolve().as_uri(),
        )
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DatatoolError(f"Chromium did not print the PDF within {timeout:.0f} s") from None
        if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise DatatoolError(f"Chromium could not print the PDF {pdf_file} ({last[:200]})")
