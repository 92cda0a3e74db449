"""Address allocation from pools: honour what is requested or already held, then allocate.

Deterministic: the same input gives the same allocation on every node, and a
fresh address starts at a position derived from the Service's key, so adding
one Service does not shift the addresses of others.

Addresses never move or vanish behind a Service's back:

* a held address (``status.loadBalancer.ingress``) stays while *any* pool
  contains it (:func:`choose_pool` finds that pool from the address, as
  MetalLB does), even when the pool is disabled or being deleted; those
  only stop *new* allocations;
* a requested address without a pool annotation picks the pool containing it;
* a freed address is held back (``quarantined``) before another Service gets
  it fresh, so clients' ARP and neighbour caches age out first;
* two Services share an address only when both opt in with the same sharing
  key, their ports do not clash, both use ``externalTrafficPolicy: Cluster``
  (so they land in one VIP group) and they use the same pool.
"""

from __future__ import annotations

import bisect
import hashlib
import operator
from ipaddress import IPv4Address, IPv6Address, ip_address
from collections.abc import Collection, Iterable, Mapping, Sequence

import attrs

from vipcore.core.model import Family, IPAddress, Node, Pool, Service, TrafficPolicy


@attrs.frozen
class Allocation:
    """What the allocator decided for one run."""

    #: Service key -> its addresses, in family order.
    addresses: Mapping[str, tuple[IPAddress, ...]]
    #: Service key -> why it got no address.
    refused: Mapping[str, str]


#: An address of each family from its integer value (``ip_address`` would try IPv4 first for every IPv6 one).
_ADDRESS: dict[Family, type[IPAddress]] = {Family.IPV4: IPv4Address, Family.IPV6: IPv6Address}
_VERSION = operator.attrgetter("version")
_NO_FAMILIES: frozenset[Family] = frozenset()


def wanted_families(
    service: Service, pool: Pool, offered: tuple[Family, ...] | None = None
) -> tuple[Family, ...]:
    """The families to allocate: the requested addresses', else ``spec.ipFamilies``, else IPv4 first."""
    offered = pool.families if offered is None else offered
    if service.requested_ips:
        return tuple(Family.of(ip) for ip in service.requested_ips)
    if service.require_dual_stack:
        return tuple(service.families or (Family.IPV4, Family.IPV6))
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

    def first_free(self, start: int, resting: frozenset[int] = frozenset()) -> int | None:
        """The first address at or after ``start`` that is neither taken nor ``resting`` (quarantined)."""
        if len(self.taken) >= self.size:
            return None
        # Linear probe from a key-derived start; bounded by the pool size.
        for step in range(self.size):
            candidate = self.at((start + step) % self.size)
            if candidate not in self.taken and candidate not in resting:
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


#: ``"/4"``, ``"/6"``: what a key is hashed with for a start in each family (``Family.value`` is a slow property).
_FAMILY_SUFFIX = {family: f"/{family.value}" for family in Family}


