"""Label protocols: the structures a study labels, loaded from ``schemas/*.yaml``.

A protocol is declarative: names, ITK-SNAP label values and colours, Label Studio names and
aliases. Everything else (ITK-SNAP label description files, Label Studio configs, model class
lists) is generated from it.
"""

from __future__ import annotations

import importlib
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
class Structure:
    name: str
    value: int
    color: tuple[int, int, int]
    aliases: tuple[str, ...] = ()

    @property
    def hex_color(self) -> str:
        """The colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.color)

    def matches(self, label: str) -> bool:
        wanted = label.strip().casefold()
        return wanted == self.name.casefold() or wanted in (a.casefold() for a in self.aliases)


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    structures: tuple[Structure, ...] = field(default_factory=tuple)

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

    def labelstudio_config(self, from_name: str = "label", to_name: str = "image") -> str:
        """The Label Studio labelling config: brush labels over the image, one per structure.

        Built as XML elements, so any structure name (``&``, quotes, ``<``) is escaped and the
        config always parses; Label Studio reads each label's name back unescaped."""
        view = ET.Element("View")
        ET.SubElement(view, "Image", name=to_name, value=f"${to_name}", zoom="true")
        brush = ET.SubElement(view, "BrushLabels", name=from_name, toName=to_name)
        for s in self.structures:
            ET.SubElement(brush, "Label", value=s.name, background=s.hex_color)
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
        structures.append(
            Structure(
                name=str(entry["name"]),
                value=value,
                color=color,
                aliases=tuple(str(a) for a in entry.get("aliases", ()) or ()),
            )
        )
    return Protocol(
        name=str(data.get("name", path.stem)),
        title=str(data.get("title", "")),
        structures=tuple(structures),
    )


@lru_cache(maxsize=16)
def load_protocol(name_or_path: str = DEFAULT_PROTOCOL) -> Protocol:
    """Load a protocol by name (``schemas/NAME.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = schemas_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"label protocol {name_or_path!r} not found ({path})")
    return load_protocol_file(path)
