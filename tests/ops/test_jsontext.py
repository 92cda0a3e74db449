"""``dumps_indented`` prints what ``json.dumps(value, indent=2)`` prints, byte for byte."""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.ops.jsontext import dumps_indented

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                     st.text())
_keys = st.one_of(st.text(), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.lists(st.text(), max_size=6),
                            st.lists(inner, max_size=4).map(tuple), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(_values, st.sampled_from([0, 1, 2, 4]))
def test_the_text_is_json_dumps_indented(value: Any, indent: int) -> None:
    assert dumps_indented(value, indent) == json.dumps(value, indent=indent)


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


def test_subclasses_nan_and_odd_keys_are_written_as_the_standard_encoder_writes_them() -> None:
    value = {"vrid": Level.LOW, "names": [Name("é"), "a\"b\n", "\u2028"], 1.5: math.inf, None: [[], {}],
             "nested": {"nodes": ["n1", "n2"], "empty": [], "mixed": ["x", 1, None, -math.nan, True]},
             False: (1, 2), 7: {"k": "v"}}
    assert dumps_indented(value) == json.dumps(value, indent=2)


@pytest.mark.parametrize("value", [{"a": {1, 2}}, [object()], {(1, 2): "tuple key"}])
def test_what_json_cannot_hold_is_refused_as_json_refuses_it(value: Any) -> None:
    with pytest.raises(TypeError):
        json.dumps(value, indent=2)
    with pytest.raises(TypeError):
        dumps_indented(value)


def test_a_circular_reference_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps_indented({"x": loop})
