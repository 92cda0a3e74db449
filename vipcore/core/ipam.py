"""Address allocation from pools: honour what is requested or already held, then allocate.

Deterministic: the same input gives the same allocation on every node, and a
fresh address starts at a position derived from the Service's key, so adding
one Service does not shift the addresses of others.
"""

from __future__ import annotations

import bisect
import hashlib
from ipaddress import ip_address
from collections.abc import Iterable, Mapping, Sequence

import attrs

from vipcore.core.model import Family, IPAddress, Node, Pool, Service


@attrs.frozen
class Allocation:
    """What the allocator decided for one run."""

    #: Service key -> its addresses, in family order.
    addresses: Mapping[str, tuple[IPAddress, ...]]
    #: Service key -> why it got no address.
    refused: Mapping[str, str]


def wanted_families(
    service: Service, pool: Pool, offered: tuple[Family, ...] | None = None
) -> tuple[Family, ...]:
    """The families to allocate: the requested addresses', else ``spec.ipFamilies``, else IPv4 first."""
    offered = pool.families if offered is None else offered
    if service.requested_ips:
        return tuple(Family.of(ip) for ip in service.requested_ips)
    if service.families:
        return tuple(f for f in service.families if f in offered)
    return offered[:1]


class _FamilySpace:
    """The addresses of one pool and family, indexable, with what is taken."""

    def __init__(self, ranges: Sequence[tuple[IPAddress, IPAddress]]) -> None:
        self.ranges = [(int(a), int(b)) for a, b in ranges]
        self.version = ranges[0][0].version if ranges else 4
        self.size = sum(b - a + 1 for a, b in self.ranges)
        self.taken: set[int] = set()

    def at(self, index: int) -> int:
        for first, last in self.ranges:
            span = last - first + 1
            if index < span:
                return first + index
            index -= span
        raise IndexError(index)

    def first_free(self, start: int) -> int | None:
        if len(self.taken) >= self.size:
            return None
        # Linear probe from a key-derived start; bounded by the pool size.
        for step in range(self.size):
            candidate = self.at((start + step) % self.size)
            if candidate not in self.taken:
                return candidate
        return None


def pool_conflicts(pools: Iterable[Pool], nodes: Iterable[Node] = ()) -> dict[str, str]:
    """Pools that must not allocate, by name, with why: overlaps and node addresses.

    Two pools that share an address would hand it to two Services, so of
    two overlapping pools the one whose name sorts later is refused (the
    same answer on every node; the other keeps working). A pool that
    contains a node's own address would hand that address out as a VIP.
    """
    refused: dict[str, str] = {}
    # Accepted ranges per IP version, sorted by start: (first, last, pool name).
    accepted: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
    for pool in sorted(pools, key=lambda p: p.name):
        clash = None
        for first, last in pool.ranges:
            ranges = accepted[first.version]
            lo, hi = int(first), int(last)
            at = bisect.bisect_right(ranges, (lo, hi, "\uffff"))
            for other in ranges[max(0, at - 1):at + 1]:
                if other[0] <= hi and lo <= other[1] and other[2] != pool.name:
                    clash = (other[2], ip_address(max(lo, other[0])))
                    break
            if clash:
                break
        if clash:
            refused[pool.name] = f"it overlaps pool {clash[0]!r} (both contain {clash[1]}); make the pools disjoint"
            continue
        for first, last in pool.ranges:
            bisect.insort(accepted[first.version], (int(first), int(last), pool.name))
    for node in nodes:
        for address in node.addresses:
            ranges = accepted[address.version]
            value = int(address)
            at = bisect.bisect_right(ranges, (value, value, "\uffff")) - 1
            # Ranges are disjoint once overlaps are refused: only the one starting at or before can hold it.
            if at >= 0 and ranges[at][0] <= value <= ranges[at][1] and ranges[at][2] not in refused:
                refused[ranges[at][2]] = (f"it contains {address}, an address of node {node.name!r}; "
                                          "leave node addresses out of the pool")
    return refused


