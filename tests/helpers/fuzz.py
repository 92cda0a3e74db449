"""Hypothesis strategies for fuzzing loaders: hostile values and mutations of valid documents."""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import strategies as st

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-10, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 1e300]),
    st.text(max_size=20), st.sampled_from(["", "x", "LoadBalancer", "Local", "IPv4", "IPv6", "True", "203.0.113.1",
                                           "203.0.113.0/24", "203.0.113.9-203.0.113.1", "2001:db8::1", "eth0",
                                           "a" * 300, "can_reach:1.2.3.4", "vip", "List", "Service"]),
)


def hostile_values() -> st.SearchStrategy[Any]:
    """Any YAML-representable value: scalars of every type, lists and mappings of them."""
    return st.recursive(
        _SCALARS,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4)),
        max_leaves=12,
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += _paths(child, prefix + (index,))
    return out


def mutate(document: Any, data: st.DataObject, *, rounds: int = 3) -> Any:
    """A copy of ``document`` with up to ``rounds`` subtrees replaced by hostile values or deleted."""
    doc = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(0, rounds))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        if not path:
            doc = data.draw(hostile_values())
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(hostile_values())
    return doc
