"""Every CSV datatool writes escapes text cells a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io

import pytest

from datatool.cli.render import Table
from datatool.core.csvcells import csv_writer, spreadsheet_safe


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2+3", "'-2+3"),
        ('@HYPERLINK("http://x")', '\'@HYPERLINK("http://x")'),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("femur", "femur"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_text_cells_that_start_a_formula_are_quoted(cell: str, written: str) -> None:
    assert spreadsheet_safe(cell) == written


def test_numbers_are_written_as_numbers() -> None:
    buf = io.StringIO()
    csv_writer(buf, lineterminator="\n").writerow([-0.5, -3, 2.0, None, "-x"])
    assert buf.getvalue() == "-0.5,-3,2.0,,'-x\n"


def test_a_command_table_as_csv_escapes_a_tampered_cell() -> None:
    table = Table("t", ["name", "value"], [["=cmd|' /C calc'!A0", -1.25], ["ok", 2]])
    rows = list(csv.reader(io.StringIO(table.csv_text())))
    assert rows[1] == ["'=cmd|' /C calc'!A0", "-1.25"]
    assert rows[2] == ["ok", "2"]
