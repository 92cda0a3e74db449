"""The resolver: naming, node selection, grouping, VRIDs, IPAM."""

from __future__ import annotations

import hashlib
import ipaddress
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore import (
    DesiredState,
    EndpointSlice,
    Family,
    Node,
    Pool,
    Service,
    TrafficPolicy,
    VridPolicy,
    allocate_vrids,
    group_name,
    resolve,
)
from vipcore.core.objects import parse_range
from vipcore.core.model import EXCLUDE_LABEL

ip = ipaddress.ip_address


def pool(name: str = "lan", *entries: str, interface: str = "eth0", **kw: object) -> Pool:
    return Pool(name=name, ranges=tuple(parse_range(e) for e in (entries or ("198.51.100.0/24",))),
                interface=interface, **kw)  # type: ignore[arg-type]


def nodes(*names: str, ready: bool = True) -> tuple[Node, ...]:
    # Node addresses outside every pool of these tests: a pool holding one is refused.
    return tuple(Node(name=n, addresses=(ip(f"2001:db8:ffff::{10 + i}"),), ready=ready) for i, n in enumerate(names))


def svc(name: str, ns: str = "default", **kw: object) -> Service:
    return Service(namespace=ns, name=name, **kw)  # type: ignore[arg-type]


# -- naming -------------------------------------------------------------------


def test_group_name_is_openelbs_rule() -> None:
    expected = hashlib.sha256(b"node-a,node-b,node-c").hexdigest() + "-eth0"
    assert group_name(["node-c", "node-a", "node-b"], "eth0") == expected
    assert len(expected.split("-")[0]) == 64


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=10), st.randoms())
def test_group_name_ignores_order(names: list[str], rnd: object) -> None:
    shuffled = list(names)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert group_name(names, "eth0") == group_name(shuffled, "eth0")


def test_group_name_differs_by_interface_and_nodes() -> None:
    assert group_name(["a"], "eth0") != group_name(["a"], "eth1")
    assert group_name(["a", "b"], "eth0") != group_name(["a"], "eth0")


# -- node selection -----------------------------------------------------------


def test_cluster_policy_takes_ready_eligible_nodes() -> None:
    ns = (
        Node("a", ready=True),
        Node("b", ready=False),
        Node("c", ready=True, labels={EXCLUDE_LABEL: ""}),
        Node("d", ready=True, labels={"zone": "x"}),
    )
    state = DesiredState(nodes=ns, services=(svc("web"),), pools=(pool(),))
    (group,) = resolve(state).groups
    assert group.nodes == ("a", "d")

    selective = pool(node_selector={"zone": "x"})
    (group,) = resolve(DesiredState(nodes=ns, services=(svc("web"),), pools=(selective,))).groups
    assert group.nodes == ("d",)


def test_local_policy_takes_nodes_with_ready_endpoints() -> None:
    state = DesiredState(
        nodes=nodes("a", "b", "c"),
        services=(svc("shop", traffic_policy=TrafficPolicy.LOCAL),),
        endpoint_slices=(
            EndpointSlice("default", "shop-1", "shop", frozenset({"a"})),
            EndpointSlice("default", "shop-2", "shop", frozenset({"c", "gone"})),
        ),
        pools=(pool(),),
    )
    (group,) = resolve(state).groups
    assert group.nodes == ("a", "c")  # "gone" is not a node


def test_local_policy_without_endpoints_is_unresolved_with_reason() -> None:
    state = DesiredState(nodes=nodes("a"), services=(svc("shop", traffic_policy=TrafficPolicy.LOCAL),),
                         pools=(pool(),))
    result = resolve(state)
    assert result.groups == ()
    assert result.unresolved[0].service == "default/shop"
    assert "no ready endpoint" in result.unresolved[0].reason


def test_no_eligible_node_is_unresolved() -> None:
    result = resolve(DesiredState(nodes=nodes("a", ready=False), services=(svc("web"),), pools=(pool(),)))
    assert result.groups == ()
    assert "no eligible node" in result.unresolved[0].reason


