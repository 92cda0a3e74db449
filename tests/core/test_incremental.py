"""Incremental resolution gives what a full ``resolve`` gives, and recomputes only what a change reaches."""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.core.incremental import IncrementalResolver
from vipcore.core.model import (
    DRAIN_LABEL,
    EXCLUDE_LABEL,
    DesiredState,
    EndpointSlice,
    Family,
    Node,
    Pool,
    Service,
    TrafficPolicy,
    VridPolicy,
)
from vipcore.core.objects import parse_range
from vipcore.core.resolve import resolve

ip = ipaddress.ip_address

NODES = ["n1", "n2", "n3", "n4", "n5"]
SERVICES = [("default", "a"), ("default", "b"), ("default", "c"), ("team", "d"), ("team", "e"), ("team", "f")]
# Few addresses, so that requests collide, held addresses are shared and pools run out.
ADDRESSES = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.9", "2001:db8::1", "2001:db8::2"]
POOL_SHAPES = {
    "lan": (("198.51.100.1-198.51.100.3", "2001:db8::1-2001:db8::2"), "eth0"),
    "small": (("198.51.100.2-198.51.100.3",), "eth0"),
    "other": (("198.51.100.9",), "eth1"),
}


def node_strategy() -> st.SearchStrategy[Node]:
    labels = st.fixed_dictionaries({}, optional={
        EXCLUDE_LABEL: st.just(""), "zone": st.sampled_from(["x", "y"]), DRAIN_LABEL: st.just("true")})
    return st.builds(lambda name, ready, lab, last: Node(name, (ip(f"203.0.113.{last}"),), ready=ready, labels=lab),
                     st.sampled_from(NODES), st.booleans(), labels, st.integers(1, 3))


def node_in_pool_strategy() -> st.SearchStrategy[Node]:
    """A node whose address may lie in a pool: that pool is then refused, until the node moves or goes."""
    return st.builds(lambda name, address: Node(name, (ip(address),)), st.sampled_from(NODES),
                     st.sampled_from(["198.51.100.3", "198.51.100.9", "2001:db8::2", "203.0.113.7"]))


def service_strategy() -> st.SearchStrategy[Service]:
    addresses = st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True).map(
        lambda ips: tuple(ip(a) for a in ips))
    one_per_family = addresses.map(lambda ips: tuple({a.version: a for a in ips}.values()))
    return st.builds(
        lambda key, policy, requested, held, pool, families: Service(
            key[0], key[1], traffic_policy=policy, requested_ips=requested, vips=held, pool=pool, families=families),
        st.sampled_from(SERVICES),
        st.sampled_from(TrafficPolicy),
        st.one_of(st.just(()), one_per_family),
        st.one_of(st.just(()), addresses),
        st.sampled_from([None, None, "lan", "small", "other", "missing"]),
        st.sampled_from([(), (Family.IPV4,), (Family.IPV6,), (Family.IPV6, Family.IPV4)]),
    )


def slice_strategy() -> st.SearchStrategy[EndpointSlice]:
    return st.builds(
        lambda key, index, ready: EndpointSlice(key[0], f"{key[1]}-{index}", key[1], frozenset(ready)),
        st.sampled_from(SERVICES), st.integers(0, 1), st.sets(st.sampled_from(NODES), max_size=3))


def pool_strategy() -> st.SearchStrategy[Pool]:
    return st.builds(
        lambda name, default, selector, disabled, namespaces: Pool(
            name, tuple(parse_range(r) for r in POOL_SHAPES[name][0]), interface=POOL_SHAPES[name][1],
            default=default, node_selector=selector, disabled=disabled, namespaces=namespaces),
        st.sampled_from(sorted(POOL_SHAPES)),
        st.booleans(),
        st.sampled_from([{}, {}, {"zone": "x"}]),
        st.sampled_from([False, False, False, True]),
        st.sampled_from([frozenset(), frozenset(), frozenset({"team"})]),
    )


