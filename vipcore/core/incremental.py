"""Incremental resolution: a change recomputes only the groups it can affect.

:class:`IncrementalResolver` gives the same :class:`Resolution` as
:func:`vipcore.core.resolve.resolve` on the same :class:`DesiredState`
(``tests/core/test_incremental.py`` checks it on random sequences of
changes), but keeps what it derived last time and redoes only what a
change reaches:

* an EndpointSlice re-places its one Service;
* a Node re-evaluates its own eligibility per pool; when that flips, the
  pool's ``Cluster`` Services move as one block (their group is rebuilt, not
  each Service re-placed) and only the ``Local`` Services with a ready
  endpoint on that node are re-placed;
* a Service re-runs pool choice, address allocation and placement for itself
  alone, unless its addresses touch another Service's (a shared requested or
  held address), or fresh addresses are being handed out (``allocate=True``
  with a Service still waiting for one): then allocation runs for all, as
  ``resolve`` does, and only Services whose result changed are re-placed;
* VRIDs are re-allocated per interface (:func:`allocate_vrids` on that
  interface's groups alone gives what it gives on all) when that interface's
  set of group names changed, or a group that did not keep its persisted
  VRID changed its first Service (a derived VRID starts at that Service's
  slot) or, with ``lineage`` given, any of its Services (inheritance counts
  shared Services);
* a pool change rebuilds everything (pools are few and rarely change).

The resolver's newer rules force wider recomputation in these cases:

* a Service gaining, losing or changing its pool's interface changes that
  interface's *anchors* (every Service with a pool there deals the derived
  VRID slots): VRIDs are re-allocated for the whole interface, unless every
  group there kept its persisted VRID (then slots are not read);
* a change of the persisted VRIDs or of ``lineage`` re-allocates VRIDs on
  every interface;
* a Node whose addresses changed (or Nodes added, removed or reordered)
  re-runs :func:`vipcore.core.ipam.pool_conflicts`, which reads every pool
  and node address; when a pool's refusal flips, allocation runs for every
  Service (and only Services whose result changed are re-placed);
* a change of ``quarantined`` (with ``allocate=True``) runs allocation for
  every Service.

Every decision reuses the resolver's own functions (:func:`choose_pool`,
:func:`vipcore.core.ipam.pool_conflicts`, :func:`vipcore.core.ipam.allocate`,
:func:`node_eligible`, :func:`place`, :func:`group_name`,
:func:`allocate_vrids`, :func:`make_group`); this module only keeps their
results and works out what a change reaches.

A burst of changes is one :meth:`IncrementalResolver.update` call: callers
coalesce by handing over the latest state, not every intermediate one.
Services, EndpointSlices and Nodes are identified by key (namespace and name;
name). A state that lists two of one kind under one key (manifests can list
an EndpointSlice twice) is resolved in full, and the next one rebuilds.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import TypeVar

import attrs

from vipcore.core import ipam
from vipcore.core.model import (
    DesiredState,
    EndpointSlice,
    IPAddress,
    Node,
    Pool,
    Resolution,
    Service,
    TrafficPolicy,
    Unresolved,
    VipGroup,
    VridPolicy,
)
from vipcore.core.resolve import (
    address_order,
    choose_pool,
    group_name,
    make_group,
    node_eligible,
    place,
    resolve,
)
from vipcore.core.vrid import allocate_vrids

#: A group before its VRID: (nodes, interface), as in :func:`resolve`.
GroupKey = tuple[frozenset[str], str]
#: Where a placed Service sits: ("cluster", pool name) or ("local", group key).
_BucketId = tuple[str, Hashable]
#: Above this many changes a bucket is re-sorted instead of edited in place.
_BULK = 64

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.frozen
class UpdateStats:
    """What the last :meth:`IncrementalResolver.update` recomputed (for tests, logs and benchmarks)."""

    #: Services whose choice, allocation or placement was re-evaluated.
    services: int
    #: Groups rebuilt.
    groups: int
    #: Interfaces whose VRIDs were re-allocated.
    interfaces: int
    #: Whether address allocation ran for every Service.
    full_allocation: bool
    #: Whether everything was rebuilt (first call, or the pools changed).
    rebuilt: bool


class _Bucket:
    """Services placed alike, sorted, with their addresses counted and sorted."""

    __slots__ = ("services", "counts", "addresses")

    def __init__(self) -> None:
        self.services: list[str] = []
        self.counts: dict[IPAddress, int] = {}
        self.addresses: list[IPAddress] = []

    def apply(self, removes: Mapping[str, tuple[IPAddress, ...]], adds: Mapping[str, tuple[IPAddress, ...]]) -> None:
        small = len(removes) + len(adds) <= _BULK
        for key, addrs in removes.items():
            if small:
                del self.services[bisect.bisect_left(self.services, key)]
            for ip in addrs:
                left = self.counts[ip] - 1
                if left:
                    self.counts[ip] = left
                else:
                    del self.counts[ip]
                    if small:
                        del self.addresses[bisect.bisect_left(self.addresses, address_order(ip), key=address_order)]
        for key, addrs in adds.items():
            if small:
                bisect.insort(self.services, key)
            for ip in addrs:
                count = self.counts.get(ip, 0)
                self.counts[ip] = count + 1
                if small and not count:
                    bisect.insort(self.addresses, ip, key=address_order)
        if not small:
            self.services = sorted((set(self.services) - removes.keys()) | adds.keys())
            self.addresses = sorted(self.counts, key=address_order)


class _Duplicates(Exception):
    """Two objects of one kind share a key (manifests may list an EndpointSlice twice)."""


def _diff(
    current: dict[K, V], old: tuple[V, ...], new: tuple[V, ...], key: Callable[[V], K]
) -> tuple[dict[K, V], dict[K, V | None], bool]:
    """``new`` by key (``current`` updated, or a new dict), the previous value of each changed key,
    and whether the keys may have changed order (the slow path: keys added, removed or moved).

    Sources hand the same objects back for what did not change, so the usual
    case (same length, same order) is one pass of identity checks.
    """
    if new is old:
        return current, {}, False
    if len(new) == len(old):
        modified: list[V] = []
        for a, b in zip(old, new):
            if a is not b and a != b:
                if key(a) != key(b):
                    break
                modified.append(b)
        else:
            changes: dict[K, V | None] = {}
            for value in modified:
                k = key(value)
                changes[k] = current.get(k)
                current[k] = value
            return current, changes, False
    fresh = {key(v): v for v in new}
    if len(fresh) != len(new):
        raise _Duplicates()
    changes = {k: p for k, v in fresh.items() if (p := current.get(k)) is not v and p != v}
    changes.update((k, v) for k, v in current.items() if k not in fresh)
    return fresh, changes, True


def _slice_id(eps: EndpointSlice) -> tuple[str, str]:
    return (eps.namespace, eps.name)


class IncrementalResolver:
    """:func:`resolve`, remembering what it derived so that a change costs what it reaches.

    ``vrid_policy`` and ``allocate`` mean what they mean for :func:`resolve`.
    Call :meth:`update` with each new state; it returns the resolution
    ``resolve(state, vrid_policy=..., allocate=..., quarantined=...)`` would.
    """

    def __init__(
        self,
        *,
        vrid_policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
        allocate: bool = True,
    ) -> None:
        self.vrid_policy = vrid_policy
        self.allocate = allocate
        self.stats: UpdateStats | None = None
        self._state = DesiredState()
        self._reset()

    def _reset(self) -> None:
        # Inputs by key.
        self._nodes: dict[str, Node] = {}
        self._services: dict[str, Service] = {}
        self._slices: dict[tuple[str, str], EndpointSlice] = {}
        self._pools: dict[str, Pool] = {}
        self._vrids: Mapping[str, int] = {}
        self._lineage: Mapping[str, tuple[str, ...]] = {}
        self._quarantined: tuple[IPAddress, ...] = ()
        # Pools that allocate nothing (overlaps, node addresses), as ``ipam.pool_conflicts`` says.
        self._refused_pools: dict[str, str] = {}
        # Per Service: its slices' ready nodes; pool; allocation; why it has no group.
        self._ready: dict[str, dict[tuple[str, str], frozenset[str]]] = {}
        self._eligible: dict[str, frozenset[str]] = {}
        self._chosen: dict[str, Pool] = {}
        self._unchosen: dict[str, str] = {}
        self._pool_members: dict[str, set[str]] = {}
        # Interface -> every Service with a pool there: they anchor derived VRIDs (``allocate_vrids``).
        self._anchors: dict[str, set[str]] = {}
        self._footprint: dict[str, tuple[IPAddress, ...]] = {}
        # Address -> the Service holding or requesting it; a set only while several do (rare).
        self._claims: dict[IPAddress, str | set[str]] = {}
        self._addresses: dict[str, tuple[IPAddress, ...]] = {}
        self._refused: dict[str, str] = {}
        self._seekers: set[str] = set()
        self._reason: dict[str, str] = {}
        # Placement: where each placed Service sits, and Local Services by node with a ready endpoint.
        self._placed: dict[str, tuple[_BucketId, tuple[IPAddress, ...]]] = {}
        self._indexed: dict[str, frozenset[str]] = {}
        self._local_by_node: dict[str, set[str]] = {}
        self._buckets: dict[_BucketId, _Bucket] = {}
        # Groups: members by key, VRIDs by interface, the finished groups by name.
        self._members: dict[GroupKey, tuple[str, tuple[str, ...], tuple[IPAddress, ...]]] = {}
        self._names: dict[str, set[str]] = {}
        self._key_of: dict[str, GroupKey] = {}
        self._vrid_of: dict[str, int] = {}
        self._failed: dict[str, str] = {}
        self._final: dict[str, VipGroup] = {}
        self._result: Resolution | None = None
        # What the last resolution listed, rebuilt only when what feeds them changed.
        self._allocations: dict[str, tuple[IPAddress, ...]] = {}
        self._unresolved: tuple[Unresolved, ...] = ()
        self._groups: tuple[VipGroup, ...] = ()
        self._answer: dict[str, tuple[IPAddress, ...]] = {}
        self._stale = {"allocations", "unresolved", "groups", "addresses"}

    # ------------------------------------------------------------------ the entry point

    def update(self, state: DesiredState, *, quarantined: Collection[IPAddress] = ()) -> Resolution:
        """The resolution of ``state``, recomputing only what changed since the last call.

        ``quarantined`` means what it means for :func:`resolve`; when it changes
        (and fresh addresses are handed out) allocation runs for every Service.
        """
        old = self._state
        rebuilt = self._result is None or state.pools != old.pools
        if rebuilt:
            self._reset()
            old = DesiredState()
            self._pools = {p.name: p for p in state.pools}
            self._eligible = {name: frozenset() for name in self._pools}
        self._state = state

        dirty_services: set[str] = set()
        dirty_keys: set[GroupKey] = set()
        anchored: set[str] = set()
        try:
            addressed = self._nodes_changed(old, state, dirty_services, dirty_keys)
            self._slices_changed(old, state, dirty_services)
            self._services, service_changes, _ = _diff(self._services, old.services, state.services,
                                                       lambda s: s.key)
        except _Duplicates:
            # Rare (hand-written manifests): resolve in full, and rebuild on the next state.
            self._reset()
            self._state = DesiredState()
            self.stats = UpdateStats(services=len(state.services), groups=0, interfaces=0, full_allocation=True,
                                     rebuilt=True)
            return resolve(state, vrid_policy=self.vrid_policy, allocate=self.allocate, quarantined=quarantined)
        force = rebuilt
        if rebuilt or addressed:
            # Overlapping pools are refused; a node address entering or leaving a pool flips its refusal.
            refused_pools = ipam.pool_conflicts(state.pools, state.nodes)
            if refused_pools != self._refused_pools:
                self._refused_pools = refused_pools
                force = True
        # As given, repeats included: a refusal counts the quarantined addresses of its pool.
        quarantine = tuple(quarantined)
        if quarantine != self._quarantined and Counter(quarantine) != Counter(self._quarantined):
            force = force or self.allocate
        self._quarantined = quarantine
        changed = set(service_changes)
        dirty_services |= changed
        full = self._allocation_changed(changed, dirty_services, anchored, force=force)
        placed = self._place(dirty_services, dirty_keys)
        dirty_ifaces = self._regroup(dirty_keys)
        if dict(state.vrids) != self._vrids:
            self._vrids = dict(state.vrids)
            dirty_ifaces = set(self._names)
        if dict(state.lineage) != self._lineage:
            self._lineage = dict(state.lineage)
            dirty_ifaces = set(self._names)
        renumbered = self._number(dirty_ifaces, anchored, dirty_keys)
        self.stats = UpdateStats(services=placed, groups=len(dirty_keys), interfaces=renumbered,
                                 full_allocation=full, rebuilt=rebuilt)
        if (self._result is None or dirty_services or dirty_keys or dirty_ifaces):
            self._result = self._resolution()
        return self._result

    # ------------------------------------------------------------------ inputs

    def _nodes_changed(self, old: DesiredState, state: DesiredState, dirty_services: set[str],
                       dirty_keys: set[GroupKey]) -> bool:
        """Re-evaluate eligibility of the nodes that changed; True when pool refusals may have changed.

        Refusals read every node's addresses, in order (the first node found
        in a pool names it): they may change when addresses or the order did.
        """
        self._nodes, changes, reordered = _diff(self._nodes, old.nodes, state.nodes, lambda n: n.name)
        addressed = reordered or any(
            (was.addresses if was is not None else ()) != (now.addresses if (now := self._nodes.get(name)) else ())
            for name, was in changes.items())
        if not changes:
            return addressed
        flipped: set[str] = set()
        for pool in self._pools.values():
            turned_on: set[str] = set()
            turned_off: set[str] = set()
            for name, was in changes.items():
                now = self._nodes.get(name)
                before = was is not None and node_eligible(was, pool)
                after = now is not None and node_eligible(now, pool)
                if before != after:
                    (turned_on if after else turned_off).add(name)
            if not turned_on and not turned_off:
                continue
            flipped |= turned_on | turned_off
            eligible = self._eligible[pool.name]
            updated = (eligible - turned_off) | turned_on
            self._eligible[pool.name] = updated
            dirty_keys.add((eligible, pool.interface))
            dirty_keys.add((updated, pool.interface))
            if not eligible or not updated:
                # The pool's Cluster Services gain or lose their only reason to have no group.
                dirty_services |= self._pool_members.get(pool.name, set())
        for name in flipped:
            dirty_services |= self._local_by_node.get(name, set())
        return addressed

    def _slices_changed(self, old: DesiredState, state: DesiredState, dirty_services: set[str]) -> None:
        self._slices, changes, _ = _diff(self._slices, old.endpoint_slices, state.endpoint_slices, _slice_id)
        for sid, was in changes.items():
            now = self._slices.get(sid)
            if was is not None:
                ready = self._ready[was.service_key]
                del ready[sid]
                if not ready:
                    del self._ready[was.service_key]
                dirty_services.add(was.service_key)
            if now is not None:
                self._ready.setdefault(now.service_key, {})[sid] = now.ready_nodes
                dirty_services.add(now.service_key)

    def _ready_nodes(self, key: str) -> frozenset[str]:
        ready = self._ready.get(key)
        if not ready:
            return frozenset()
        if len(ready) == 1:
            return next(iter(ready.values()))
        return frozenset().union(*ready.values())

    # ------------------------------------------------------------------ pools and addresses

    def _allocation_changed(self, changed: set[str], dirty_services: set[str], anchored: set[str], *,
                            force: bool) -> bool:
        """Re-run pool choice and allocation for ``changed``; True when allocation ran for all.

        ``anchored`` collects the interfaces whose set of Services with a pool changed.
        """
        shared = force
        for key in changed:
            for ip in self._footprint.pop(key, ()):
                owners = self._claims[ip]
                if isinstance(owners, str):
                    del self._claims[ip]
                    continue
                owners.discard(key)
                shared = True  # another Service may now get (or lose) this address
                if len(owners) == 1:
                    self._claims[ip] = next(iter(owners))
            pool = self._chosen.pop(key, None)
            if pool is not None:
                self._pool_members[pool.name].discard(key)
            self._unchosen.pop(key, None)
            service = self._services.get(key)
            choice = choose_pool(service, self._pools) if service is not None else None
            self._anchor(key, pool, choice if isinstance(choice, Pool) else None, anchored)
            if service is None or choice is None:
                continue
            if isinstance(choice, str):
                self._unchosen[key] = choice
                continue
            self._chosen[key] = choice
            self._pool_members.setdefault(choice.name, set()).add(key)
            footprint = tuple(dict.fromkeys(service.vips + service.requested_ips))
            self._footprint[key] = footprint
            for ip in footprint:
                held = self._claims.get(ip)
                if held is None:
                    self._claims[ip] = key
                    continue
                shared = True
                if isinstance(held, str):
                    self._claims[ip] = {held, key}
                else:
                    held.add(key)
        if not shared:
            for key in changed:
                self._allocate_alone(key)
            if self.allocate and self._seekers:
                shared = True  # fresh addresses depend on every address taken: allocate for all
        if shared:
            self._allocate_all(dirty_services)
        return shared

    def _anchor(self, key: str, before: Pool | None, after: Pool | None, anchored: set[str]) -> None:
        """Move ``key`` between interfaces' anchors when its pool's interface changed."""
        old = before.interface if before is not None else None
        new = after.interface if after is not None else None
        if old == new:
            return
        if old is not None:
            keys = self._anchors[old]
            keys.discard(key)
            if not keys:
                del self._anchors[old]
            anchored.add(old)
        if new is not None:
            self._anchors.setdefault(new, set()).add(key)
            anchored.add(new)

    def _allocate(self, pairs: list[tuple[Service, Pool]], *, allocate_new: bool) -> ipam.Allocation:
        """:func:`ipam.allocate` as :func:`resolve` calls it."""
        return ipam.allocate(pairs, allocate_new=allocate_new, quarantined=self._quarantined,
                             refused_pools=self._refused_pools)

    def _store_allocation(self, key: str, allocation: ipam.Allocation, plain: ipam.Allocation | None) -> bool:
        """Keep one Service's allocation result; True when it differs from before."""
        before = (self._addresses.get(key), self._refused.get(key))
        after = (allocation.addresses.get(key), allocation.refused.get(key))
        if before[0] != after[0]:
            self._stale.add("addresses")
        if after[0] is None:
            self._addresses.pop(key, None)
        else:
            self._addresses[key] = after[0]
        if after[1] is None:
            self._refused.pop(key, None)
        else:
            self._refused[key] = after[1]
        # Without fresh allocation the same Service gets a different answer only if it wants a fresh address.
        if plain is not None and (plain.addresses.get(key), plain.refused.get(key)) != after:
            self._seekers.add(key)
        else:
            self._seekers.discard(key)
        return before != after

    def _allocate_alone(self, key: str) -> None:
        pool = self._chosen.get(key)
        if pool is None:
            self._store_allocation(key, ipam.Allocation(addresses={}, refused={}), None)
            return
        pair = [(self._services[key], pool)]
        allocation = self._allocate(pair, allocate_new=self.allocate)
        plain = self._allocate(pair, allocate_new=False) if self.allocate else None
        self._store_allocation(key, allocation, plain)

    def _allocate_all(self, dirty_services: set[str]) -> None:
        pairs = [(self._services[key], pool) for key, pool in self._chosen.items()]
        allocation = self._allocate(pairs, allocate_new=self.allocate)
        plain = self._allocate(pairs, allocate_new=False) if self.allocate else None
        for key in set(self._addresses) | set(self._refused) | set(self._chosen):
            if self._store_allocation(key, allocation, plain):
                dirty_services.add(key)

    # ------------------------------------------------------------------ placement

    def _place(self, dirty_services: set[str], dirty_keys: set[GroupKey]) -> int:
        """Re-place ``dirty_services``; move them between buckets; collect the groups touched."""
        moves: dict[_BucketId, tuple[dict[str, tuple[IPAddress, ...]], dict[str, tuple[IPAddress, ...]]]] = {}
        for key in dirty_services:
            target: tuple[_BucketId, tuple[IPAddress, ...]] | None = None
            reason = self._unchosen.get(key) if key not in self._chosen else self._refused.get(key)
            pool = self._chosen.get(key)
            service = self._services.get(key)
            ready: frozenset[str] = frozenset()
            if reason is None and pool is not None and service is not None and self._addresses.get(key):
                ready = self._ready_nodes(key) if service.traffic_policy is TrafficPolicy.LOCAL else frozenset()
                nodes = place(service, pool, self._eligible[pool.name], ready)
                if isinstance(nodes, str):
                    reason = nodes
                elif service.traffic_policy is TrafficPolicy.LOCAL:
                    target = (("local", (nodes, pool.interface)), self._addresses[key])
                else:
                    target = (("cluster", pool.name), self._addresses[key])
            if reason != self._reason.get(key):
                self._stale.add("unresolved")
                if reason is None:
                    del self._reason[key]
                else:
                    self._reason[key] = reason
            self._index_local(key, ready)
            current = self._placed.get(key)
            if current == target:
                continue
            if (current and current[1]) != (target and target[1]):
                self._stale.add("allocations")
            if current is not None:
                moves.setdefault(current[0], ({}, {}))[0][key] = current[1]
                dirty_keys.add(self._group_key(current[0]))
            if target is not None:
                moves.setdefault(target[0], ({}, {}))[1][key] = target[1]
                dirty_keys.add(self._group_key(target[0]))
                self._placed[key] = target
            else:
                self._placed.pop(key, None)
        for bucket_id, (removes, adds) in moves.items():
            bucket = self._buckets.setdefault(bucket_id, _Bucket())
            bucket.apply(removes, adds)
            if not bucket.services:
                del self._buckets[bucket_id]
        return len(dirty_services)

    def _index_local(self, key: str, ready: frozenset[str]) -> None:
        """Remember which nodes' changes can re-place this Local Service."""
        before = self._indexed.get(key, frozenset())
        if before == ready:
            return
        for node in before - ready:
            keys = self._local_by_node[node]
            keys.discard(key)
            if not keys:
                del self._local_by_node[node]
        for node in ready - before:
            self._local_by_node.setdefault(node, set()).add(key)
        if ready:
            self._indexed[key] = ready
        else:
            self._indexed.pop(key, None)

    def _group_key(self, bucket_id: _BucketId) -> GroupKey:
        kind, ident = bucket_id
        if kind == "local":
            return ident  # type: ignore[return-value]
        pool = self._pools[str(ident)]
        return (self._eligible[pool.name], pool.interface)

    # ------------------------------------------------------------------ groups and VRIDs

    def _regroup(self, dirty_keys: set[GroupKey]) -> set[str]:
        """Rebuild the members of ``dirty_keys``; the interfaces whose VRIDs may have moved.

        Those are where the set of group names changed, or a group that did
        not keep its persisted VRID changed Services: a derived VRID follows
        the first Service, an inherited one the Services shared with ``lineage``.
        """
        dirty_ifaces: set[str] = set()
        for key in dirty_keys:
            nodes, interface = key
            buckets = [b for b in (self._buckets.get(("local", key)),) if b is not None]
            buckets += [self._buckets[("cluster", pool.name)] for pool in self._pools.values()
                        if pool.interface == interface and ("cluster", pool.name) in self._buckets
                        and self._eligible[pool.name] == nodes]
            name = self._members[key][0] if key in self._members else group_name(nodes, interface)
            if not buckets:
                if self._members.pop(key, None) is not None:
                    self._names[interface].discard(name)
                    if not self._names[interface]:
                        del self._names[interface]
                    self._key_of.pop(name, None)
                    dirty_ifaces.add(interface)
                continue
            if len(buckets) == 1:
                services = tuple(buckets[0].services)
                addresses = tuple(buckets[0].addresses)
            else:
                services = tuple(heapq.merge(*(b.services for b in buckets)))
                addresses = tuple(sorted({ip for b in buckets for ip in b.counts}, key=address_order))
            previous = self._members.get(key)
            if previous is None:
                self._names.setdefault(interface, set()).add(name)
                self._key_of[name] = key
                dirty_ifaces.add(interface)
            elif not self._kept(name) and (previous[1][:1] != services[:1]
                                           or (self._lineage and previous[1] != services)):
                dirty_ifaces.add(interface)
            self._members[key] = (name, services, addresses)
        return dirty_ifaces

    def _kept(self, name: str) -> bool:
        """Whether ``name`` kept its persisted VRID last time: then its Services and anchors do not matter.

        (A persisted VRID that was not kept went to another group or lies
        outside the range: the group cannot end up with it by another way.)
        """
        vrid = self._vrid_of.get(name)
        return vrid is not None and self._vrids.get(name) == vrid

    def _number(self, dirty_ifaces: set[str], anchored: set[str], dirty_keys: set[GroupKey]) -> int:
        """Re-allocate VRIDs on ``dirty_ifaces``, and on ``anchored`` interfaces unless every group there
        kept its persisted VRID; rebuild the finished groups that changed. How many interfaces were."""
        renumbered: set[str] = set()
        interfaces = 0
        for interface in dirty_ifaces | anchored:
            names = self._names.get(interface, set())
            if interface not in dirty_ifaces and all(self._kept(n) for n in names):
                continue
            interfaces += 1
            assignment = allocate_vrids(
                ((n, interface) for n in names),
                policy=self.vrid_policy,
                persisted=self._vrids,
                services={n: self._members[self._key_of[n]][1] for n in names},
                lineage=self._lineage,
                anchors={interface: self._anchors.get(interface, ())},
            )
            for name in names:
                vrid = assignment.vrids.get(name)
                failure = assignment.failed.get(name)
                if vrid != self._vrid_of.get(name) or failure != self._failed.get(name):
                    renumbered.add(name)
                if failure != self._failed.get(name):
                    self._stale.update(("allocations", "unresolved"))
                if vrid is None:
                    self._vrid_of.pop(name, None)
                else:
                    self._vrid_of[name] = vrid
                if failure is None:
                    self._failed.pop(name, None)
                else:
                    self._failed[name] = failure
        gone = [name for name in self._final if name not in self._key_of]
        gone += [name for name in self._failed if name not in self._key_of]
        for name in gone:
            self._stale.update(("allocations", "unresolved", "groups") if name in self._failed else ("groups",))
            self._final.pop(name, None)
            self._failed.pop(name, None)
            self._vrid_of.pop(name, None)
        touched = renumbered | {self._members[k][0] for k in dirty_keys if k in self._members}
        for name in touched:
            key = self._key_of.get(name)
            if key is None:
                continue
            self._stale.add("groups")
            if name in self._failed:
                # Its Services are unresolved, and have no allocation, however its members changed.
                self._stale.update(("allocations", "unresolved"))
                self._final.pop(name, None)
                continue
            _, services, addresses = self._members[key]
            self._final[name] = make_group(name, key[1], key[0], self._vrid_of[name], addresses, services)
        return interfaces

    def _resolution(self) -> Resolution:
        if "unresolved" in self._stale or "allocations" in self._stale:
            unresolved = dict(self._reason)
            allocations = {key: addresses for key, (_, addresses) in self._placed.items()}
            for name, reason in self._failed.items():
                for service in self._members[self._key_of[name]][1]:
                    unresolved[service] = reason
                    allocations.pop(service, None)
            if "unresolved" in self._stale:
                self._unresolved = tuple(Unresolved(k, v) for k, v in sorted(unresolved.items()))
            self._allocations = allocations
        if "groups" in self._stale:
            self._groups = tuple(self._final[name] for name in sorted(self._final))
        if "addresses" in self._stale:
            self._answer = dict(self._addresses)
        self._stale.clear()
        # The mappings are shared by resolutions until they change: callers must not mutate them.
        return Resolution(groups=self._groups, unresolved=self._unresolved, allocations=self._allocations,
                          addresses=self._answer)


def resolve_incrementally(
    states: Iterable[DesiredState],
    *,
    vrid_policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
    allocate: bool = True,
) -> list[Resolution]:
    """Each state's resolution, computed incrementally from the one before (for tests and benchmarks)."""
    resolver = IncrementalResolver(vrid_policy=vrid_policy, allocate=allocate)
    return [resolver.update(state) for state in states]