def test_services_with_same_nodes_and_interface_share_a_group() -> None:
    state = DesiredState(
        nodes=nodes("a", "b"),
        services=(svc("one"), svc("two"), svc("three", pool="dmz")),
        pools=(pool(default=True), pool("dmz", "203.0.113.0/24", interface="eth1")),
    )
    result = resolve(state)
    assert len(result.groups) == 2
    by_iface = {g.interface: g for g in result.groups}
    assert by_iface["eth0"].services == ("default/one", "default/two")
    assert len(by_iface["eth0"].vips_v4) == 2
    assert by_iface["eth1"].services == ("default/three",)


def test_dual_stack_service_gets_one_address_per_family_in_one_group() -> None:
    state = DesiredState(
        nodes=nodes("a", "b"),
        services=(svc("web", families=(Family.IPV4, Family.IPV6)),),
        pools=(pool("lan", "198.51.100.0/24", "2001:db8::/64"),),
    )
    (group,) = resolve(state).groups
    assert len(group.vips_v4) == 1 and len(group.vips_v6) == 1
    assert group.families == (Family.IPV4, Family.IPV6)


def test_pool_choice_reasons() -> None:
    pools = (pool("a"), pool("b", "203.0.113.0/24"))
    result = resolve(DesiredState(nodes=nodes("n"), services=(svc("x"), svc("y", pool="nope")), pools=pools))
    reasons = {u.service: u.reason for u in result.unresolved}
    assert "no pool is marked default" in reasons["default/x"]
    assert "pool 'nope' does not exist" in reasons["default/y"]
    disabled = resolve(DesiredState(nodes=nodes("n"), services=(svc("x"),), pools=(pool(disabled=True),)))
    assert "disabled" in disabled.unresolved[0].reason
    scoped = resolve(DesiredState(nodes=nodes("n"), services=(svc("x", ns="other"),),
                                  pools=(pool(namespaces=frozenset({"default"})),)))
    assert "does not serve namespace 'other'" in scoped.unresolved[0].reason


# -- IPAM ---------------------------------------------------------------------


def test_cidr_skips_network_and_broadcast() -> None:
    assert parse_range("198.51.100.0/30") == (ip("198.51.100.1"), ip("198.51.100.2"))
    assert parse_range("198.51.100.7/32") == (ip("198.51.100.7"), ip("198.51.100.7"))
    assert parse_range("198.51.100.10-198.51.100.12") == (ip("198.51.100.10"), ip("198.51.100.12"))
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_range("198.51.100.12-198.51.100.10")
    with pytest.raises(ValueError, match="mixes"):
        parse_range("198.51.100.1-2001:db8::1")


def test_full_pool_refuses_only_the_extra_service() -> None:
    small = pool("lan", "198.51.100.0/30")  # two usable addresses
    services = (svc("a"), svc("b"), svc("c"))
    result = resolve(DesiredState(nodes=nodes("n"), services=services, pools=(small,)))
    assert sum(len(g.vips_v4) for g in result.groups) == 2
    assert [u.reason for u in result.unresolved] == ["pool 'lan' has no free IPv4 address"]
    for address in result.allocations.values():
        assert address[0] in (ip("198.51.100.1"), ip("198.51.100.2"))


def test_requested_ip_honoured_outside_or_taken_refused() -> None:
    services = (
        svc("a", requested_ips=(ip("198.51.100.50"),)),
        svc("b", requested_ips=(ip("198.51.100.50"),)),
        svc("c", requested_ips=(ip("192.0.2.1"),)),
    )
    result = resolve(DesiredState(nodes=nodes("n"), services=services, pools=(pool(),)))
    assert result.allocations["default/a"] == (ip("198.51.100.50"),)
    reasons = {u.service: u.reason for u in result.unresolved}
    assert reasons["default/b"] == "requested address 198.51.100.50 is already used by default/a"
    assert reasons["default/c"] == "requested address 192.0.2.1 is outside pool 'lan'"


