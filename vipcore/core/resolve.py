"""The heart of the core: desired state in, VIP groups out. Pure functions.

``resolve`` turns Nodes, Services, EndpointSlices and pools into groups:
Services with the same node list and interface share a group; each group
gets a VRID unique on its interface. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping

from vipcore.core import ipam, placement
from vipcore.core.model import (
    DesiredState,
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
    """The Service's pool, or the reason it has none.

    By annotation; else the pool marked default (the first by name if several);
    else the only pool.
    """
    if service.pool is not None:
        pool = pools.get(service.pool)
        if pool is None:
            return f"pool {service.pool!r} does not exist"
    else:
        defaults = sorted(name for name, p in pools.items() if p.default and not p.disabled)
        if defaults:
            pool = pools[defaults[0]]
        elif len(pools) == 1:
            pool = next(iter(pools.values()))
        elif not pools:
            return "no pool is defined"
        else:
            return "no pool is marked default and the Service names none (annotation vipcore.io/pool)"
    if pool.disabled:
        return f"pool {pool.name!r} is disabled"
    if pool.namespaces and service.namespace not in pool.namespaces:
        return f"pool {pool.name!r} does not serve namespace {service.namespace!r}"
    return pool


def resolve(
    state: DesiredState,
    *,
    vrid_policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
    allocate: bool = True,
) -> Resolution:
    """Resolve ``state`` into groups.

    ``allocate``: allocate fresh addresses from pools (manifest source,
    controller). When False (agent reading a cluster) only addresses already
    in the Services' status are used. VRIDs persisted in ``state.vrids`` are
    kept. Services that get no group are listed in ``unresolved`` with why.
    """
    pools = {p.name: p for p in state.pools}
    unresolved: dict[str, str] = {}

    chosen: list[tuple[Service, Pool]] = []
    for service in state.services:
        pool = choose_pool(service, pools)
        if isinstance(pool, str):
            unresolved[service.key] = pool
        else:
            chosen.append((service, pool))

    refused_pools = ipam.pool_conflicts(state.pools, state.nodes)
    allocation = ipam.allocate(chosen, allocate_new=allocate, refused_pools=refused_pools)
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

    members: dict[tuple[frozenset[str], str], list[Service]] = {}
    vips: dict[tuple[frozenset[str], str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    for service, pool in chosen:
        addresses = allocation.addresses.get(service.key)
        if service.key in unresolved or not addresses:
            continue
        candidates = eligible(pool)
        if service.traffic_policy is TrafficPolicy.LOCAL:
            with_endpoints = ready_by_service.get(service.key, set())
            node_set = frozenset(n for n in with_endpoints if n in candidates)
            if not node_set:
                unresolved[service.key] = (
                    "externalTrafficPolicy Local: no eligible node has a ready endpoint"
                    if with_endpoints else "externalTrafficPolicy Local: the Service has no ready endpoint"
                )
                continue
        else:
            node_set = candidates
            if not node_set:
                unresolved[service.key] = f"no eligible node (Ready, not excluded, matching pool {pool.name!r})"
                continue
        key = (node_set, pool.interface)
        members.setdefault(key, []).append(service)
        vips.setdefault(key, []).extend(addresses)

    names = {key: group_name(key[0], key[1]) for key in members}
    assignment = allocate_vrids(
        ((names[key], key[1]) for key in members), policy=vrid_policy, persisted=state.vrids
    )
    groups = []
    for key, services in members.items():
        name = names[key]
        if name in assignment.failed:
            for service in services:
                unresolved[service.key] = assignment.failed[name]
            continue
        addrs = sorted(set(vips[key]), key=lambda ip: (ip.version, int(ip)))
        groups.append(
            VipGroup(
                name=name,
                interface=key[1],
                nodes=tuple(key[0]),
                vrid=assignment.vrids[name],
                vips_v4=tuple(ip for ip in addrs if isinstance(ip, ipaddress.IPv4Address)),
                vips_v6=tuple(ip for ip in addrs if isinstance(ip, ipaddress.IPv6Address)),
                services=tuple(sorted(s.key for s in services)),
            )
        )
    groups.sort(key=lambda g: g.name)
    return Resolution(
        groups=tuple(groups),
        unresolved=tuple(Unresolved(k, v) for k, v in sorted(unresolved.items())),
        allocations={k: v for k, v in allocation.addresses.items() if k not in unresolved},
    )


def membership(group: VipGroup, node: str, nodes: Mapping[str, Node] | Iterable[Node]) -> Membership:
    """This node's part in ``group``: its priority and every member in placement order.

    Drained nodes (label ``vipcore.io/drain=true``) keep their membership (the
    group name and VRID do not change) but rank after every other node.
    """
    by_name = nodes if isinstance(nodes, Mapping) else {n.name: n for n in nodes}
    if node not in group.nodes:
        raise ValueError(f"node {node!r} is not a member of group {group.name}")
    drained = {n for n in group.nodes if n in by_name and by_name[n].drained}
    order = placement.rank(group.placement_key, [n for n in group.nodes if n not in drained])
    order += placement.rank(group.placement_key, drained)
    prios = {n: max(placement.BOTTOM_PRIORITY, placement.TOP_PRIORITY - i) for i, n in enumerate(order)}
    for n in drained:
        prios[n] = placement.BOTTOM_PRIORITY
    members = tuple(
        PeerNode(name=n, priority=prios[n], addresses=by_name[n].addresses if n in by_name else ())
        for n in order
    )
    return Membership(group=group, node=node, priority=prios[node], members=members)
