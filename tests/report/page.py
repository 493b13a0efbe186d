"""The study report's HTML read back without a browser: tables by id, their rows and cells
(with the raw values the page keeps in ``data-value``), ids, links and the page's text."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """Tables by id (rows of (row attributes, [(cell attributes, text)])), the body's
    attributes, every src/href value and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[tuple[dict, list[tuple[dict, str]]]]] = {}
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self.ids: dict[str, dict] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = a
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "body":
            self.body = a
        elif tag == "table":
            self._table = a.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append((a, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
            self.tables[self._table][-1][1].append((a, ""))
        elif tag in ("script", "style"):
            self._in_script = True

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            attrs, _ = self.tables[self._table][-1][1][-1]
            self.tables[self._table][-1][1][-1] = (attrs, " ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag in ("script", "style"):
            self._in_script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if not self._in_script:
            self.text.append(data)

    def rows(self, table: str, key: str) -> dict[str, list[tuple[dict, str]]]:
        """A table's body rows by a row attribute (data-structure, data-key, data-set)."""
        return {a[key]: cells for a, cells in self.tables[table] if key in a}

    def texts(self, table: str, key: str) -> dict[str, list[str]]:
        """:meth:`rows` with each cell's text alone."""
        return {k: [text for _, text in cells] for k, cells in self.rows(table, key).items()}


def parse(html: str) -> Page:
    dom = Page()
    dom.feed(html)
    return dom


def value(cell: tuple[dict, str]) -> float:
    return float(cell[0]["data-value"])
