"""The heart of the core: desired state in, VIP groups out. Pure functions.

``resolve`` turns Nodes, Services, EndpointSlices and pools into groups:
Services with the same node list and interface share a group; each group
gets a VRID unique on its interface. Nothing here does I/O.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import operator
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import cast

import attrs

from vipcore.core import ipam, placement
from vipcore.core.model import (
    DesiredState,
    IPAddress,
    Membership,
    Node,
    PeerNode,
    Pool,
    Resolution,
    Service,
    TrafficPolicy,
    Unresolved,
    VipGroup,
    VridPolicy,
)
from vipcore.core.vrid import allocate_vrids


def group_name(nodes: Iterable[str], interface: str) -> str:
    """OpenELB's group name: ``sha256(",".join(sorted(nodes))).hexdigest() + "-" + interface``."""
    joined = ",".join(sorted(nodes))
    return hashlib.sha256(joined.encode()).hexdigest() + "-" + interface


def node_eligible(node: Node, pool: Pool) -> bool:
    """Ready, not excluded from external load balancers, matching the pool's selector."""
    if not node.ready or node.excluded:
        return False
    return all(node.labels.get(k) == v for k, v in pool.node_selector.items())


def choose_pool(service: Service, pools: Mapping[str, Pool]) -> Pool | str:
    """The Service's pool, or the reason it has none (see :func:`vipcore.core.ipam.choose_pool`)."""
    return ipam.choose_pool(service, pools)


#: Why a ``Local`` Service without a ready endpoint has no group (Kubernetes' own state, not a failure).
NO_READY_ENDPOINT = "externalTrafficPolicy Local: the Service has no ready endpoint"


def place(
    service: Service, pool: Pool, candidates: frozenset[str], with_endpoints: Iterable[str]
) -> frozenset[str] | str:
    """The nodes that may hold ``service``'s addresses, or why there are none.

    ``candidates``: the pool's eligible nodes (:func:`node_eligible`);
    ``with_endpoints``: the nodes with a ready endpoint of the Service (read
    only for ``Local`` Services).
    """
    if service.traffic_policy is TrafficPolicy.LOCAL:
        with_endpoints = frozenset(with_endpoints)
        node_set = frozenset(n for n in with_endpoints if n in candidates)
        if not node_set:
            return ("externalTrafficPolicy Local: no eligible node has a ready endpoint"
                    if with_endpoints else NO_READY_ENDPOINT)
        return node_set
    if not candidates:
        return f"no eligible node (Ready, not excluded, matching pool {pool.name!r})"
    return candidates


def address_order(ip: IPAddress) -> tuple[int, int]:
    """How a group lists its addresses: IPv4 first, then by value."""
    return (ip.version, int(ip))


def make_group(
    name: str,
    interface: str,
    nodes: Iterable[str],
    vrid: int | None,
    addresses: Iterable[IPAddress],
    services: Iterable[str],
) -> VipGroup:
    """A group from its parts; ``addresses`` and ``services`` already sorted (:func:`address_order`) and unique."""
    addrs = tuple(addresses)
    # Sorted IPv4 first: one bisection splits the families (groups can hold tens of thousands of VIPs).
    split = bisect.bisect_left(addrs, 6, key=lambda ip: ip.version)
    return VipGroup(
        name=name,
        interface=interface,
        nodes=tuple(nodes),
        vrid=vrid,
        vips_v4=cast("tuple[ipaddress.IPv4Address, ...]", addrs[:split]),
        vips_v6=cast("tuple[ipaddress.IPv6Address, ...]", addrs[split:]),
        services=tuple(services),
    )