def test_allocated_status_address_is_kept_and_new_service_does_not_shift_others() -> None:
    base = (svc("a"), svc("b"))
    first = resolve(DesiredState(nodes=nodes("n"), services=base, pools=(pool(),))).allocations
    grown = resolve(DesiredState(nodes=nodes("n"), services=base + (svc("0-first"),), pools=(pool(),))).allocations
    assert grown["default/a"] == first["default/a"]
    assert grown["default/b"] == first["default/b"]
    held = svc("a", vips=(ip("198.51.100.77"),))
    kept = resolve(DesiredState(nodes=nodes("n"), services=(held,), pools=(pool(),))).allocations
    assert kept["default/a"] == (ip("198.51.100.77"),)


def test_agent_mode_uses_status_only() -> None:
    state = DesiredState(nodes=nodes("n"), services=(svc("a"), svc("b", vips=(ip("198.51.100.9"),))),
                         pools=(pool(),))
    result = resolve(state, allocate=False)
    assert result.allocations == {"default/b": (ip("198.51.100.9"),)}
    assert result.unresolved[0].reason == "no address allocated yet"


# -- VRIDs --------------------------------------------------------------------


def names(count: int, prefix: str = "g") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", "eth0") for i in range(count)]


def test_vrids_unique_per_interface_and_deterministic() -> None:
    groups = names(100) + [(f"h{i}", "eth1") for i in range(100)]
    one = allocate_vrids(groups)
    two = allocate_vrids(list(reversed(groups)))
    assert one.vrids == two.vrids
    for iface in ("eth0", "eth1"):
        used = [one.vrids[n] for n, i in groups if i == iface]
        assert len(set(used)) == len(used) == 100


def test_the_256th_group_fails_alone_with_a_precise_message() -> None:
    groups = names(256)
    result = allocate_vrids(groups)
    assert len(result.vrids) == 255
    (failed_name, message), = result.failed.items()
    assert message == (f"no free VRID for group {failed_name} on interface 'eth0': "
                       "all 255 VRIDs of range 1-255 are in use")


def test_vrid_range_and_exclusions() -> None:
    policy = VridPolicy(first=10, last=20, exclude=frozenset({12, 13}))
    result = allocate_vrids(names(9), policy=policy)
    assert set(result.vrids.values()) == {10, 11, 14, 15, 16, 17, 18, 19, 20}
    result = allocate_vrids(names(10), policy=policy)
    assert "range 10-20 excluding 12,13" in next(iter(result.failed.values()))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.data())
def test_persisted_vrids_never_change_when_groups_come_and_go(count: int, data: st.DataObject) -> None:
    groups = names(count)
    persisted = dict(allocate_vrids(groups).vrids)
    removed = set(data.draw(st.lists(st.sampled_from([n for n, _ in groups]), max_size=count)))
    added = names(data.draw(st.integers(min_value=0, max_value=255 - count + len(removed))), prefix="new")
    after = allocate_vrids([g for g in groups if g[0] not in removed] + added, persisted=persisted)
    for name, _ in groups:
        if name not in removed:
            assert after.vrids[name] == persisted[name]
    assert not after.failed
    assert len(set(after.vrids.values())) == len(after.vrids)


def test_pinned_vrid_clash_keeps_first_name() -> None:
    result = allocate_vrids(names(2), persisted={"g0": 7, "g1": 7})
    assert result.vrids["g0"] == 7 and result.vrids["g1"] != 7


def test_resolve_keeps_persisted_vrid() -> None:
    state = DesiredState(nodes=nodes("a"), services=(svc("web"),), pools=(pool(),))
    name = group_name(["a"], "eth0")
    pinned = DesiredState(nodes=state.nodes, services=state.services, pools=state.pools, vrids={name: 42})
    assert resolve(pinned).groups[0].vrid == 42


