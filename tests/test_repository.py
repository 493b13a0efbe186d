"""The repository itself: nothing stray is committed, and the packaging lists every package."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1024 * 1024
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
# Folders of documented data that may hold larger files (none yet); say why when adding one.
DOCUMENTED_DATA: tuple[str, ...] = ()
# tempfile's names (tmp + 8 random characters), tmp/temp/scratch folders and their variants,
# editor and merge leftovers
TEMP_LOOKING = re.compile(
    r"^tmp[a-z0-9_]{8}$|^(tmp|temp|scratch)([-_.].*)?$|^\.?#|~$|\.(tmp|bak|orig|swp|rej)$",
    re.IGNORECASE,
)


def tracked_files() -> list[str]:
    try:
        res = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in res.stdout.decode().split("\0") if p]


def stray_names(files: list[str]) -> set[str]:
    """Temp-looking path parts of tracked files that no tracked text names. This file is not
    read for references: it names the removed scratch folder as an example, which must not
    make that folder look referred to should it come back."""
    texts = []
    for name in files:
        path = ROOT / name
        if name == THIS or not path.is_file() or path.stat().st_size >= MAX_BYTES:
            continue
        try:
            texts.append(path.read_text("utf-8"))
        except UnicodeDecodeError:
            continue
    corpus = "\n".join(texts)
    stray = set()
    for name in files:
        for part in Path(name).parts:
            if TEMP_LOOKING.search(part) and part not in corpus:
                stray.add(part)
    return stray


def test_no_temp_looking_files_that_nothing_refers_to():
    stray = stray_names(tracked_files())
    assert not stray, f"tracked under temp-looking names, referred to nowhere: {sorted(stray)}"


def test_the_removed_scratch_folder_would_be_caught():
    """The 59 MB folder of random .png bytes, were it committed again."""
    files = [*tracked_files(), "tmps72kzs3r/0a1b2c3d.png", "tmps72kzs3r/ff00ee11.png"]
    assert stray_names(files) == {"tmps72kzs3r"}


def test_no_large_files_outside_documented_data():
    large = [
        name
        for name in tracked_files()
        if (ROOT / name).is_file()
        and (ROOT / name).stat().st_size > MAX_BYTES
        and not name.startswith(DOCUMENTED_DATA or ("\0",))
    ]
    assert not large, f"files over 1 MB: {large}"


def test_the_detector_knows_scratch_from_real_names():
    for name in ("tmps72kzs3r", "tmp", "scratch-2", "temp_out", "notes.txt~", "a.py.orig"):
        assert TEMP_LOOKING.search(name), name
    for name in ("templates", "template.html", "temperature.py", "atmp"):
        assert not TEMP_LOOKING.search(name), name


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = config.get("package-dir", {})
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "datatool").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    for package, folder in mapped.items():
        found |= {
            package + "".join("." + p for p in init.parent.relative_to(ROOT / folder).parts)
            for init in (ROOT / folder).rglob("__init__.py")
            if "__pycache__" not in init.parts
        }
    assert found == listed, (
        f"missing from pyproject: {sorted(found - listed)}; "
        f"no such package: {sorted(listed - found)}"
    )