def resolve(
    state: DesiredState,
    *,
    vrid_policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
    allocate: bool = True,
    quarantined: Collection[IPAddress] = (),
) -> Resolution:
    """Resolve ``state`` into groups.

    ``allocate``: allocate fresh addresses from pools (manifest source,
    controller). When False (agent reading a cluster) only addresses already
    in the Services' status are used; ``quarantined`` addresses are not
    given out fresh (:func:`vipcore.core.ipam.allocate`). VRIDs persisted in ``state.vrids`` are
    kept; a renamed group inherits its predecessor's (``state.lineage``), or
    else derives one from its first Service (see :mod:`vipcore.core.vrid`).
    Services that get no group are listed in ``unresolved`` with why.
    """
    pools = {p.name: p for p in state.pools}
    unresolved: dict[str, str] = {}

    # (key, Service, pool): Service.key is computed, and read several times a Service below.
    chosen: list[tuple[str, Service, Pool]] = []
    choose = ipam.PoolChooser(pools)
    for service in state.services:
        pool = choose(service)
        if isinstance(pool, str):
            unresolved[service.key] = pool
        else:
            chosen.append((service.key, service, pool))

    refused_pools = ipam.pool_conflicts(state.pools, state.nodes)
    allocation = ipam.allocate(((s, p) for _, s, p in chosen), allocate_new=allocate, quarantined=quarantined,
                               refused_pools=refused_pools)
    unresolved.update(allocation.refused)

    ready_by_service: dict[str, set[str]] = {}
    for eps in state.endpoint_slices:
        ready_by_service.setdefault(eps.service_key, set()).update(eps.ready_nodes)

    eligible_cache: dict[str, frozenset[str]] = {}

    def eligible(pool: Pool) -> frozenset[str]:
        if pool.name not in eligible_cache:
            eligible_cache[pool.name] = frozenset(
                n.name for n in state.nodes if node_eligible(n, pool)
            )
        return eligible_cache[pool.name]

    members: dict[tuple[frozenset[str], str], list[str]] = {}
    vips: dict[tuple[frozenset[str], str], list[IPAddress]] = {}
    for key, service, pool in chosen:
        addresses = allocation.addresses.get(key)
        if not addresses or key in unresolved:
            continue
        node_set = place(service, pool, eligible(pool), ready_by_service.get(key, ()))
        if isinstance(node_set, str):
            unresolved[key] = node_set
            continue
        group_key = (node_set, pool.interface)
        members.setdefault(group_key, []).append(key)
        vips.setdefault(group_key, []).extend(addresses)

    names = {group_key: group_name(*group_key) for group_key in members}
    # Every Service that may form a group on an interface, whatever its nodes:
    # derived VRIDs must not move when membership does.
    anchors: dict[str, list[str]] = {}
    for key, _, pool in chosen:
        anchors.setdefault(pool.interface, []).append(key)
    assignment = allocate_vrids(
        ((names[group_key], group_key[1]) for group_key in members),
        policy=vrid_policy,
        persisted=state.vrids,
        services={names[group_key]: keys for group_key, keys in members.items()},
        lineage=state.lineage,
        anchors=anchors,
    )
    groups = []
    for group_key, keys in members.items():
        name = names[group_key]
        if name in assignment.failed:
            for service_key in keys:
                unresolved[service_key] = assignment.failed[name]
            continue
        held = vips[group_key]
        groups.append(make_group(
            name, group_key[1], group_key[0], assignment.vrids[name],
            sorted(set(held), key=address_order) if len(held) > 1 else held, sorted(keys)))
    groups.sort(key=lambda g: g.name)
    return Resolution(
        groups=tuple(groups),
        unresolved=tuple(Unresolved(k, v) for k, v in sorted(unresolved.items())),
        allocations={k: v for k, v in allocation.addresses.items() if k not in unresolved},
        addresses=dict(allocation.addresses),
    )


#: Most members a group may gain or lose for :func:`membership` to edit its previous membership
#: rather than recompute it (each edit is a bisection and a list move; a bigger change is a new ranking).
EDITS = 16


def membership(
    group: VipGroup,
    node: str,
    nodes: Mapping[str, Node] | Iterable[Node],
    *,
    previous: Membership | None = None,
    drained: set[str] | frozenset[str] | None = None,
    moved: tuple[set[str], set[str]] | None = None,
) -> Membership:
    """This node's part in ``group``: its priority and every member in placement order.

    Drained nodes (label ``vipcore.io/drain=true``) keep their membership (the
    group name and VRID do not change) but rank after every other node.

    ``previous``: this node's membership of an earlier version of the group (same placement key),
    computed when every member the two versions share had the Node it has in ``nodes`` now (the
    caller knows none of them changed). When the group gained or lost a few members, that
    membership is edited (each node moved in by one bisection, the members past the ranks that get
    a priority of their own reused) instead of re-ranked: a Node flip in a 5,000-member group costs
    what it changes. The result is the same as without ``previous``.
    ``drained``: the names of the drained Nodes, if the caller keeps them (a superset is fine): spares
    reading every member's labels.
    ``moved``: the members ``previous``'s group lost and ``group`` gained (removed, added), if the
    caller found them already (a set difference of 5,000 names, not done twice).
    """
    by_name = nodes if isinstance(nodes, Mapping) else {n.name: n for n in nodes}
    if node not in group.nodes:
        raise ValueError(f"node {node!r} is not a member of group {group.name}")
    if drained is None:
        held = {n for n in group.nodes if n in by_name and by_name[n].drained}
    else:
        held = set(drained.intersection(group.nodes)) if drained else set()
    if previous is not None and previous.group.placement_key == group.placement_key:
        edited = _edited(previous, group, node, by_name, held, moved)
        if edited is not None:
            return edited
    order = placement.rank(group.placement_key, [n for n in group.nodes if n not in held])
    order += placement.rank(group.placement_key, held)
    prios = {n: placement.rank_priority(i, len(order)) for i, n in enumerate(order)}
    for n in held:
        prios[n] = placement.BOTTOM_PRIORITY
    members = tuple(
        PeerNode(name=n, priority=prios[n], addresses=by_name[n].addresses if n in by_name else ())
        for n in order
    )
    return Membership(group=group, node=node, priority=prios[node], members=members)


