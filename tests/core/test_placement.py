"""Placement: a node's position in a ranking is where the full ranking puts it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vipcore.core import placement

NAMES = st.sets(st.text("abcdef0123", min_size=1, max_size=6), min_size=1, max_size=60)


@given(NAMES, st.text("xyz", min_size=1, max_size=4))
def test_inserting_at_position_gives_the_full_ranking(names: set[str], group: str) -> None:
    node = sorted(names)[0]
    others = list(placement.rank(group, names - {node}))
    others.insert(placement.position(group, others, node), node)
    assert placement.position(group, ["zz"] + others, node, 1) == 1 + others.index(node)
    assert tuple(others) == placement.rank(group, names)
