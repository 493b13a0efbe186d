"""CSV for spreadsheets: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is read by Excel, LibreOffice and Google Sheets as a formula (CSV injection).
Every CSV datatool writes goes through :func:`csv_writer`, which prefixes such a cell with a
single quote, as OWASP recommends. Numbers are written as they are (a negative number is a
number, not a formula); only text cells are escaped."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` unchanged unless it is text that a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeWriter:
    """``csv.writer`` whose rows have their text cells made :func:`spreadsheet_safe`."""

    def __init__(self, stream: Any, **kwargs: Any) -> None:
        self._writer = csv.writer(stream, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([spreadsheet_safe(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(stream: Any, **kwargs: Any) -> SafeWriter:
    """A CSV writer for ``stream`` (arguments as ``csv.writer``) that escapes formula cells."""
    return SafeWriter(stream, **kwargs)
