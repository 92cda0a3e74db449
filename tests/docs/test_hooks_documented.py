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


DISPATCH = ("vipcore_backend_start", "vipcore_backend_stop", "vipcore_group_join", "vipcore_group_update",
            "vipcore_group_leave", "vipcore_group_release", "vipcore_group_takeover")


def _sections() -> dict[str, str]:
    text = (DOCS / "hooks.md").read_text()
    return {re.match(r"`(vipcore_\w+)", s).group(1): s  # type: ignore[union-attr]
            for s in re.split(r"^### ", text, flags=re.M)[1:]}


def test_every_dispatch_hook_documents_the_checked_result_and_its_deadline() -> None:
    sections = _sections()
    for name in DISPATCH:
        result = sections[name].split("**Result:**", 1)[1]
        assert "finishing with\n`None` or `True`" in result or "finishing with `None` or `True`" in result, name
        assert re.search(r"agent\.(hook|stop)_timeout", result), f"{name}: deadline not documented"
        if name.startswith("vipcore_group_"):
            assert re.search(r"failed|retried", result), f"{name}: what happens on failure not documented"


def test_the_load_time_checks_and_the_base_class_are_documented() -> None:
    text = (DOCS / "hooks.md").read_text()
    for phrase in ("vipcore.Backend", "did you mean vipcore_group_join?", "its distribution",
                   "`vipcore.backend.hookspecs`", "is skipped whole"):
        assert phrase in text, phrase
    assert "vipcore/hookspecs.py" not in text  # the module moved