@attrs.define
class World:
    """A cluster edited one object at a time; ``state()`` is what a source would hand over."""

    nodes: dict[str, Node] = attrs.Factory(dict)
    services: dict[str, Service] = attrs.Factory(dict)
    slices: dict[tuple[str, str], EndpointSlice] = attrs.Factory(dict)
    pools: dict[str, Pool] = attrs.Factory(dict)
    vrids: dict[str, int] = attrs.Factory(dict)
    lineage: dict[str, tuple[str, ...]] = attrs.Factory(dict)
    #: Addresses recently released (the controller's quarantine): an argument of resolve, not state.
    quarantined: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()

    def state(self) -> DesiredState:
        return DesiredState(
            nodes=tuple(self.nodes[k] for k in sorted(self.nodes)),
            services=tuple(self.services[k] for k in sorted(self.services)),
            endpoint_slices=tuple(self.slices[k] for k in sorted(self.slices)),
            pools=tuple(self.pools[k] for k in sorted(self.pools)),
            vrids=dict(self.vrids),
            lineage=dict(self.lineage),
        )

    def apply(self, op: tuple[Any, ...]) -> None:
        verb, what = op[0], op[1]
        tables: dict[str, dict[Any, Any]] = {"node": self.nodes, "service": self.services, "slice": self.slices,
                                             "pool": self.pools}
        table = tables.get(what, {})
        if verb == "put":
            obj = op[2]
            if isinstance(obj, Service):
                table[obj.key] = obj
            elif isinstance(obj, EndpointSlice):
                table[(obj.namespace, obj.name)] = obj
            else:
                table[obj.name] = obj
        elif verb == "delete" and table:
            del table[sorted(table, key=str)[op[2] % len(table)]]
        elif verb == "touch" and table:
            # An equal but new object, as a source that re-parses everything hands over.
            key = sorted(table, key=str)[op[2] % len(table)]
            table[key] = attrs.evolve(table[key])
        elif verb == "pin":
            # What the controller does: persist the VRIDs it allocated (op[2] chooses a few to move).
            groups = resolve(self.state(), vrid_policy=op[3]).groups
            self.vrids = {g.name: (g.vrid if i % 3 else 1 + (g.vrid or 0) % 4)
                          for i, g in enumerate(groups) if g.vrid is not None and (i + op[2]) % 2}
            if what == "lineage":
                # ... and the Services of its groups: a group renamed later inherits its predecessor's VRID.
                self.lineage = {g.name: g.services for i, g in enumerate(groups) if (i + op[2]) % 3}
        elif verb == "quarantine":
            self.quarantined = frozenset(ip(a) for i, a in enumerate(ADDRESSES) if op[2] >> i & 1)


def base_world() -> World:
    """Every node ready, Services holding addresses, Local ones with endpoints: changes have something to reach."""
    world = World(pools={"lan": Pool("lan", tuple(parse_range(r) for r in POOL_SHAPES["lan"][0]), interface="eth0",
                                     default=True),
                         "other": Pool("other", (parse_range("198.51.100.9"),), interface="eth1")})
    for i, name in enumerate(NODES):
        world.nodes[name] = Node(name, (ip(f"203.0.113.{i + 1}"),), labels={"zone": "x" if i % 2 else "y"})
    for i, (ns, name) in enumerate(SERVICES[:5]):
        policy = TrafficPolicy.LOCAL if i % 2 else TrafficPolicy.CLUSTER
        held = (ip(ADDRESSES[i]),)
        world.services[f"{ns}/{name}"] = Service(ns, name, traffic_policy=policy, vips=held,
                                                 pool="other" if i == 3 else None)
        world.slices[(ns, f"{name}-0")] = EndpointSlice(ns, f"{name}-0", name, frozenset(NODES[i % 3: i % 3 + 2]))
    return world


