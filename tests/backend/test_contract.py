"""The contract's helpers for backend authors: one placement helper that takes the group."""

from __future__ import annotations

import vipcore
from vipcore import Node, rank_nodes
from vipcore.core.resolve import membership
from vipcore.sources.static import desired_state

NODES = tuple(f"node-{c}" for c in "abcdefgh")


def test_rank_nodes_takes_the_group_and_agrees_with_the_agents_membership() -> None:
    state = desired_state(
        [{"kind": "Node", "metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
         for n in NODES]
        + [{"kind": "VipPool", "metadata": {"name": "lan"},
            "spec": {"interface": "eth0", "addresses": ["203.0.113.0/26"], "default": True}}]
        + [{"kind": "Service", "metadata": {"name": f"svc{i}", "namespace": "default"},
            "spec": {"type": "LoadBalancer"}} for i in range(6)])
    groups = vipcore.resolve(state).groups
    assert groups
    disagreements_by_name = 0
    for group in groups:
        agent_order = tuple(m.name for m in membership(group, "node-a", state.nodes).members)
        assert rank_nodes(group, group.nodes) == agent_order
        # What the old doc told authors to do (rank by the group name) is a different order in general.
        disagreements_by_name += vipcore.rank(group.name, group.nodes) != agent_order
        # Ranking a subset keeps the relative order of the survivors.
        survivors = agent_order[1:]
        assert rank_nodes(group, reversed(survivors)) == survivors
    assert disagreements_by_name > 0
    assert isinstance(state.nodes[0], Node)
