"""The operator docs stay in step with the code: every metric and reason class is documented."""

from __future__ import annotations

import re
from pathlib import Path

from vipcore.ops.metrics import CORE_METRICS, REASON_CLASSES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def reference() -> str:
    text = (DOCS / "operating.md").read_text()
    return text[text.index("## Metrics reference"):]


def test_every_core_metric_is_in_the_reference_with_its_exposed_name() -> None:
    text = reference()
    documented = set(re.findall(r"^\| `(vipcore_\w+)`", text, flags=re.M))
    exposed = {f"{name}_total" if name == "vipcore_transitions" else name for name in CORE_METRICS}
    missing = sorted(exposed - documented)
    assert not missing, f"metrics missing from docs/operating.md: {missing}"


def test_every_reason_class_is_documented() -> None:
    text = reference()
    classes = [name for name, _ in REASON_CLASSES] + ["other"]
    missing = [c for c in classes if f"`{c}`" not in text]
    assert not missing, f"reason classes missing from docs/operating.md: {missing}"


def test_overview_links_resolve() -> None:
    for page in ("overview.md", "operating.md"):
        for target in re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", (DOCS / page).read_text()):
            assert (DOCS / target).exists(), f"{page} links to missing {target}"
