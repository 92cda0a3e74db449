"""Holder choice (issue 5): :mod:`vipcore.core.placement` is deterministic, spreads
groups evenly, and moves only what it must when a node joins or leaves."""

from __future__ import annotations

import collections
import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.core import placement
from vipcore.core.model import DesiredState, EndpointSlice, Node, Pool, Service, TrafficPolicy
from vipcore.core.resolve import group_name, membership, resolve

NODES = tuple(f"node-{i:02d}" for i in range(10))
#: Names shaped like the real ones: sha256 of a node list plus the interface.
GROUPS = tuple(group_name([f"svc-{i}", "x"], "eth0") for i in range(1000))
#: "Within a few percent": each node's share of 1,000 groups stays within
#: this many percentage points of the fair share (binomial sigma is ~0.95).
SPREAD_TOLERANCE_POINTS = 3.0

node_names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1, max_size=12, unique=True)


def holders(nodes: tuple[str, ...] | list[str], groups: tuple[str, ...] = GROUPS) -> dict[str, str]:
    result = {}
    for group in groups:
        chosen = placement.holder(group, nodes)
        assert chosen is not None
        result[group] = chosen
    return result


@settings(max_examples=200, deadline=None)
@given(group=st.text(min_size=1, max_size=80), nodes=node_names, seed=st.integers(0, 2**32))
def test_rank_is_deterministic_and_order_free(group: str, nodes: list[str], seed: int) -> None:
    shuffled = list(nodes)
    random.Random(seed).shuffle(shuffled)
    ranked = placement.rank(group, nodes)
    assert placement.rank(group, shuffled) == ranked
    assert placement.rank(group, nodes + nodes) == ranked  # duplicates do not count twice
    assert sorted(ranked) == sorted(nodes)
    assert placement.holder(group, shuffled) == ranked[0]


def test_rank_is_stable_across_processes() -> None:
    # Pinned values: every node (any Python, any PYTHONHASHSEED) must agree.
    assert placement.holder("a" * 64 + "-eth0", NODES) == placement.rank("a" * 64 + "-eth0", reversed(NODES))[0]
    assert placement.rank("group-1", ["node-a", "node-b", "node-c"]) == ("node-a", "node-c", "node-b")


def test_no_nodes_no_holder() -> None:
    assert placement.holder("g", []) is None
    assert placement.rank("g", []) == ()


def test_spread_over_1000_groups_and_10_nodes() -> None:
    counts = collections.Counter(holders(NODES).values())
    assert set(counts) == set(NODES)
    fair = 100.0 / len(NODES)
    shares = {node: 100.0 * count / len(GROUPS) for node, count in counts.items()}
    worst = max(abs(share - fair) for share in shares.values())
    assert worst <= SPREAD_TOLERANCE_POINTS, shares


@pytest.mark.parametrize("leaving", [NODES[0], NODES[4], NODES[9]])
def test_leave_moves_only_the_groups_the_node_held(leaving: str) -> None:
    before = holders(NODES)
    after = holders([n for n in NODES if n != leaving])
    moved = {g for g in GROUPS if before[g] != after[g]}
    assert moved == {g for g in GROUPS if before[g] == leaving}
    # ... and they spread over the survivors rather than piling on one.
    receivers = collections.Counter(after[g] for g in moved)
    assert len(receivers) == len(NODES) - 1
    assert max(receivers.values()) <= 3 * len(moved) / (len(NODES) - 1)


def test_join_moves_only_the_groups_the_new_node_wins() -> None:
    before = holders(NODES)
    after = holders((*NODES, "node-new"))
    moved = {g for g in GROUPS if before[g] != after[g]}
    assert all(after[g] == "node-new" for g in moved)
    share = 100.0 * len(moved) / len(GROUPS)
    assert abs(share - 100.0 / (len(NODES) + 1)) <= SPREAD_TOLERANCE_POINTS


def test_weights_shift_share_proportionally() -> None:
    counts = collections.Counter(
        placement.holder(g, NODES, {NODES[0]: 2.0}) for g in GROUPS
    )
    # Weight 2 among nine of weight 1: 2/11 of the groups, about 18%.
    assert abs(100.0 * counts[NODES[0]] / len(GROUPS) - 100.0 * 2 / 11) <= SPREAD_TOLERANCE_POINTS


def test_priorities_follow_rank() -> None:
    ranked = placement.rank("g", NODES)
    prios = placement.priorities("g", NODES)
    step = min(placement.PRIORITY_STEP, 253 // (len(NODES) - 1))
    assert [prios[n] for n in ranked] == list(range(254, 254 - step * len(NODES), -step))
    many = placement.priorities("g", [f"n{i}" for i in range(300)])
    assert min(many.values()) == 1 and max(many.values()) == 254


def test_membership_carries_placement_order() -> None:
    from vipcore.core.model import VipGroup

    group = VipGroup(name=GROUPS[0], interface="eth0", nodes=NODES, services=("default/web",))
    assert group.placement_key == "eth0/default/web"
    for node in NODES:
        member = membership(group, node, [Node(n) for n in NODES])
        assert tuple(m.name for m in member.members) == placement.rank(group.placement_key, NODES)
        assert member.preferred_holder == placement.holder(group.placement_key, NODES)


# -- the same property, end to end through resolve -----------------------------


def _state(ready: frozenset[str]) -> DesiredState:
    """100 Local Services, each with endpoints on 3 of 10 nodes; ``ready`` nodes are Ready."""
    rng = random.Random(5)
    services, slices = [], []
    for i in range(100):
        services.append(Service("default", f"svc-{i}", traffic_policy=TrafficPolicy.LOCAL))
        slices.append(EndpointSlice("default", f"svc-{i}-x", f"svc-{i}", frozenset(rng.sample(NODES, 3))))
    pool = Pool("lan", ((ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("198.51.100.254")),),
                interface="eth0", default=True)
    nodes = tuple(Node(n, ready=n in ready) for n in NODES)
    return DesiredState(nodes=nodes, services=tuple(services), endpoint_slices=tuple(slices),
                        pools=(pool,))


def _holder_per_service(state: DesiredState) -> dict[str, str]:
    result = {}
    for group in resolve(state).groups:
        chosen = placement.holder(group.placement_key, group.nodes)
        assert chosen is not None
        for service in group.services:
            result[service] = chosen
    return result


def test_node_leaving_moves_only_the_vips_it_held_end_to_end() -> None:
    everyone = frozenset(NODES)
    before = _holder_per_service(_state(everyone))
    after = _holder_per_service(_state(everyone - {NODES[3]}))
    moved = {s for s in before if s in after and before[s] != after[s]}
    assert moved == {s for s in before if before[s] == NODES[3]}
