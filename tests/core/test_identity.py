"""A group's identity across renames: VRIDs follow Services, not node lists.

Every membership change renames groups (the name hashes the node list). The
VRID, the router and the Events must not follow the name.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.core.model import DesiredState, EndpointSlice, Node, Pool, Resolution, Service, TrafficPolicy, VipGroup
from vipcore.core.objects import parse_range
from vipcore.core.objects import vipgroup_spec as group_spec
from vipcore.core.plan import GROUP_ASSIGNED, HOLDER_CHANGED, holder_notes, plan
from vipcore.core.resolve import membership, membership_changes, resolve

ip = ipaddress.ip_address
NAMES = tuple(f"node-{c}" for c in "abcdef")
POOLS = (
    # Node addresses (198.51.100.10+) stay out of the pool: a pool holding them is refused.
    Pool(name="lan", ranges=(parse_range("198.51.100.128/25"),), interface="eth0", default=True),
    Pool(name="dmz", ranges=(parse_range("203.0.113.0/24"),), interface="eth1"),
)


def node(name: str, *, ready: bool = True) -> Node:
    return Node(name=name, addresses=(ip(f"198.51.100.{10 + NAMES.index(name)}"),), ready=ready)


def cluster(services: int = 3, local: int = 3) -> tuple[Service, ...]:
    found = [Service(namespace="default", name=f"web{i}") for i in range(services)]
    found += [Service(namespace="shop", name=f"cart{i}", traffic_policy=TrafficPolicy.LOCAL,
                      pool="dmz" if i % 2 else None) for i in range(local)]
    return tuple(found)


def slices(endpoints: dict[str, frozenset[str]]) -> tuple[EndpointSlice, ...]:
    return tuple(EndpointSlice(namespace=key.split("/")[0], name=key.split("/")[1] + "-x",
                               service=key.split("/")[1], ready_nodes=frozenset(nodes))
                 for key, nodes in sorted(endpoints.items()))


def persisted(resolution: Resolution) -> dict[str, object]:
    """What the controller keeps in its VipGroups: VRIDs and Services by group name."""
    return {"vrids": {g.name: g.vrid for g in resolution.groups if g.vrid is not None},
            "lineage": {g.name: g.services for g in resolution.groups}}


def check_step(before: Resolution, after: Resolution) -> None:
    """No VRID collision; a group whose Services did not change keeps its VRID."""
    seen: dict[tuple[str, int], str] = {}
    for group in after.groups:
        assert group.vrid is not None
        assert (group.interface, group.vrid) not in seen, f"VRID {group.vrid} twice on {group.interface}"
        seen[(group.interface, group.vrid)] = group.name
    old = {(g.interface, g.services): g for g in before.groups}
    for group in after.groups:
        same = old.get((group.interface, group.services))
        if same is not None:
            assert group.vrid == same.vrid, f"{group.services} renamed {same.name[:8]}->{group.name[:8]} " \
                                            f"changed VRID {same.vrid}->{group.vrid}"


# -- the reported case ------------------------------------------------------------


def test_non_holder_not_ready_renames_but_keeps_the_vrid() -> None:
    services = (Service(namespace="default", name="web"),)
    state = DesiredState(nodes=tuple(node(n) for n in NAMES[:3]), services=services, pools=POOLS)
    (before,) = resolve(state).groups
    flapped = DesiredState(nodes=(node("node-a"), node("node-b"), node("node-c", ready=False)),
                           services=services, pools=POOLS)
    (during,) = resolve(flapped).groups
    assert during.name != before.name
    assert during.vrid == before.vrid
    (after,) = resolve(state).groups
    assert after == before


def test_a_renamed_group_inherits_its_predecessors_persisted_vrid() -> None:
    # The controller persisted VRID 190 (say, from an older release) for the group of web and api.
    services = (Service(namespace="default", name="web"), Service(namespace="default", name="api"))
    state = DesiredState(nodes=tuple(node(n) for n in NAMES[:3]), services=services, pools=POOLS)
    (first,) = resolve(state).groups
    assert first.vrid != 190
    grown = DesiredState(nodes=tuple(node(n) for n in NAMES[:4]), services=services, pools=POOLS,
                         vrids={first.name: 190}, lineage={first.name: first.services})
    (renamed,) = resolve(grown).groups
    assert renamed.name != first.name and renamed.vrid == 190


def test_inheritance_goes_to_the_successor_sharing_the_most_services() -> None:
    services = cluster(services=3, local=0)
    state = DesiredState(nodes=tuple(node(n) for n in NAMES[:3]), services=services, pools=POOLS)
    (only,) = resolve(state).groups
    # A predecessor that still exists keeps its own VRID; nobody inherits it twice.
    again = DesiredState(nodes=state.nodes, services=services, pools=POOLS,
                         vrids={only.name: 77}, lineage={only.name: only.services})
    assert resolve(again).groups[0].vrid == 77


def test_derived_vrids_do_not_depend_on_input_order() -> None:
    rng = random.Random(5)
    services = list(cluster(6, 6))
    endpoints = {s.key: frozenset(rng.sample(NAMES, 2)) for s in services if s.traffic_policy is TrafficPolicy.LOCAL}
    nodes = [node(n) for n in NAMES]
    one = resolve(DesiredState(nodes=tuple(nodes), services=tuple(services), endpoint_slices=slices(endpoints),
                               pools=POOLS))
    rng.shuffle(services)
    rng.shuffle(nodes)
    two = resolve(DesiredState(nodes=tuple(nodes), services=tuple(services), endpoint_slices=slices(endpoints),
                               pools=POOLS))
    assert one.groups == two.groups


# -- the property -------------------------------------------------------------------

CHANGES = st.lists(
    st.tuples(st.sampled_from(["ready", "join", "leave", "endpoints"]), st.integers(0, 5),
              st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)),
    min_size=1, max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(changes=CHANGES, services=st.integers(1, 4), local=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_membership_changes_never_move_a_vrid_nor_collide(
    changes: Sequence[tuple[str, int, list[str]]], services: int, local: int, seed: int
) -> None:
    """For any sequence of membership changes, manifest mode (no state) and controller mode (persisted)."""
    rng = random.Random(seed)
    svcs = cluster(services, local)
    members = {n: node(n) for n in NAMES[:3]}
    endpoints = {s.key: frozenset(rng.sample(NAMES, 2)) for s in svcs if s.traffic_policy is TrafficPolicy.LOCAL}

    def state(**kw: object) -> DesiredState:
        return DesiredState(nodes=tuple(members.values()), services=svcs, endpoint_slices=slices(endpoints),
                            pools=POOLS, **kw)  # type: ignore[arg-type]

    stateless = resolve(state())
    stateful = stateless
    for kind, index, names in changes:
        name = NAMES[index]
        if kind == "ready" and name in members:
            members[name] = node(name, ready=not members[name].ready)
        elif kind == "join":
            members[name] = node(name)
        elif kind == "leave" and len(members) > 1:
            members.pop(name, None)
        elif kind == "endpoints" and endpoints:
            key = sorted(endpoints)[index % len(endpoints)]
            endpoints[key] = frozenset(names)
        after = resolve(state())
        check_step(stateless, after)
        stateless = after
        after = resolve(state(**persisted(stateful)))
        check_step(stateful, after)
        stateful = after


# -- dispatch: a rename is an update ----------------------------------------------------


def test_a_rename_is_dispatched_as_an_update_of_the_same_router() -> None:
    services = (Service(namespace="default", name="web"),)
    three = DesiredState(nodes=tuple(node(n) for n in NAMES[:3]), services=services, pools=POOLS)
    four = DesiredState(nodes=tuple(node(n) for n in NAMES[:4]), services=services, pools=POOLS)
    (old_group,) = resolve(three).groups
    (new_group,) = resolve(four).groups
    old = {old_group.name: membership(old_group, "node-a", three.nodes)}
    new = {new_group.name: membership(new_group, "node-a", four.nodes)}
    changes = membership_changes(old, new)
    assert changes.leaves == () and changes.joins == ()
    assert changes.updates == ((old[old_group.name], new[new_group.name]),)
    # Nothing changed: nothing to dispatch.
    assert membership_changes(new, new).updates == ()


def test_different_routers_are_not_paired() -> None:
    a = VipGroup(name="a" * 64 + "-eth0", interface="eth0", nodes=("node-a",), vrid=5, services=("default/a",))
    b = VipGroup(name="b" * 64 + "-eth0", interface="eth0", nodes=("node-a", "node-b"), vrid=6,
                 services=("default/a",))
    nodes = tuple(node(n) for n in NAMES[:2])
    old = {a.name: membership(a, "node-a", nodes)}
    new = {b.name: membership(b, "node-a", nodes)}
    changes = membership_changes(old, new)
    assert changes.leaves == (old[a.name],) and changes.joins == (new[b.name],) and changes.updates == ()


# -- the controller: persisted inheritance, no Event spam --------------------------------


def _service(name: str, ip: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": "7",
                         "finalizers": ["vipcore.io/vip"]},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "externalTrafficPolicy": "Cluster",
                     "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


def _vipgroup(group: VipGroup, holder: str | None) -> dict[str, object]:
    obj: dict[str, object] = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
                              "metadata": {"name": group.name, "resourceVersion": "3"}, "spec": group_spec(group)}
    if holder:
        obj["status"] = {"holders": {"ipv4": {"node": holder}}}
    return obj


def test_controller_persists_the_inherited_vrid_and_a_rename_is_no_event() -> None:
    three = tuple(node(n) for n in NAMES[:3])
    services = [_service("web", "198.51.100.100")]
    first = plan(services, nodes=three, endpoint_slices=(), pools=POOLS, vipgroups=())
    (group,) = first.resolution.groups
    legacy = VipGroup(name=group.name, interface=group.interface, nodes=group.nodes, vrid=190,
                      vips_v4=group.vips_v4, services=group.services)
    holder = membership(legacy, legacy.nodes[0], three).preferred_holder
    other = next(n for n in NAMES[:3] if n != holder)
    flapped = tuple(node(n.name, ready=n.name != other) for n in three)

    renamed = plan(services, nodes=flapped, endpoint_slices=(), pools=POOLS, vipgroups=(_vipgroup(legacy, holder),))
    (write,) = renamed.groups
    assert write.create and write.name != legacy.name and write.spec["vrid"] == 190
    assert renamed.deletes == (legacy.name,)
    assert [n for n in renamed.notes if n.reason == GROUP_ASSIGNED] == []

    # The holder goes NotReady: the group moves, and that is worth an Event.
    gone = tuple(node(n.name, ready=n.name != holder) for n in three)
    moved = plan(services, nodes=gone, endpoint_slices=(), pools=POOLS, vipgroups=(_vipgroup(legacy, holder),))
    assert [n.name for n in moved.notes if n.reason == GROUP_ASSIGNED] == ["web"]


def test_holder_events_follow_services_across_renames() -> None:
    old = VipGroup(name="a" * 64 + "-eth0", interface="eth0", nodes=NAMES[:3], vrid=9,
                   vips_v4=(ipaddress.IPv4Address("198.51.100.100"),), services=("default/web",))
    new = VipGroup(name="b" * 64 + "-eth0", interface="eth0", nodes=NAMES[:2], vrid=9,
                   vips_v4=old.vips_v4, services=old.services)
    holders, notes = holder_notes({}, [_vipgroup(old, "node-a")])
    assert [n.reason for n in notes] == [HOLDER_CHANGED]
    # Renamed: the new VipGroup has no holder yet, then the same one. No Event.
    holders, notes = holder_notes(holders, [_vipgroup(new, None)])
    assert notes == []
    holders, notes = holder_notes(holders, [_vipgroup(old, "node-a"), _vipgroup(new, "node-a")])
    assert notes == []
    holders, notes = holder_notes(holders, [_vipgroup(new, "node-b")])
    assert [n.message for n in notes] == ["node node-b holds 198.51.100.100 (IPv4) (was node-a)"]


def test_more_services_than_vrids_still_never_collide() -> None:
    """No slots when Services outnumber usable VRIDs: groups probe, the surplus fails with a message."""
    from vipcore.core.model import VridPolicy

    services = tuple(Service(namespace="shop", name=f"cart{i}", traffic_policy=TrafficPolicy.LOCAL)
                     for i in range(6))
    endpoints = {s.key: frozenset(NAMES[:i + 1]) for i, s in enumerate(services)}
    state = DesiredState(nodes=tuple(node(n) for n in NAMES), services=services,
                         endpoint_slices=slices(endpoints), pools=POOLS)
    resolution = resolve(state, vrid_policy=VridPolicy(first=1, last=4))
    vrids = [g.vrid for g in resolution.groups]
    assert len(vrids) == 4 and len(set(vrids)) == 4
    assert len(resolution.unresolved) == 2
    assert all(u.reason.startswith("no free VRID for group ") for u in resolution.unresolved)
    assert resolve(state, vrid_policy=VridPolicy(first=1, last=4)) == resolution