_NAME = operator.attrgetter("name")


def node_changes(before: Iterable[str], after: Iterable[str]) -> tuple[set[str], set[str]]:
    """The names ``before`` has and ``after`` has not, and those ``after`` gained (set speed)."""
    old = set(before)
    changed = old.symmetric_difference(after)
    return changed & old, changed - old


def _first_bottom(count: int, ranked: int) -> int:
    """The first index from which every member of ``count`` (``ranked`` of them not drained) has
    :data:`placement.BOTTOM_PRIORITY`."""
    step = max(1, min(placement.PRIORITY_STEP,
                      (placement.TOP_PRIORITY - placement.BOTTOM_PRIORITY) // max(1, count - 1)))
    return min(ranked, -(-(placement.TOP_PRIORITY - placement.BOTTOM_PRIORITY) // step))


def _edited(previous: Membership, group: VipGroup, node: str, by_name: Mapping[str, Node],
            held: set[str], moved: tuple[set[str], set[str]] | None = None) -> Membership | None:
    """``previous`` edited into ``group``'s membership (see :func:`membership`), or None when the
    group changed too much for an edit to pay."""
    removed, added = moved if moved is not None else node_changes(previous.group.nodes, group.nodes)
    if len(removed) + len(added) > EDITS:
        return None
    key = group.placement_key
    names: list[str] = list(map(_NAME, previous.members))
    peers = list(previous.members)
    # Drained members rank after the others; the previous drained ones are those drained now (a
    # member that stays kept its Node, one that left is looked up as it was: it is in ``by_name``
    # unless deleted, and a deleted Node's change reached the caller).
    was_held = held | {n for n in removed if n in by_name and by_name[n].drained}
    # The drained members of the previous group: those held now that stayed, and the removed ones.
    ranked = len(names) - len({n for n in held if n not in added} | (was_held & removed))
    old_bottom = _first_bottom(len(names), ranked)
    for n in removed:
        i = names.index(n)
        del names[i], peers[i]
        if i < ranked:
            ranked -= 1
    for n in sorted(added):
        if n in held:
            i = placement.position(key, names, n, ranked)
        else:
            i = placement.position(key, names, n, 0, ranked)
            ranked += 1
        names.insert(i, n)
        peers.insert(i, PeerNode(name=n, priority=placement.BOTTOM_PRIORITY,
                                 addresses=by_name[n].addresses if n in by_name else ()))
    count = len(names)
    # Past ``fixed`` every member had the bottom priority before and has it now: kept as it was.
    fixed = min(count, max(old_bottom + len(added), _first_bottom(count, ranked)))
    top, bottom = placement.TOP_PRIORITY, placement.BOTTOM_PRIORITY
    step = max(1, min(placement.PRIORITY_STEP, (top - bottom) // max(1, count - 1)))  # as rank_priority
    for i in range(fixed):
        want = max(bottom, top - i * step) if i < ranked else bottom
        peer = peers[i]
        if peer.priority != want:
            peers[i] = PeerNode(name=peer.name, priority=want, addresses=peer.addresses)
    mine = peers[names.index(node)].priority
    return Membership(group=group, node=node, priority=mine, members=tuple(peers))


@attrs.frozen
class MembershipChanges:
    """What the agent dispatches to go from one set of memberships to the next."""

    #: Memberships to leave (gone, and no successor took over their router).
    leaves: tuple[Membership, ...] = ()
    #: New memberships without a predecessor.
    joins: tuple[Membership, ...] = ()
    #: (old, new) pairs: the same group changed, or a renamed group that keeps
    #: its router (same interface and VRID). ``old.name != new.name`` is a rename.
    updates: tuple[tuple[Membership, Membership], ...] = ()


def membership_changes(current: Mapping[str, Membership], desired: Mapping[str, Membership]) -> MembershipChanges:
    """Pair ``current`` and ``desired`` memberships by name, then renames by router.

    A group renamed by a membership change keeps its VRID (see
    :mod:`vipcore.core.vrid`); on this node it is the same router, so it is an
    update of the old membership, not a leave and a join (which would cost an
    election). Unchanged memberships appear nowhere.
    """
    gone = {name: m for name, m in current.items() if name not in desired}
    by_router = {(m.group.interface, m.group.vrid): m for m in gone.values() if m.group.vrid is not None}
    joins: list[Membership] = []
    updates: list[tuple[Membership, Membership]] = []
    for name in sorted(desired):
        new = desired[name]
        old = current.get(name)
        if old is None and new.group.vrid is not None:
            old = by_router.pop((new.group.interface, new.group.vrid), None)
            if old is not None:
                del gone[old.name]
        if old is None:
            joins.append(new)
        elif old != new:
            updates.append((old, new))
    return MembershipChanges(
        leaves=tuple(gone[name] for name in sorted(gone)), joins=tuple(joins), updates=tuple(updates)
    )