def _start(key: str, family: Family, size: int) -> int:
    digest = hashlib.sha256(f"{key}/{family.value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


def allocate(
    services: Iterable[tuple[Service, Pool]],
    *,
    allocate_new: bool = True,
    refused_pools: Mapping[str, str] | None = None,
) -> Allocation:
    """Give each (Service, pool) pair its addresses.

    Order of precedence: addresses a Service already holds (status) that are
    still valid, then requested addresses, then fresh ones (``allocate_new``).
    A requested address outside the pool or held by another Service is refused
    with a reason; so is a Service whose pool has no free address. Services
    are processed in key order so conflicts resolve the same way everywhere.

    ``refused_pools`` (from :func:`pool_conflicts`, with the nodes) gives no
    address to the Services of those pools; without it, the overlaps among
    the pools in ``services`` are refused.
    """
    pairs = sorted(services, key=lambda sp: sp[0].key)
    if refused_pools is None:
        refused_pools = pool_conflicts({p.name: p for _, p in pairs}.values())
    offered_by_pool: dict[str, tuple[Family, ...]] = {}

    def families(service: Service, pool: Pool) -> tuple[Family, ...]:
        offered = offered_by_pool.get(pool.name)
        if offered is None:
            offered = offered_by_pool[pool.name] = pool.families
        return wanted_families(service, pool, offered)
    spaces: dict[tuple[str, Family], _FamilySpace] = {}
    owner: dict[IPAddress, str] = {}
    result: dict[str, list[IPAddress]] = {}
    refused: dict[str, str] = {}
    for service, pool in pairs:
        if pool.name in refused_pools:
            refused[service.key] = f"pool {pool.name!r} is refused: {refused_pools[pool.name]}"
    pairs = [(s, p) for s, p in pairs if s.key not in refused]

    def space(pool: Pool, family: Family) -> _FamilySpace:
        key = (pool.name, family)
        if key not in spaces:
            spaces[key] = _FamilySpace([r for r in pool.ranges if r[0].version == family])
        return spaces[key]

    def claim(service: Service, pool: Pool, ip: IPAddress) -> None:
        owner[ip] = service.key
        space(pool, Family.of(ip)).taken.add(int(ip))
        result.setdefault(service.key, []).append(ip)

    # 1. Keep what is held, unless the Service now requests something else.
    for service, pool in pairs:
        if service.requested_ips and set(service.requested_ips) != set(service.vips):
            continue
        wanted = families(service, pool)
        for ip in service.vips:
            if pool.contains(ip) and ip not in owner and Family.of(ip) in wanted:
                claim(service, pool, ip)

    # 2. Requested addresses.
    for service, pool in pairs:
        if not service.requested_ips or service.key in result:
            continue
        problems = []
        for ip in service.requested_ips:
            if not pool.contains(ip):
                problems.append(f"requested address {ip} is outside pool {pool.name!r}")
            elif ip in owner:
                problems.append(f"requested address {ip} is already used by {owner[ip]}")
        if problems:
            refused[service.key] = "; ".join(problems)
            continue
        for ip in service.requested_ips:
            claim(service, pool, ip)

    # 3. Fresh addresses for the families still missing.
    for service, pool in pairs:
        if service.key in refused or service.requested_ips:
            continue
        have = {Family.of(ip) for ip in result.get(service.key, [])}
        missing = [f for f in families(service, pool) if f not in have]
        if not missing and not have:
            asked = ", ".join(f.k8s_name for f in service.families) or "any"
            refused[service.key] = f"pool {pool.name!r} offers none of the families the Service asks for ({asked})"
            continue
        if not allocate_new:
            if not have:
                refused[service.key] = "no address allocated yet"
            continue
        for family in missing:
            fs = space(pool, family)
            found = fs.first_free(_start(service.key, family, fs.size)) if fs.size else None
            if found is None:
                refused[service.key] = f"pool {pool.name!r} has no free {family.k8s_name} address"
                break
            claim(service, pool, ip_address(found))
        else:
            continue
        # Exhaustion is all-or-nothing for a Service: give back what it got this run.
        for ip in result.pop(service.key, []):
            owner.pop(ip, None)
            spaces[(pool.name, Family.of(ip))].taken.discard(int(ip))

    addresses = {
        key: tuple(sorted(ips, key=lambda ip: ip.version))
        for key, ips in result.items()
        if key not in refused
    }
    return Allocation(addresses=addresses, refused=refused)