def test_vrid_exhaustion_in_resolve_names_services_and_spares_others() -> None:
    node_list = nodes(*[f"n{i}" for i in range(3)])
    services = [svc(f"s{i}", traffic_policy=TrafficPolicy.LOCAL) for i in range(3)]
    slices = [EndpointSlice("default", f"s{i}", f"s{i}", frozenset({f"n{i}"})) for i in range(3)]
    state = DesiredState(nodes=node_list, services=tuple(services), endpoint_slices=tuple(slices), pools=(pool(),))
    result = resolve(state, vrid_policy=VridPolicy(first=1, last=2))
    assert len(result.groups) == 2
    assert len(result.unresolved) == 1 and "no free VRID" in result.unresolved[0].reason


# -- scale --------------------------------------------------------------------


def test_ten_thousand_services_on_a_thousand_nodes_resolve_quickly() -> None:
    node_list = tuple(Node(f"node-{i:04d}") for i in range(1000))
    services = tuple(svc(f"s{i}", ns=f"ns{i % 50}", families=(Family.IPV6,)) for i in range(10_000))
    state = DesiredState(nodes=node_list, services=services, pools=(pool("lan", "2001:db8::/112"),))
    start = time.process_time()
    result = resolve(state)
    elapsed = time.process_time() - start
    assert len(result.groups) == 1
    assert len(result.allocations) == 10_000
    assert len({a for addrs in result.allocations.values() for a in addrs}) == 10_000
    # Behaviour check with a generous bound; the figures live in bench/resolve.py.
    assert elapsed < 10


# -- membership and drain -----------------------------------------------------


def test_membership_priorities_follow_placement_and_drained_nodes_rank_last() -> None:
    from vipcore import membership
    from vipcore.core import placement
    from vipcore.core.model import DRAIN_LABEL

    node_list = nodes("a", "b", "c")
    state = DesiredState(nodes=node_list, services=(svc("web"),), pools=(pool(),))
    (group,) = resolve(state).groups
    order = placement.rank(group.placement_key, group.nodes)
    m = membership(group, "a", node_list)
    assert [p.name for p in m.members] == list(order)
    # Spaced so that backups' Skew_Times differ by more than advert jitter.
    assert [p.priority for p in m.members] == [254, 254 - placement.PRIORITY_STEP, 254 - 2 * placement.PRIORITY_STEP]
    assert m.preferred_holder == order[0]

    top = order[0]
    drained = tuple(Node(n.name, n.addresses, labels={DRAIN_LABEL: "true"}) if n.name == top else n
                    for n in node_list)
    (same_group,) = resolve(DesiredState(nodes=drained, services=(svc("web"),), pools=(pool(),))).groups
    assert same_group.name == group.name and same_group.vrid == group.vrid  # nothing else moves
    m2 = membership(same_group, top, drained)
    assert m2.preferred_holder == order[1]
    assert m2.priority == 1 and m2.members[-1].name == top


def test_rank_priorities_are_spaced_distinct_and_in_range() -> None:
    from vipcore.core import placement

    for count in (1, 2, 3, 5, 16, 17, 40, 254, 300):
        prios = [placement.rank_priority(i, count) for i in range(count)]
        assert prios[0] == placement.TOP_PRIORITY and min(prios) >= placement.BOTTOM_PRIORITY
        assert prios == sorted(prios, reverse=True)
        distinct = min(count, placement.TOP_PRIORITY)
        assert len(set(prios)) == distinct
    assert placement.rank_priority(1, 5) == placement.TOP_PRIORITY - placement.PRIORITY_STEP


