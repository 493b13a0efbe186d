"""A figure drawn from the same numbers is kept as it is (``analysis.plots``): the PNG carries
the key of what it was drawn from; other numbers, another title, a damaged or foreign file are
drawn again."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from datatool.analysis import metrics
from datatool.analysis.plots import FIGURE_KEY, bland_altman_png, drawn_from, loss_curve_png

A = np.array([10.0, 12.0, 14.0, 9.0])
B = np.array([9.0, 12.5, 15.0, 9.5])
RATERS = ("rater1", "rater2")


def draw(path, a=A, b=B, title="Bland-Altman: femur"):
    return bland_altman_png(path, a, b, metrics.bland_altman(a, b), title, "mm²", RATERS)


def stamp(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def test_the_same_numbers_keep_the_file_and_others_redraw_it(tmp_path):
    path = tmp_path / "ba.png"
    draw(path)
    with Image.open(path) as im:
        assert im.format == "PNG" and len(im.info[FIGURE_KEY]) == 64
    first = stamp(path)
    draw(path)  # the same: not written again (an atomic write would give a new inode)
    assert stamp(path) == first
    draw(path, b=B + 0.5)
    assert stamp(path) != first
    second = stamp(path)
    draw(path, b=B + 0.5, title="Bland-Altman: sciatic nerve")
    assert stamp(path) != second


def test_a_damaged_or_foreign_file_is_drawn_again(tmp_path):
    path = tmp_path / "ba.png"
    draw(path)
    with Image.open(path) as im:
        key = im.info[FIGURE_KEY]
    path.write_bytes(path.read_bytes()[:60])  # cut short
    assert not drawn_from(path, key)
    draw(path)
    assert drawn_from(path, key)
    Image.new("L", (4, 4)).save(path)  # a PNG, but not one of ours
    assert not drawn_from(path, key)
    assert not drawn_from(tmp_path / "absent.png", key)


def test_the_loss_curve_is_kept_too(tmp_path):
    path = tmp_path / "loss.png"
    epochs = [(0, 1.2, 1.3), (1, 0.9, None), (2, 0.7, 0.8)]
    loss_curve_png(path, epochs, "run 1")
    first = stamp(path)
    loss_curve_png(path, epochs, "run 1")
    assert stamp(path) == first
    loss_curve_png(path, [*epochs, (3, 0.6, 0.7)], "run 1")
    assert stamp(path) != first


def test_a_kept_figure_does_not_import_matplotlib(tmp_path):
    path = tmp_path / "ba.png"
    draw(path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.analysis.test_figures_kept import draw\n"
        f"draw(Path({str(path)!r}))\n"
        "print('matplotlib' in sys.modules)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"
