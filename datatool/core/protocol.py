"""Label protocols: the structures a study labels, loaded from ``schemas/*.yaml``.

A protocol is declarative: names, ITK-SNAP label values and colours, Label Studio names and
aliases. Everything else (ITK-SNAP label description files, Label Studio configs, model class
lists) is generated from it.

Structure names are matched exactly (ignoring case) in Label Studio results, which datatool
writes itself; names typed in other tools (3D Slicer segments) also ignore how words are
separated (:meth:`Structure.matches_loosely`). ``paint_order`` says which structure wins a
pixel two of them claim in a file that can hold both (the last listed).

A protocol may also state what a plausible label looks like, for ``datatool qa``: per structure
the most connected components it may have, whether it may have holes and whether it must lie
inside the view; for the view, relations the structures keep (checked on centroids) and which
side of the image shows the patient's lateral side, per leg. All of it is optional: what a
protocol leaves out is not checked.
"""

from __future__ import annotations

import importlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

DEFAULT_PROTOCOL = "anterior_sciatic"


def schemas_dir() -> Path:
    """The folder holding the protocol files: the ``datatool.schemas`` package (the
    repository's ``schemas/`` folder, installed as package data)."""
    schemas = importlib.import_module("datatool.schemas")
    return Path(schemas.__file__ or "").resolve().parent


@dataclass(frozen=True)
class StructureCode:
    """A structure's coded concept (DICOM SEG's segmented property type): coding scheme
    (``SCT``: SNOMED CT), code value and meaning. ``exact`` False: no code of the structure
    itself was found, this broader one stands in for it."""

    scheme: str
    value: str
    meaning: str
    exact: bool = True