def test_a_node_leaving_moves_only_the_groups_it_was_preferred_for() -> None:
    from vipcore import membership

    node_names = [f"n{i}" for i in range(8)]
    services = tuple(svc(f"s{i}", traffic_policy=TrafficPolicy.LOCAL) for i in range(200))
    def holders(present: list[str]) -> dict[str, str]:
        node_list = nodes(*present)
        slices = tuple(EndpointSlice("default", f"s{i}", f"s{i}", frozenset(present)) for i in range(200))
        # One group per Service: give each a distinct interface-free identity via its own pool? Local
        # Services with the same node set share a group, so spread them over 40 interfaces.
        pools = tuple(pool(f"p{k}", f"2001:db8:{k}::/120", interface=f"eth{k}") for k in range(40))
        placed = tuple(Service("default", f"s{i}", traffic_policy=TrafficPolicy.LOCAL, pool=f"p{i % 40}")
                       for i in range(200))
        result = resolve(DesiredState(nodes=node_list, services=placed, endpoint_slices=slices, pools=pools))
        return {g.services[0]: membership(g, g.nodes[0], node_list).preferred_holder for g in result.groups}

    del services
    before = holders(node_names)
    after = holders([n for n in node_names if n != "n3"])
    assert len(before) == len(after) == 40
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k in before if before[k] == "n3"}
    assert moved  # n3 held something, so the check is not vacuous


# -- membership edited from the previous one ------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 400),
    edits=st.lists(st.integers(0, 10**6), max_size=20),
    drain=st.frozensets(st.integers(0, 449), max_size=30),
    services=st.sampled_from([("default/a",), ()]),
)
def test_membership_edited_from_the_previous_equals_the_full_computation(
    size: int, edits: list[int], drain: frozenset[int], services: tuple[str, ...]
) -> None:
    """A group gaining and losing members (a Node flip renames it, same placement key): the previous
    membership edited equals the one computed from scratch, across the priority step and bottom
    boundaries (groups of 1 to 400 nodes) and with drained members; also past :data:`EDITS` (recomputed)."""
    from vipcore.core.model import Node, VipGroup
    from vipcore.core.resolve import membership, node_changes

    universe = [f"n{i:03d}" for i in range(450)]
    nodes = {n: Node(n, (ipaddress.ip_address(f"2001:db8::{i + 1:x}"),),
                     labels={"vipcore.io/drain": "true"} if i in drain else {})
             for i, n in enumerate(universe)}
    drained = {universe[i] for i in drain}
    before = set(universe[:size])
    me = universe[0]
    after = set(before)
    for e in edits:
        n = universe[1 + e % 449]
        after ^= {n}
    def group(members: set[str]) -> VipGroup:
        # Without Services the placement key is the name, which hashes the nodes: no edit then.
        name = hashlib.sha256(",".join(sorted(members)).encode()).hexdigest() + "-eth0"
        return VipGroup(name, "eth0", tuple(members), vrid=5, services=services)

    old = membership(group(before), me, nodes)
    new = group(after)
    assert membership(new, me, nodes, previous=old) == membership(new, me, nodes)
    assert membership(new, me, nodes, previous=old, drained=drained) == membership(new, me, nodes)
    # The caller that found the members that came and went passes them (the agent's VipGroup view).
    moved = node_changes(old.group.nodes, new.nodes)
    assert moved == (before - after, after - before)
    assert membership(new, me, nodes, previous=old, drained=drained, moved=moved) == membership(new, me, nodes)


def test_membership_edited_when_a_drained_member_leaves_and_another_joins() -> None:
    """The drained tail shrinks by the member that left: the ranked part keeps its length."""
    from vipcore.core.model import Node, VipGroup
    from vipcore.core.resolve import membership, node_changes

    drain = {"vipcore.io/drain": "true"}
    nodes = {n: Node(n, labels=drain if n in ("d1", "d2") else {}) for n in ("a", "b", "c", "d1", "d2", "e", "f")}
    before = VipGroup("g1-eth0", "eth0", ("a", "b", "c", "d1", "d2"), vrid=5, services=("default/a",))
    old = membership(before, "a", nodes)
    for after in (("a", "b", "c", "d2"), ("a", "b", "c", "d2", "e"), ("a", "b", "c", "d2", "e", "f"),
                  ("a", "c", "d1", "e", "f")):
        new = VipGroup("g2-eth0", "eth0", after, vrid=5, services=("default/a",))
        assert membership(new, "a", nodes, previous=old) == membership(new, "a", nodes)
        assert membership(new, "a", nodes, previous=old, drained={"d1", "d2"},
                          moved=node_changes(before.nodes, new.nodes)) == membership(new, "a", nodes)
