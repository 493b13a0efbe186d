"""Arrows point down only: the import rules of the architecture (README, "Architecture"),
checked on the source (every import statement, also those inside functions)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"datatool.model": ROOT / "model", "datatool.migrations": ROOT / "migrations"}

# Pure file-format code: bytes and arrays in and out, never the database.
FORMAT_MODULES = [
    "datatool.core.atomic",
    "datatool.core.files",
    "datatool.core.store",
    "datatool.core.protocol",
    "datatool.core.jsonable",
    "datatool.ingest.dicom",
    "datatool.ingest.deid",
    "datatool.labels.masks",
    "datatool.labels.itksnap.formats",
    "datatool.labels.dicomseg.formats",
    "datatool.labels.itksnap.slicer",
    "datatool.labels.labelstudio.formats",
    "datatool.analysis.metrics",
    "datatool.analysis.plots",
    "datatool.analysis.shape",
    "datatool.core.flags",
]
DATABASE = ("sqlalchemy", "alembic", "datatool.core.catalogue", "datatool.core.workspace")
SERVICE_PACKAGES = ("ingest", "labels", "analysis", "learning", "assist", "demo", "report")


def module_files() -> dict[str, Path]:
    files = {}
    for path in (ROOT / "datatool").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for package, folder in MAPPED.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            tail = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((package, *tail))] = path
    return files


FILES = module_files()


@cache
def imports_of(module: str) -> frozenset[str]:
    """Every module this one imports, anywhere in the file (relative imports resolved)."""
    path = FILES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(found)


def own(name: str) -> str | None:
    """The datatool module a name refers to (a module, or a name inside one)."""
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def reach(module: str) -> frozenset[str]:
    """Everything imported by the module and, transitively, by the datatool modules it imports."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for name in imports_of(current):
            seen.add(name)
            inner = own(name)
            if inner and inner not in seen and inner != current:
                seen.add(inner)
                todo.append(inner)
    return frozenset(seen)


def _hits(names, forbidden) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize("module", FORMAT_MODULES)
def test_format_modules_never_reach_the_database(module):
    assert module in FILES, f"{module} moved: update FORMAT_MODULES"
    assert not _hits(reach(module), DATABASE)


def test_core_imports_no_service_and_no_cli():
    forbidden = [f"datatool.{p}" for p in (*SERVICE_PACKAGES, "cli")]
    for module in FILES:
        if module.startswith("datatool.core"):
            assert not _hits(imports_of(module), forbidden), module


def test_the_cli_calls_services_not_the_database():
    for module in FILES:
        if module.startswith("datatool.cli"):
            assert not _hits(imports_of(module), ("sqlalchemy", "datatool.core.catalogue")), module


def test_only_the_cli_imports_the_cli():
    for module in FILES:
        if not module.startswith("datatool.cli") and module != "datatool.__main__":
            assert not _hits(imports_of(module), ("datatool.cli",)), module


# The data's way down: a package never imports one to its right (``assist`` serves raters
# from a model, so it sits above both the labels and the learning it joins).
ABOVE = {
    "datatool.ingest": (
        "datatool.labels",
        "datatool.analysis",
        "datatool.learning",
        "datatool.assist",
    ),
    "datatool.labels": ("datatool.analysis", "datatool.learning", "datatool.assist"),
    "datatool.analysis": ("datatool.learning", "datatool.assist"),
    "datatool.learning": ("datatool.assist",),
    "datatool.report": ("datatool.learning", "datatool.assist"),
}


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_arrows_point_down_between_service_packages(package):
    for module in FILES:
        if module == package or module.startswith(package + "."):
            assert not _hits(imports_of(module), ABOVE[package]), module


def test_nothing_but_the_cli_imports_assist():
    for module in FILES:
        if not module.startswith(("datatool.assist", "datatool.cli")):
            assert not _hits(imports_of(module), ("datatool.assist",)), module


def test_the_model_knows_only_torch():
    import sys

    for module in FILES:
        if module.startswith("datatool.model"):
            for name in imports_of(module):
                top = name.split(".")[0]
                if top == "datatool":
                    assert name.startswith("datatool.model"), (module, name)
                else:
                    assert top == "torch" or top in sys.stdlib_module_names, (module, name)


def test_the_rules_see_a_violation():
    """The checker itself: a format module that reached the catalogue would be caught."""
    assert _hits({"datatool.core.catalogue.Image"}, DATABASE)
    assert "sqlalchemy" in {n.split(".")[0] for n in reach("datatool.core.workspace")}
    # imports inside functions count: prelabel loads the run's model only when it drafts
    assert _hits(imports_of("datatool.assist.prelabel"), ("datatool.learning",))