def _start(key: str, family: Family, size: int) -> int:
    """Where the probe for ``key``'s fresh address of ``family`` starts: ``sha256("<key>/<version>")``."""
    digest = hashlib.sha256((key + _FAMILY_SUFFIX[family]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % size


def _closed(pool: Pool) -> bool:
    """A pool that gives out nothing new (disabled, or being deleted)."""
    return pool.disabled or pool.deleting


def _closed_reason(pool: Pool) -> str:
    return f"pool {pool.name!r} is {'being deleted' if pool.deleting else 'disabled'}"


def _by_address(addresses: Sequence[IPAddress], pools: Mapping[str, Pool]) -> Pool | None:
    """The pool containing ``addresses``: most of them, then the default, then the first by name."""
    best: tuple[int, bool, str] | None = None
    for name, pool in pools.items():
        count = sum(1 for ip in addresses if pool.contains(ip))
        if count and (best is None or (-count, not pool.default, name) < (-best[0], not best[1], best[2])):
            best = (count, pool.default, name)
    return pools[best[2]] if best is not None else None


def choose_pool(service: Service, pools: Mapping[str, Pool]) -> Pool | str:
    """The Service's pool, or the reason it has none.

    In order: the pool annotation; the pool containing the addresses the
    Service holds (unless it now requests others); the pool containing the
    addresses it requests; otherwise a pool listing its namespace in
    ``auto_namespaces`` (OpenELB), first by name; the pool marked default
    (first by name); the only pool. A disabled or deleting pool still serves
    the addresses a Service holds from it; a pool's ``namespaces`` restrict
    new allocations only.
    """
    return PoolChooser(pools)(service)


class PoolChooser:
    """:func:`choose_pool` for many Services over the same ``pools`` (which must not change meanwhile):
    the usual choice, which depends only on a Service's namespace, is made once per namespace."""

    def __init__(self, pools: Mapping[str, Pool]) -> None:
        self.pools = pools
        #: The open pools (not disabled or deleting) that list namespaces to serve automatically, by name.
        self._automatic = sorted((name, p) for name, p in pools.items() if not _closed(p) and p.auto_namespaces)
        defaults = sorted(name for name, p in pools.items() if not _closed(p) and p.default)
        self._fallback: Pool | str
        if defaults:
            self._fallback = pools[defaults[0]]
        elif len(pools) == 1:
            self._fallback = next(iter(pools.values()))
        elif not pools:
            self._fallback = "no pool is defined"
        else:
            self._fallback = "no pool is marked default and the Service names none (annotation vipcore.io/pool)"
        self._usual: dict[str, Pool | str] = {}

    def usual(self, namespace: str) -> Pool | str:
        """The pool of a Service in ``namespace`` that holds, requests and names nothing in any pool: one
        listing the namespace in ``auto_namespaces``, first by name, else the default, else the only one."""
        found = self._usual.get(namespace)
        if found is None:
            found = self._usual[namespace] = next(
                (p for _, p in self._automatic if namespace in p.auto_namespaces), self._fallback)
        return found

    def __call__(self, service: Service) -> Pool | str:
        """:func:`choose_pool` of ``service``."""
        pools = self.pools
        vips = service.vips
        requested = service.requested_ips
        holds = bool(vips) and not (requested and set(requested) != set(vips))
        pool: Pool | str | None = None
        if service.pool is not None:
            pool = pools.get(service.pool)
            if pool is None:
                return f"pool {service.pool!r} does not exist"
        elif holds and (held := _by_address(vips, pools)) is not None:
            pool = held
        elif requested and (asked := _by_address(requested, pools)) is not None:
            pool = asked
        else:
            # Nothing held or requested is in any pool: the usual choice (a request outside it is refused later).
            pool = self.usual(service.namespace)
            if isinstance(pool, str):
                return pool
        held_here = bool(vips) and any(pool.contains(ip) for ip in vips)
        if _closed(pool) and not held_here:
            return _closed_reason(pool)
        if pool.namespaces and service.namespace not in pool.namespaces and not held_here:
            return f"pool {pool.name!r} does not serve namespace {service.namespace!r}"
        return pool


def share_problem(service: Service, others: Sequence[Service]) -> str | None:
    """Why ``service`` cannot share an address with ``others`` (its current users), or None if it can."""
    if not others:
        return None
    users = ", ".join(o.key for o in others)
    if not service.sharing_key and not any(o.sharing_key for o in others):
        return f"already used by {users}"
    if not service.sharing_key or any(o.sharing_key != service.sharing_key for o in others):
        return f"already used by {users} (sharing needs the same sharing key on every Service)"
    if service.traffic_policy is not TrafficPolicy.CLUSTER or any(
            o.traffic_policy is not TrafficPolicy.CLUSTER for o in others):
        return f"already used by {users} (sharing needs externalTrafficPolicy Cluster on every Service)"
    taken = {p for o in others for p in o.ports}
    clash = sorted(p for p in service.ports if p in taken)
    if clash:
        ports = ", ".join(f"{proto}/{port}" for proto, port in clash)
        return f"already used by {users} with the same port(s) {ports}"
    return None


def allocate(
    services: Iterable[tuple[Service, Pool]],
    *,
    allocate_new: bool = True,
    quarantined: Collection[IPAddress] = (),
    refused_pools: Mapping[str, str] | None = None,
) -> Allocation:
    """Give each (Service, pool) pair its addresses.

    Order of precedence: addresses a Service already holds (status) that are
    still valid, then requested addresses, then fresh ones (``allocate_new``;
    never from a disabled or deleting pool, never a ``quarantined`` address).
    A requested address outside the pool or held by another Service it may
    not share with is refused with a reason; so is a Service whose pool has
    no free address, and a ``RequireDualStack`` Service whose pool lacks a
    family. Services are processed in key order so conflicts resolve the same
    way everywhere.

    ``refused_pools`` (from :func:`pool_conflicts`, with the nodes) gives no
    address to the Services of those pools; without it, the overlaps among
    the pools in ``services`` are refused.
    """
    # (key, Service, pool): Service.key is computed, and read many times a Service below.
    pairs = sorted(((s.key, s, p) for s, p in services), key=operator.itemgetter(0))
    if refused_pools is None:
        refused_pools = pool_conflicts({p.name: p for _, _, p in pairs}.values())
    spaces: dict[tuple[str, Family], _FamilySpace] = {}
    users: dict[IPAddress, list[Service]] = {}
    pool_of: dict[IPAddress, str] = {}
    result: dict[str, list[IPAddress]] = {}
    refused: dict[str, str] = {}
    resting = frozenset(int(ip) for ip in quarantined)
    offered_by_pool: dict[str, tuple[Family, ...]] = {}

    def offered(pool: Pool) -> tuple[Family, ...]:
        # Pool.families is computed; once per pool keeps large runs fast (bench/resolve.py).
        found = offered_by_pool.get(pool.name)
        if found is None:
            found = offered_by_pool[pool.name] = pool.families
        return found
    for key, service, pool in pairs:
        if pool.name in refused_pools:
            refused[key] = f"pool {pool.name!r} is refused: {refused_pools[pool.name]}"
    pairs = [(k, s, p) for k, s, p in pairs if k not in refused]

    def space(pool: Pool, family: Family) -> _FamilySpace:
        key = (pool.name, family)
        if key not in spaces:
            spaces[key] = _FamilySpace([r for r in pool.ranges if r[0].version == family])
        return spaces[key]

    def problem(service: Service, pool: Pool, ip: IPAddress) -> str | None:
        others = users.get(ip, [])
        if others and pool_of.get(ip) != pool.name:
            return f"already used by {', '.join(o.key for o in others)} from pool {pool_of[ip]!r}"
        return share_problem(service, others)

    def claim(key: str, service: Service, pool: Pool, ip: IPAddress, family: Family | None = None,
              value: int | None = None) -> None:
        """``ip`` to ``service`` (``family`` and ``value``: the address's, when the caller has them)."""
        users.setdefault(ip, []).append(service)
        pool_of[ip] = pool.name
        space(pool, family or Family.of(ip)).taken.add(int(ip) if value is None else value)
        result.setdefault(key, []).append(ip)

    def release(service: Service, pool: Pool) -> None:
        for ip in result.pop(service.key, []):
            rest = [o for o in users.get(ip, []) if o.key != service.key]
            if rest:
                users[ip] = rest
            else:
                users.pop(ip, None)
                pool_of.pop(ip, None)
                spaces[(pool.name, Family.of(ip))].taken.discard(int(ip))

    def dual_stack_gap(service: Service, pool: Pool) -> str | None:
        if not service.require_dual_stack:
            return None
        missing = [f.k8s_name for f in (Family.IPV4, Family.IPV6) if f not in offered(pool)]
        if missing:
            has = ", ".join(f.k8s_name for f in offered(pool)) or "nothing"
            return (f"ipFamilyPolicy RequireDualStack, but pool {pool.name!r} offers only {has} "
                    f"(no {', '.join(missing)} range)")
        return None

    # 1. Keep what is held, unless the Service now requests something else.
    for key, service, pool in pairs:
        if not service.vips or (service.requested_ips and set(service.requested_ips) != set(service.vips)):
            continue
        wanted = wanted_families(service, pool, offered(pool))
        for ip in service.vips:
            if pool.contains(ip) and Family.of(ip) in wanted and problem(service, pool, ip) is None \
                    and ip not in result.get(key, []):
                claim(key, service, pool, ip)

    # 2. Requested addresses.
    for key, service, pool in pairs:
        if not service.requested_ips or key in result:
            continue
        problems = []
        for ip in service.requested_ips:
            if not pool.contains(ip):
                problems.append(f"requested address {ip} is outside pool {pool.name!r}")
            elif (why := problem(service, pool, ip)) is not None:
                problems.append(f"requested address {ip} is {why}")
            elif _closed(pool) and ip not in service.vips:
                problems.append(f"requested address {ip}: {_closed_reason(pool)}, it allocates nothing new")
        if problems:
            refused[key] = "; ".join(problems)
            continue
        for ip in service.requested_ips:
            claim(key, service, pool, ip)

    # 3. Fresh addresses for the families still missing.
    for key, service, pool in pairs:
        if key in refused or service.requested_ips:
            continue
        held = result.get(key)
        have = {Family.of(ip) for ip in held} if held else _NO_FAMILIES
        gap = dual_stack_gap(service, pool) if service.require_dual_stack else None
        if gap is not None and not have:
            refused[key] = gap
            continue
        families = offered(pool)
        missing = [f for f in wanted_families(service, pool, families) if f not in have and f in families]
        if not missing and not have:
            asked = ", ".join(f.k8s_name for f in service.families) or "any"
            refused[key] = f"pool {pool.name!r} offers none of the families the Service asks for ({asked})"
            continue
        if not missing:
            continue
        if _closed(pool) or not allocate_new:
            if not have:
                refused[key] = (f"{_closed_reason(pool)}: it allocates nothing new" if _closed(pool)
                                        else "no address allocated yet")
            continue
        for family in missing:
            found = _shared(service, pool, family, users, pool_of) if service.sharing_key else None
            if found is None:
                fs = space(pool, family)
                found = fs.first_free(_start(key, family, fs.size), resting) if fs.size else None
            if found is None:
                resting_here = sum(1 for ip in quarantined if pool.contains(ip) and Family.of(ip) is family)
                refused[key] = f"pool {pool.name!r} has no free {family.k8s_name} address" + (
                    f" ({resting_here} recently released, in quarantine)" if resting_here else "")
                break
            claim(key, service, pool, _ADDRESS[family](found), family, found)
        else:
            continue
        # Exhaustion is all-or-nothing for a Service: give back what it got this run.
        release(service, pool)

    addresses = {
        key: tuple(sorted(ips, key=_VERSION) if len(ips) > 1 else ips)
        for key, ips in result.items()
        if key not in refused
    }
    return Allocation(addresses=addresses, refused=refused)


def _shared(service: Service, pool: Pool, family: Family, users: Mapping[IPAddress, list[Service]],
            pool_of: Mapping[IPAddress, str]) -> int | None:
    """The lowest address of ``family`` in ``pool`` that ``service`` may share, as MetalLB picks one."""
    if not service.sharing_key:
        return None
    for ip in sorted((ip for ip, who in users.items() if Family.of(ip) is family and pool_of.get(ip) == pool.name
                      and service not in who), key=int):
        if share_problem(service, users[ip]) is None:
            return int(ip)
    return None