OPS = st.one_of(
    st.tuples(st.just("put"), st.just("node"), node_strategy()),
    st.tuples(st.just("put"), st.just("node"), node_strategy()),
    st.tuples(st.just("put"), st.just("service"), service_strategy()),
    st.tuples(st.just("put"), st.just("service"), service_strategy()),
    st.tuples(st.just("put"), st.just("slice"), slice_strategy()),
    st.tuples(st.just("put"), st.just("slice"), slice_strategy()),
    st.tuples(st.just("put"), st.just("pool"), pool_strategy()),
    st.tuples(st.just("delete"), st.sampled_from(["node", "service", "slice", "pool"]), st.integers(0, 9)),
    st.tuples(st.just("touch"), st.sampled_from(["node", "service", "slice", "pool"]), st.integers(0, 9)),
    st.tuples(st.just("pin"), st.just("vrids"), st.integers(0, 1)),
    st.tuples(st.just("put"), st.just("node"), node_in_pool_strategy()),
    st.tuples(st.just("pin"), st.just("lineage"), st.integers(0, 2)),
    st.tuples(st.just("quarantine"), st.just("addresses"), st.integers(0, 63)),
)


@settings(max_examples=150, deadline=None)
@given(
    initial=st.lists(OPS, max_size=12),
    changes=st.lists(st.lists(OPS, min_size=1, max_size=3), min_size=1, max_size=15),
    allocate=st.booleans(),
    narrow=st.booleans(),
)
def test_incremental_equals_full_resolve(
    initial: list[tuple[Any, ...]], changes: list[list[tuple[Any, ...]]], allocate: bool, narrow: bool
) -> None:
    # A narrow VRID range makes groups fail for want of a VRID, and persisted VRIDs clash.
    policy = VridPolicy(first=1, last=3) if narrow else VridPolicy()
    world = base_world()
    for op in initial:
        world.apply(op + ((policy,) if op[0] == "pin" else ()))
    resolver = IncrementalResolver(vrid_policy=policy, allocate=allocate)
    assert resolver.update(world.state(), quarantined=world.quarantined) == resolve(
        world.state(), vrid_policy=policy, allocate=allocate, quarantined=world.quarantined)
    for burst in changes:
        # A burst is coalesced: several edits, one update.
        for op in burst:
            world.apply(op + ((policy,) if op[0] == "pin" else ()))
        state = world.state()
        assert resolver.update(state, quarantined=world.quarantined) == resolve(
            state, vrid_policy=policy, allocate=allocate, quarantined=world.quarantined)


# -- what a change reaches ------------------------------------------------------


def cluster(services: int, nodes: int = 50) -> DesiredState:
    node_list = tuple(Node(f"node-{i:03d}") for i in range(nodes))
    svcs = []
    slices = []
    for i in range(services):
        local = i % 2 == 0
        held = (ip("198.51.100.0") + 1 + i % 250,) if i < 250 else (ip(f"2001:db8::{i:x}"),)
        svcs.append(Service("ns", f"s{i:04d}", traffic_policy=TrafficPolicy.LOCAL if local else TrafficPolicy.CLUSTER,
                            vips=held))
        slices.append(EndpointSlice("ns", f"s{i:04d}-x", f"s{i:04d}",
                                    frozenset(f"node-{(i + k) % 10:03d}" for k in range(3))))
    pools = (Pool("lan", (parse_range("198.51.100.0/24"), parse_range("2001:db8::/112")), interface="eth0"),)
    return DesiredState(nodes=node_list, services=tuple(svcs), endpoint_slices=tuple(slices), pools=pools)


def test_an_endpoint_slice_change_replaces_only_its_service() -> None:
    state = cluster(400)
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    slices = list(state.endpoint_slices)
    slices[10] = attrs.evolve(slices[10], ready_nodes=frozenset({"node-040", "node-041"}))
    changed = attrs.evolve(state, endpoint_slices=tuple(slices))
    assert resolver.update(changed) == resolve(changed, allocate=False)
    assert resolver.stats is not None
    assert resolver.stats.services == 1 and not resolver.stats.full_allocation and not resolver.stats.rebuilt
    assert resolver.stats.groups == 2  # the group it left and the one it joined