@dataclass(frozen=True)
class Structure:
    name: str
    value: int
    color: tuple[int, int, int]
    aliases: tuple[str, ...] = ()
    max_components: int | None = None  # None: any number (not checked)
    holes: bool = True  # False: a hole in the structure is flagged
    in_view: bool = False  # True: touching the image edge or the blanked area is flagged
    code: StructureCode | None = None  # for DICOM SEG; None: coded as an anatomical structure

    @property
    def hex_color(self) -> str:
        """The colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)

    def matches(self, label: str) -> bool:
        wanted = label.strip().casefold()
        return wanted == self.name.casefold() or wanted in (a.casefold() for a in self.aliases)

    def matches_loosely(self, name: str) -> bool:
        """The name or an alias, ignoring case and how words are separated (runs of spaces,
        underscores and hyphens count as one space): ``Sciatic_Nerve`` and ``sciatic-nerve``
        are ``sciatic nerve``. For names typed in other tools (3D Slicer's segments)."""
        wanted = name_key(name)
        return wanted == name_key(self.name) or wanted in (name_key(a) for a in self.aliases)


def name_key(name: str) -> str:
    """A structure name as :meth:`Structure.matches_loosely` compares it."""
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


RELATIONS = ("superficial to", "deep to", "lateral to", "medial to")
IMAGE_SIDES = ("left", "right")


@dataclass(frozen=True)
class Relation:
    """``structure`` lies ``relation`` ``other`` (one of :data:`RELATIONS`), compared on the
    structures' centroids. Superficial is up in the image (the probe lies on the top row);
    lateral needs the leg and :attr:`Protocol.lateral_side`."""

    structure: str
    relation: str
    other: str

    def __str__(self) -> str:
        return f"{self.structure} {self.relation} {self.other}"


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    structures: tuple[Structure, ...] = field(default_factory=tuple)
    relations: tuple[Relation, ...] = ()
    # leg (DICOM Laterality, L or R) -> the image side ("left": column 0) showing the
    # patient's lateral side, in the display orientation the study uses
    lateral_side: tuple[tuple[str, str], ...] = ()
    # structure names, first painted first: where two structures' masks overlap in a file
    # that can hold both (a layered 3D Slicer segmentation), the later one wins the pixel
    paint_order: tuple[str, ...] = ()

    def lateral_image_side(self, leg: str | None) -> str | None:
        """ "left" or "right": where the lateral side of this leg appears; None when the leg
        or the protocol does not say."""
        return dict(self.lateral_side).get((leg or "").upper())

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(s.value for s in self.structures)

    def by_value(self, value: int) -> Structure:
        for s in self.structures:
            if s.value == value:
                return s
        raise KeyError(f"label value {value} is not in protocol {self.name!r}")

    def by_label(self, label: str) -> Structure:
        for s in self.structures:
            if s.matches(label):
                return s
        raise KeyError(f"label {label!r} is not in protocol {self.name!r}")

    def by_segment_name(self, name: str) -> Structure:
        """The structure a segment name of another tool means: its name or an alias, in any
        case and with words separated by spaces, underscores or hyphens."""
        for s in self.structures:
            if s.matches_loosely(name):
                return s
        raise KeyError(f"segment {name!r} is not in protocol {self.name!r}")

    @property
    def painting_order(self) -> tuple[Structure, ...]:
        """The structures in the order they are painted where masks overlap (the last wins):
        the protocol's ``paint_order``, else the order it lists them."""
        if not self.paint_order:
            return self.structures
        return tuple(next(s for s in self.structures if s.name == n) for n in self.paint_order)

    def itksnap_label_description(self) -> str:
        """The ITK-SNAP label description file (``IDX R G B A VIS MSH "LABEL"``)."""
        lines = [
            "################################################",
            f"# ITK-SnAP Label Description File ({self.name}, made by datatool)",
            "# Fields: IDX -R- -G- -B- -A-- VIS MSH LABEL",
            "################################################",
            '    0     0    0    0        0  0  0    "Clear Label"',
        ]
        for s in self.structures:
            r, g, b = s.color
            lines.append(f'{s.value:5d} {r:5d} {g:4d} {b:4d}        1  1  1    "{s.name}"')
        return "\n".join(lines) + "\n"

    def labelstudio_config(
        self,
        from_name: str = "label",
        to_name: str = "image",
        interactive: bool = False,
        clicks_name: str = "clicks",
    ) -> str:
        """The Label Studio labelling config: brush labels over the image, one per structure.
        ``interactive`` adds a smart KeyPointLabels tool (``clicks_name``) with the same
        labels and colours: the points a rater places go to the project's interactive ML
        backend (a positive point by default, a negative one with Alt held).

        Built as XML elements, so any structure name (``&``, quotes, ``<``) is escaped and the
        config always parses; Label Studio reads each label's name back unescaped."""
        view = ET.Element("View")
        ET.SubElement(view, "Image", name=to_name, value=f"${to_name}", zoom="true")
        brush = ET.SubElement(view, "BrushLabels", name=from_name, toName=to_name)
        for s in self.structures:
            ET.SubElement(brush, "Label", value=s.name, background=s.hex_color)
        if interactive:
            points = ET.SubElement(
                view, "KeyPointLabels", name=clicks_name, toName=to_name, smart="true"
            )
            for s in self.structures:
                ET.SubElement(points, "Label", value=s.name, background=s.hex_color)
        ET.indent(view, "  ")
        return ET.tostring(view, encoding="unicode") + "\n"


def load_protocol_file(path: Path) -> Protocol:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "structures" not in data:
        raise ValueError(f"{path}: not a label protocol (no 'structures' list)")
    structures = []
    seen_values: set[int] = set()
    for entry in data["structures"]:
        value = int(entry["value"])
        if not 1 <= value <= 255 or value in seen_values:
            raise ValueError(f"{path}: label value {value} is out of 1..255 or repeated")
        seen_values.add(value)
        rgb = [int(c) for c in entry["color"]]
        if len(rgb) != 3:
            raise ValueError(f"{path}: colour of {entry['name']!r} must be [R, G, B]")
        color = (rgb[0], rgb[1], rgb[2])
        max_components = entry.get("max_components")
        if max_components is not None and (
            isinstance(max_components, bool) or int(max_components) < 1
        ):
            raise ValueError(f"{path}: max_components of {entry['name']!r} must be 1 or more")
        structures.append(
            Structure(
                name=str(entry["name"]),
                value=value,
                color=color,
                aliases=tuple(str(a) for a in entry.get("aliases", ()) or ()),
                max_components=None if max_components is None else int(max_components),
                holes=_flag(path, entry, "holes", True),
                in_view=_flag(path, entry, "in_view", False),
                code=_code(path, entry),
            )
        )
    names = {s.name for s in structures}
    relations = []
    for entry in data.get("relations") or ():
        try:
            relation = Relation(
                str(entry["structure"]), str(entry["relation"]), str(entry["other"])
            )
        except (KeyError, TypeError):
            raise ValueError(
                f"{path}: a relation needs 'structure', 'relation' and 'other'"
            ) from None
        if relation.relation not in RELATIONS:
            raise ValueError(
                f"{path}: relation {relation.relation!r} is not one of {', '.join(RELATIONS)}"
            )
        unknown = {relation.structure, relation.other} - names
        if unknown:
            raise ValueError(f"{path}: relation {relation} names unknown structure(s) {unknown}")
        relations.append(relation)
    lateral = data.get("lateral_side") or {}
    if not isinstance(lateral, dict) or any(
        str(k).upper() not in ("L", "R") or v not in IMAGE_SIDES for k, v in lateral.items()
    ):
        raise ValueError(f"{path}: lateral_side maps L and R to left or right")
    return Protocol(
        name=str(data.get("name", path.stem)),
        title=str(data.get("title", "")),
        structures=tuple(structures),
        relations=tuple(relations),
        lateral_side=tuple(sorted((str(k).upper(), str(v)) for k, v in lateral.items())),
        paint_order=_paint_order(path, data, structures),
    )


def _code(path: Path, entry: dict) -> StructureCode | None:
    """``code: {scheme: SCT, value: "71341001", meaning: Femur}`` (``exact: false`` for a
    broader code standing in for the structure's own)."""
    code = entry.get("code")
    if code is None:
        return None
    if not isinstance(code, dict) or not all(
        isinstance(code.get(k), str) and code[k].strip() for k in ("scheme", "value", "meaning")
    ):
        raise ValueError(
            f"{path}: code of {entry['name']!r} needs scheme, value and meaning (strings)"
        )
    exact = code.get("exact", True)
    if not isinstance(exact, bool):
        raise ValueError(f"{path}: code.exact of {entry['name']!r} must be true or false")
    return StructureCode(code["scheme"], code["value"], code["meaning"], exact)


def _paint_order(path: Path, data: dict, structures: list[Structure]) -> tuple[str, ...]:
    """The protocol's ``paint_order``: every structure once, by name (or absent)."""
    order = data.get("paint_order")
    if order is None:
        return ()
    names = [s.name for s in structures]
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(names):
        raise ValueError(f"{path}: paint_order must list every structure once: {names}")
    return tuple(str(n) for n in order)


def _flag(path: Path, entry: dict, key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: {key} of {entry['name']!r} must be true or false")
    return value


@lru_cache(maxsize=16)
def load_protocol(name_or_path: str = DEFAULT_PROTOCOL) -> Protocol:
    """Load a protocol by name (``schemas/NAME.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = schemas_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"label protocol {name_or_path!r} not found ({path})")
    return load_protocol_file(path)
