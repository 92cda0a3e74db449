"""vipcore's YAML reader gives ``yaml.safe_load_all``'s values (it only builds them faster)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.core import yamldocs
from vipcore.core.errors import ConfigError


def _same(text: str) -> list[Any]:
    ours = yamldocs.load_all(text, source="t.yaml")
    theirs = list(yaml.safe_load_all(text))
    assert _canon(ours) == _canon(theirs), text
    return ours


def _canon(value: Any) -> Any:
    """Values with their types (True == 1 in Python) and NaN made comparable."""
    if isinstance(value, dict):
        return {_canon(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return (type(value).__name__, value)


@pytest.mark.parametrize("text", [
    "port: 80\nsame: 80\nquoted: '80'\ntagged: !!str 80\nagain: 80\n",
    "a: yes\nb: 'yes'\nc: on\nd: off\ne: no\nf: true\ng: True\n",
    "a: ~\nb: null\nc: 'null'\nd:\ne: ~\n",
    "a: .nan\nb: .inf\nc: -.inf\nd: 1e3\ne: 1.5\nf: '1.5'\ng: 1.5\n",
    "a: 0o17\nb: 017\nc: 0x1f\nd: 1_000\ne: -0\nf: +12\n",
    "t: 2026-11-30\nu: 2026-11-30 18:00:00\nv: '2026-11-30'\n",
    "base: &b {port: 80, name: x}\nuse: *b\nmerged: {<<: *b, name: y}\nn: &n 7\nm: *n\n",
    "- 80\n- '80'\n- 80\n- [80, '80', !!str 80]\n- {80: 80, '80': '80'}\n",
    "a: |\n  80\nb: >\n  80\nc: 80\n---\nc: 80\n---\n- 80\n",
])
def test_scalars_build_to_safe_loads_values(text: str) -> None:
    _same(text)


def test_a_plain_scalar_seen_before_as_an_int_stays_a_string_when_quoted_or_tagged() -> None:
    doc = _same("a: 80\nb: '80'\nc: !!str 80\nd: \"80\"\ne: 80\n")[0]
    assert doc == {"a": 80, "b": "80", "c": "80", "d": "80", "e": 80}
    assert [type(v) for v in doc.values()] == [int, str, str, str, int]


def test_built_values_are_not_shared_between_mutable_nodes() -> None:
    first, second = yamldocs.load_all("- {a: 1}\n- {a: 1}\n", source="t.yaml")[0]
    first["a"] = 2
    assert second == {"a": 1}


_scalars = st.one_of(
    st.integers(-10**6, 10**6), st.booleans(), st.none(), st.floats(allow_nan=False, width=32),
    st.sampled_from(["80", "yes", "no", "on", "off", "~", "null", "True", "1e3", "0o17", "0x1f",
                     "2026-11-30", "1.5", "-", ".inf", "<<", "a b", ""]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 99)), inner,
                                                  max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, min_size=1, max_size=3), st.sampled_from([None, True, False]))
def test_any_dumped_document_reads_back_as_safe_load_reads_it(docs: list[Any], flow: bool | None) -> None:
    try:
        text = yaml.safe_dump_all(docs, default_flow_style=flow, allow_unicode=True)
    except yaml.YAMLError:
        return
    _same(text)


def test_malformed_yaml_is_one_error_naming_the_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"^t\.yaml: line \d+: invalid YAML"):
        yamldocs.load_all("a: 1\nb: [unclosed\n", source="t.yaml")


def test_without_libyaml_the_pure_python_loader_gives_the_same_values_and_errors() -> None:
    """PyYAML built without libyaml: the reader falls back to ``SafeLoader`` with the same builder."""
    import json
    import subprocess
    import sys

    text = ("a: 1\nb: [true, null, 1.5, '2', 0o17, 2026-01-01]\nc: &x {d: e}\nf: *x\n<<: {g: h}\n"
            "---\n- !!str 3\n- {name: x, labels: {app: web}}\n--- |\n  block\n")
    script = ("import sys, json, yaml\nif hasattr(yaml, 'CSafeLoader'): del yaml.CSafeLoader\n"
              "from vipcore.core import yamldocs; "
              "assert not yamldocs.C_LOADER; "
              "print(repr(yamldocs.load_all(sys.stdin.read(), source='t.yaml')))\n"
              "try:\n yamldocs.load_all('a: [1\\n', source='bad.yaml')\n"
              "except Exception as exc:\n print(json.dumps(str(exc)))")
    result = subprocess.run([sys.executable, "-c", script], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pure, error = result.stdout.splitlines()
    assert pure == repr(yamldocs.load_all(text, source="t.yaml"))
    with pytest.raises(ConfigError) as c_error:
        yamldocs.load_all("a: [1\n", source="bad.yaml")
    assert "bad.yaml" in json.loads(error) and "invalid YAML" in json.loads(error)
    assert json.loads(error).split(":")[0] == str(c_error.value).split(":")[0]


@pytest.mark.parametrize("before", [
    "a: 1\nb: 2\n",
    "a: 1\r\nb: 2\r\n",  # CR LF is one line break
    "a: 1\rb: 2\r",
    "a: \"x\u2028y\"\nb: \"p\x85q\"\nc: d\u2029e: f\n",  # LS, NEL, PS break lines too (YAML 1.1)
    "a: >\r\n  folded\r\n\r\n  text\n# comment\u2028\n",
])
@pytest.mark.parametrize("bad", ["x: [unclosed\n", "x: {a: 1\n", "x: " + "[" * 120 + "]" * 120 + "\n",
                                 "k: &a [*a]\n"])
def test_a_piece_names_the_line_the_whole_text_does(before: str, bad: str) -> None:
    # A piece of a file (cut at a document start) parsed alone: its error's line counts from the file's start.
    text = before + "---\n" + bad
    start = len(before)
    with pytest.raises(ConfigError) as whole:
        yamldocs.load_all(text, source="f")
    with pytest.raises(ConfigError) as piece:
        yamldocs.load_all(text[start:], source="f", lines_before=lambda: yamldocs.line_breaks(text, start))
    assert str(piece.value) == str(whole.value) and "line" in str(whole.value)