def test_a_node_going_not_ready_moves_cluster_services_as_one_block() -> None:
    state = cluster(400)
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    nodes = list(state.nodes)
    nodes[30] = attrs.evolve(nodes[30], ready=False)  # no Local Service has an endpoint there
    changed = attrs.evolve(state, nodes=tuple(nodes))
    assert resolver.update(changed) == resolve(changed, allocate=False)
    assert resolver.stats is not None
    assert resolver.stats.services == 0 and resolver.stats.groups == 2

    nodes[3] = attrs.evolve(nodes[3], ready=False)  # Local Services with an endpoint there re-place
    again = attrs.evolve(changed, nodes=tuple(nodes))
    assert resolver.update(again) == resolve(again, allocate=False)
    assert resolver.stats is not None
    assert 0 < resolver.stats.services < 100


def test_a_new_service_with_its_own_address_allocates_alone() -> None:
    state = cluster(400)
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    extra = Service("ns", "zzz", vips=(ip("2001:db8::ffff"),))
    changed = attrs.evolve(state, services=state.services + (extra,))
    assert resolver.update(changed) == resolve(changed, allocate=False)
    assert resolver.stats is not None and not resolver.stats.full_allocation and resolver.stats.services == 1

    # Asking for an address another Service holds couples them: allocation runs for all.
    thief = Service("ns", "aaa", requested_ips=(ip("198.51.100.1"),))
    clash = attrs.evolve(changed, services=(thief,) + changed.services)
    assert resolver.update(clash) == resolve(clash, allocate=False)
    assert resolver.stats is not None and resolver.stats.full_allocation


def test_an_unchanged_state_recomputes_nothing() -> None:
    state = cluster(100)
    resolver = IncrementalResolver(allocate=False)
    first = resolver.update(state)
    assert resolver.update(state) is first
    assert resolver.stats is not None and resolver.stats.services == 0 and resolver.stats.groups == 0


def test_an_endpoint_slice_listed_twice_is_resolved_as_resolve_does() -> None:
    state = cluster(20)
    twice = attrs.evolve(state, endpoint_slices=state.endpoint_slices + (
        attrs.evolve(state.endpoint_slices[0], ready_nodes=frozenset({"node-040"})),))
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    assert resolver.update(twice) == resolve(twice, allocate=False)
    assert resolver.update(state) == resolve(state, allocate=False)
    assert resolver.stats is not None and resolver.stats.rebuilt


# -- the resolver's newer rules: what they force ---------------------------------


def test_a_node_address_entering_a_pool_refuses_it_and_reallocates_for_all() -> None:
    state = cluster(100)
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    nodes = list(state.nodes)
    nodes[7] = attrs.evolve(nodes[7], addresses=(ip("198.51.100.200"),))
    inside = attrs.evolve(state, nodes=tuple(nodes))
    result = resolver.update(inside)
    assert result == resolve(inside, allocate=False)
    assert not result.groups and all("is refused" in u.reason for u in result.unresolved)
    assert resolver.stats is not None and resolver.stats.full_allocation

    # Readiness alone reads no address: no refusal can flip, allocation does not run.
    nodes[8] = attrs.evolve(nodes[8], ready=False)
    not_ready = attrs.evolve(inside, nodes=tuple(nodes))
    assert resolver.update(not_ready) == resolve(not_ready, allocate=False)
    assert resolver.stats is not None and not resolver.stats.full_allocation

    nodes[7] = attrs.evolve(nodes[7], addresses=(ip("203.0.113.7"),))
    outside = attrs.evolve(not_ready, nodes=tuple(nodes))
    assert resolver.update(outside) == resolve(outside, allocate=False)
    assert resolver.update(outside).groups


