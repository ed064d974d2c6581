"""The package's rooms and what each may import (docs/architecture.md, "Rooms"), checked on the source.

An import counts wherever it is written (module top or inside a function). The lab is a package of its
own outside the product (lab/tierwatch_lab, distribution tierwatch-lab): the product reaches it only
through the entry point ``tierwatch.commands`` for ``tierwatch demo`` (tests/unit/test_imports.py checks the
product's commands load none of it at run time), and the product's wheel carries none of it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "exporter" / "tierwatch"
LAB = REPO / "lab" / "tierwatch_lab"

# room -> the rooms it may import (besides itself)
FOUNDATION = {
    "durations",
    "dns_text",
    "metric_catalog",
    "action_catalog",
    "tier_catalog",
    "events",
    "__version__",
}
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "config": {"foundation"},
    "clients": {"foundation", "config"},
    "probes": {"foundation", "config", "clients"},
    "discovery": {"foundation", "config"},
    "exporter": {"foundation", "config", "clients", "probes", "discovery", "http"},
    "http": {"foundation"},
    "recovery": {"foundation", "config", "clients", "http"},
    "restore": {"foundation", "config"},
    "cli": {
        *("foundation", "config", "clients", "probes", "discovery"),
        *("exporter", "recovery", "restore", "http"),
    },
    "lab": {
        *("foundation", "config", "clients", "probes", "discovery"),
        *("exporter", "recovery", "restore", "http", "cli"),
    },
}
EXPORTER = {
    "monitor",
    "breaker",
    "metrics",
    "server",
    "status_page",
    "target_history",
    "backup_watch",
    "dns_watch",
    "gauge_families",
}


def room_of(module: str) -> str:
    """The room of a dotted module name inside the package (``tierwatch.x.y``)."""
    if module.split(".")[0] == "tierwatch_lab":
        return "lab"
    parts = module.split(".")[1:]
    head = parts[0] if parts else "version"
    if head in ("__init__", "__main__", "version") or not parts:
        return "foundation" if head != "__main__" else "cli"
    if head in FOUNDATION:
        return "foundation"
    if head in EXPORTER:
        return "exporter"
    if head in ("http_server", "web_config"):
        return "http"
    if head in ("config", "clients", "probes", "discovery", "recovery", "restore", "cli"):
        return head
    raise AssertionError(f"module {module} is in no room: add it to tests/unit/test_layout.py and the doc")


def module_name(path: Path) -> str:
    root = LAB.parent if path.is_relative_to(LAB) else PACKAGE.parent
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported tierwatch module, at module top level) for every import in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                names = [".".join([*base, node.module] if node.module else base)]
                if not node.module:  # from . import x
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        found += [(n, id(node) in top) for n in names if n.split(".")[0] in ("tierwatch", "tierwatch_lab")]
    return found


SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted(LAB.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_room_imports_only_what_it_may(path: Path) -> None:
    room = room_of(module_name(path))
    wrong = []
    for imported, _at_top in imports_of(path):
        other = room_of(imported)
        if other == room or other in ALLOWED[room]:
            continue
        wrong.append(f"{imported} ({other})")
    assert not wrong, f"{room} may import only {sorted(ALLOWED[room])}; found {wrong}"


DOC = PACKAGE.parents[1] / "docs" / "architecture.md"


def _rooms_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split("## Rooms", 1)[1].split("\n## ", 1)[0]


def _reachable(edges: dict[str, set[str]], room: str) -> set[str]:
    found: set[str] = set()
    todo = list(edges.get(room, ()))
    while todo:
        other = todo.pop()
        if other not in found:
            found.add(other)
            todo += edges.get(other, ())
    return found


def test_every_room_is_in_the_architecture_doc() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for room in ALLOWED:
        assert f"**{room}**" in doc, f"docs/architecture.md does not describe the {room} room"


def test_the_rooms_picture_draws_exactly_these_rules() -> None:
    """docs/architecture.md's picture: a room may import what it reaches along the arrows."""
    picture = re.search(r"```mermaid\n(.*?)```", _rooms_section(), re.DOTALL)
    assert picture, "the Rooms section has no mermaid picture"
    edges: dict[str, set[str]] = {}
    for source, target in re.findall(r"^\s*(\w+) --> (\w+)\s*$", picture.group(1), re.MULTILINE):
        edges.setdefault(source, set()).add(target)
    drawn = {room: _reachable(edges, room) for room in ALLOWED}
    assert drawn == ALLOWED, {
        r: (sorted(drawn[r]), sorted(ALLOWED[r])) for r in ALLOWED if drawn[r] != ALLOWED[r]
    }


def test_the_rooms_table_states_exactly_these_rules() -> None:
    rows = re.findall(r"^\| \*\*(\w+)\*\* \|.*\| ([^|]+) \|$", _rooms_section(), re.MULTILINE)
    stated: dict[str, set[str]] = {}
    for room, rule in rows:
        words = rule.split(";")[0].strip()
        if words == "nothing of tierwatch":
            stated[room] = set()
        elif words == "everything":
            stated[room] = set(ALLOWED) - {room}
        else:
            stated[room] = {w.strip() for w in words.split(",")}
    assert stated == ALLOWED


def test_the_wheel_carries_the_product_and_no_lab(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("tierwatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tierwatch/monitor.py" in names and "tierwatch/recovery/service.py" in names
    assert not [n for n in names if "lab" in n.split("/")[0] or "/lab/" in n or "tierwatch_lab" in n]


def test_the_product_names_no_module_by_string_and_never_the_lab() -> None:
    """An import the AST check cannot see (importlib by a string, ``__import__``) would hide a room's
    dependency; and the product reaches the lab only through the entry point."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in ("import_module(", "__import__(", "tierwatch_lab"):
            if needle in text:
                found.append(f"{path.relative_to(REPO)}: {needle}")
    assert not found
