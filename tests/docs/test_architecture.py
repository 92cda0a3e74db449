"""docs/architecture.md matches the tree: every module of vipcore is listed, and every listed module exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _modules() -> set[str]:
    found = set()
    for path in (ROOT / "vipcore").rglob("*.py"):
        rel = path.relative_to(ROOT / "vipcore")
        if rel.name == "__init__.py" or rel.parts[0] == "__pycache__":
            continue
        found.add(str(rel))
    return found


def _documented() -> set[str]:
    """Module paths in the table: ``pkg/mod.py`` cells, and bare ``mod.py`` names after one in the same cell."""
    names: set[str] = set()
    for line in DOC.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        package = None
        for token in re.findall(r"`([\w/]+\.py)`", cell):
            if "/" in token:
                package = token.rsplit("/", 1)[0]
                names.add(token)
            elif package is not None:
                names.add(f"{package}/{token}")
    return names


def test_every_module_is_in_the_architecture_page() -> None:
    missing = sorted(_modules() - _documented())
    assert not missing, f"docs/architecture.md does not list: {missing}"


def test_every_module_the_page_lists_exists() -> None:
    stale = sorted(_documented() - _modules() - {"sources/__init__.py"})
    assert not stale, f"docs/architecture.md lists modules that do not exist: {stale}"