def test_the_first_node_in_a_refused_pool_names_it_whatever_the_order() -> None:
    state = cluster(10, nodes=3)
    nodes = tuple(attrs.evolve(n, addresses=(ip(f"198.51.100.{250 + i}"),)) for i, n in enumerate(state.nodes))
    resolver = IncrementalResolver(allocate=False)
    for order in (nodes, nodes[::-1], nodes):
        moved = attrs.evolve(state, nodes=order)
        assert resolver.update(moved) == resolve(moved, allocate=False)


def test_overlapping_pools_are_refused_without_nodes() -> None:
    pools = (Pool("a", (parse_range("198.51.100.0/24"),), interface="eth0", default=True),
             Pool("b", (parse_range("198.51.100.128/25"),), interface="eth0"))
    state = DesiredState(services=(Service("ns", "x", pool="b", vips=(ip("198.51.100.130"),)),), pools=pools)
    result = IncrementalResolver(allocate=False).update(state)
    assert result == resolve(state, allocate=False) and result.unresolved


def test_a_new_service_renumbers_its_interface_only_where_vrids_are_derived() -> None:
    state = cluster(100)
    extra = Service("ns", "zzz", vips=(ip("2001:db8::ffff"),))
    grown = attrs.evolve(state, services=state.services + (extra,))

    # Derived VRIDs hang on the slots every Service on the interface deals: the interface is renumbered.
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    assert resolver.update(grown) == resolve(grown, allocate=False)
    assert resolver.stats is not None and resolver.stats.interfaces == 1 and resolver.stats.services == 1

    # Every group keeps its persisted VRID: slots are not read, nothing is renumbered.
    persisted = {g.name: g.vrid for g in resolve(state, allocate=False).groups if g.vrid is not None}
    state = attrs.evolve(state, vrids=persisted)
    grown = attrs.evolve(grown, vrids=persisted)
    resolver = IncrementalResolver(allocate=False)
    resolver.update(state)
    assert resolver.update(grown) == resolve(grown, allocate=False)
    assert resolver.stats is not None and resolver.stats.interfaces == 0


def test_a_renamed_group_inherits_its_predecessors_vrid() -> None:
    state = cluster(40)
    first = resolve(state, allocate=False)
    persisted = {g.name: g.vrid for g in first.groups if g.vrid is not None}
    lineage = {g.name: g.services for g in first.groups}
    state = attrs.evolve(state, vrids=persisted, lineage=lineage)
    resolver = IncrementalResolver(allocate=False)
    assert resolver.update(state) == resolve(state, allocate=False)
    nodes = list(state.nodes)
    nodes[0] = attrs.evolve(nodes[0], ready=False)  # every Cluster Service's group is renamed
    renamed = attrs.evolve(state, nodes=tuple(nodes))
    result = resolver.update(renamed)
    assert result == resolve(renamed, allocate=False)
    block = next(g for g in first.groups if len(g.nodes) == len(nodes))
    assert any(g.vrid == block.vrid and g.services == block.services and g.name != block.name
               for g in result.groups)


def test_quarantined_addresses_are_not_given_out_fresh() -> None:
    pools = (Pool("lan", (parse_range("198.51.100.1-198.51.100.4"),), interface="eth0"),)
    services = tuple(Service("ns", f"s{i}") for i in range(3))
    state = DesiredState(nodes=(Node("n1"),), services=services, pools=pools)
    resolver = IncrementalResolver(allocate=True)
    twice = (ip("198.51.100.1"), ip("198.51.100.2"), ip("198.51.100.2"))  # a refusal counts repeats too
    for quarantined in ((), twice[:2], twice, (ip("198.51.100.3"),), ()):
        assert resolver.update(state, quarantined=quarantined) == resolve(state, quarantined=quarantined)
        assert resolver.stats is not None
    tight = tuple(ip(f"198.51.100.{i}") for i in (1, 2))
    assert resolver.update(state, quarantined=tight) == resolve(state, quarantined=tight)
    assert resolver.stats is not None and resolver.stats.full_allocation
