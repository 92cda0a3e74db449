"""The model's invariants: a group's nodes are sorted and unique, whatever they were given as."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import objects as o
from vipcore.core.errors import ManifestError
from vipcore.core.model import VipGroup
from vipcore.core.objects import vipgroup_from_k8s

names = st.lists(st.sampled_from([f"node-{i}" for i in range(12)] + ["a", "node-10", "Z", "é"]), max_size=20)


@given(names, st.sampled_from([list, tuple, frozenset, set, sorted]))
def test_a_groups_nodes_are_sorted_and_unique(given_names: list[str], as_: Any) -> None:
    """Already sorted lists (what the controller writes, what a merged group copies) take a fast path
    that must give what sorting gives, for every other input too."""
    group = VipGroup(name="g-eth0", interface="eth0", nodes=as_(given_names))
    assert group.nodes == tuple(sorted(set(given_names)))
    assert isinstance(group.nodes, tuple)


def test_a_sorted_tuple_is_kept_as_it_is() -> None:
    nodes = tuple(f"node-{i:05d}" for i in range(5000))
    assert VipGroup(name="g-eth0", interface="eth0", nodes=nodes).nodes is nodes


@pytest.mark.parametrize(("bad", "index", "shown"), [
    (["node-a", ""], 1, "''"), (["node-a", "node-b", 7], 2, "7"), ([None], 0, "None"), ([["x"]], 0, "['x']"),
])
def test_a_bad_node_name_names_its_index(bad: list[Any], index: int, shown: str) -> None:
    obj = o.vip_group("g1-eth0", 1)
    obj["spec"]["nodes"] = bad
    with pytest.raises(ManifestError) as raised:
        vipgroup_from_k8s(obj)
    assert f"spec.nodes[{index}]" in str(raised.value) and shown in str(raised.value)
