"""Every hook is documented, with its result semantics."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from vipcore.backend import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hookspec_names() -> list[str]:
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("vipcore_")]


def test_there_are_hooks() -> None:
    assert len(hookspec_names()) >= 10


def test_every_hookspec_is_documented_with_result_semantics() -> None:
    text = (DOCS / "hooks.md").read_text()
    sections = re.split(r"^### ", text, flags=re.M)[1:]
    documented = {}
    for section in sections:
        heading = section.splitlines()[0]
        match = re.match(r"`(vipcore_\w+)\(([^)]*)\)`", heading)
        assert match, f"hook heading not in `name(args)` form: {heading}"
        documented[match.group(1)] = (match.group(2), section)
    missing = sorted(set(hookspec_names()) - set(documented))
    assert not missing, f"hooks not documented in docs/hooks.md: {missing}"
    stale = sorted(set(documented) - set(hookspec_names()))
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"
    for name, (args, section) in documented.items():
        spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert [a.strip() for a in args.split(",") if a.strip()] == spec_args, f"{name}: arguments differ"
        assert "**Result:**" in section, f"{name}: result semantics not documented"


def test_every_hookspec_has_a_docstring_saying_how_results_combine() -> None:
    for name in hookspec_names():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert re.search(r"first non-None|results are ignored|notification only|collected", doc, re.I), name
