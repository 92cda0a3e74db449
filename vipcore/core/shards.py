"""Big groups as several VipGroup objects ("shards"), and back. Pure.

Every Cluster Service of a pool shares one group: 5,000 VIPs in one group at
10k Services, 25,000 at 50k. Written as one VipGroup object that is ~0.9 MB
(etcd refuses objects over 1.5 MiB), and every change to any of its Services
makes every agent receive and parse all of it. The controller therefore writes
a group of more than :data:`SHARD_VIPS` addresses as ``count`` objects:

* shard 0 is named as the group (what agents record holders on, what an
  unsharded VipGroup is) and carries its identity (interface, nodes, VRID);
* the others are named ``<set key>-<k>`` after the router (interface, VRID)
  and carry no nodes: a Node flip renames the group, and so rewrites shard 0
  alone (a new name, the old one deleted), not every shard;
* every shard has ``spec.shard = {set, index, count}``; a Service (all its VIPs) lives in
  shard ``hash(namespace/name) mod count``: adding or removing one Service
  rewrites one shard, and a restarted controller writes the same shards;
* ``count`` is a power of two, so growing it splits each shard in two (a
  Service stays or moves to ``index + old count``); it is kept while the
  average stays within the bound (no flapping around a threshold);
* an agent merges the shards of a set (:func:`merge`) into the group as it
  would be unsharded, named and placed by the newest shard 0: one router
  per group and family, as before.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import operator
from collections.abc import Iterable, Mapping

import attrs

from vipcore.core.model import IPAddress, Shard, VipGroup

#: Most VIPs a shard holds on average. Bounds the per-event cost of a Service change for every agent
#: (what one object holds is what an agent parses) and the object size: 256 IPv6 VIPs and their
#: Service keys are ~25 kB, far below etcd's 1.5 MiB, with room for a skewed hash.
SHARD_VIPS = 256
#: A group that outgrows its shards is split until they hold this many on average (half the bound:
#: room to grow before the next split).
SHARD_TARGET = SHARD_VIPS // 2


# ``ipaddress`` keeps the integer value in ``_ip``; an attrgetter key sorts 25,000 addresses at C speed
# (``int(ip)`` or ``<`` run Python code per address). Within one family, ``_ip`` order is address order.
_VALUE = operator.attrgetter("_ip")


def needed(vips: int, bound: int = SHARD_VIPS) -> int:
    """The fewest shards (a power of two) holding ``vips`` addresses at half ``bound`` on average
    (:data:`SHARD_TARGET`); 1 up to ``bound`` (a group of that size is written as today)."""
    if vips <= bound:
        return 1
    count, target = 1, max(1, bound // 2)
    while vips > target * count:
        count *= 2
    return count


def shard_count(vips: int, current: int | None, bound: int = SHARD_VIPS) -> int:
    """How many shards a group of ``vips`` addresses is written as, given ``current`` (its shard 0's
    ``count``, None if unwritten or unsharded): kept while its average stays within ``bound``
    (:data:`SHARD_VIPS`) and it is not 4 times more than needed, else :func:`needed`."""
    want = needed(vips, bound)
    if current is not None and current >= 1 and current & (current - 1) == 0 \
            and vips <= bound * current and current <= 4 * want:
        return current
    return want


def shard_of(service: str, count: int) -> int:
    """The shard of a Service (``namespace/name``) in a group of ``count`` shards (a power of two)."""
    digest = hashlib.blake2b(service.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (count - 1)


def set_key(group: VipGroup) -> str:
    """The key of a group's shard set: its router (interface, VRID), which a rename keeps."""
    digest = hashlib.sha256(f"{group.interface}\x00{group.vrid}".encode()).hexdigest()
    return f"vipset-{digest[:20]}"


def shard_name(group: VipGroup, index: int) -> str:
    """The VipGroup object name of shard ``index`` of ``group``: the group's own name for shard 0,
    ``<set key>-<index>`` for the others (unchanged when a membership change renames the group)."""
    return group.name if index == 0 else f"{set_key(group)}-{index}"


def split(group: VipGroup, addresses: Mapping[str, Iterable[IPAddress]], current: int | None = None, *,
          bound: int = SHARD_VIPS) -> tuple[VipGroup, ...]:
    """``group`` as the VipGroup objects to write: itself when small, else its :func:`shard_count` shards
    (all of them, empty ones too: an agent knows a group is complete when it has ``count`` shards).

    Shard 0 has the group's identity (interface, nodes, VRID); the others the interface and VRID
    (their set) and no nodes, so a Node joining or leaving rewrites shard 0 only (renamed, as an
    unsharded group is). ``addresses``: each Service's addresses (those in ``group`` are taken);
    ``current``: the ``count`` the group is written with now; ``bound``: :data:`SHARD_VIPS`.
    """
    count = shard_count(len(group.vips_v4) + len(group.vips_v6), current, bound)
    if count == 1:
        return (group,)
    services: list[list[str]] = [[] for _ in range(count)]
    index_of: dict[tuple[int, int], int] = {}  # (version, address value) -> shard
    for key in group.services:
        index = shard_of(key, count)
        services[index].append(key)
        for ip in addresses.get(key, ()):
            index_of[(ip.version, _VALUE(ip))] = index
    v4: list[list[IPAddress]] = [[] for _ in range(count)]
    v6: list[list[IPAddress]] = [[] for _ in range(count)]
    for family, vips, into in ((4, group.vips_v4, v4), (6, group.vips_v6, v6)):
        for ip in vips:  # the group's (sorted) order
            into[index_of.get((family, _VALUE(ip)), 0)].append(ip)
    key = set_key(group)
    return tuple(
        attrs.evolve(group, name=shard_name(group, i), nodes=group.nodes if i == 0 else (),
                     vips_v4=tuple(v4[i]), vips_v6=tuple(v6[i]),  # type: ignore[arg-type]  # by family
                     services=tuple(services[i]), shard=Shard(key, i, count))
        for i in range(count))


def merge(zero: VipGroup, others: Iterable[VipGroup]) -> VipGroup:
    """The group whose shard 0 is ``zero``, with the other shards an agent has: equal to the
    unsharded group once it has them all (:func:`complete`).

    A shard of another router (written before a change the others have not had yet) is left out.
    VIPs and Services are deduplicated (a Service moving between shards is briefly in both) and
    sorted as :func:`vipcore.core.resolve.make_group` sorts them.
    """
    if zero.shard is None:
        return zero
    same = [zero] + [g for g in others if (g.interface, g.vrid) == (zero.interface, zero.vrid)
                     and g.shard is not None and g.shard.index > 0]
    return VipGroup(
        name=zero.name, interface=zero.interface, nodes=zero.nodes, vrid=zero.vrid,
        vips_v4=_union(g.vips_v4 for g in same),  # type: ignore[arg-type]  # one family in, the same out
        vips_v6=_union(g.vips_v6 for g in same),  # type: ignore[arg-type]
        # Sorted first (timsort merges the shards' sorted runs), then deduplicated in order: a set first
        # would scramble the runs.
        services=tuple(dict.fromkeys(sorted(itertools.chain.from_iterable(g.services for g in same)))))


def complete(zero: VipGroup | None, others: Iterable[VipGroup]) -> bool:
    """Whether the shards of ``zero``'s group are all here (as ``zero`` counts them)."""
    if zero is None:
        return False
    if zero.shard is None:
        return True
    present = {g.shard.index for g in others if g.shard is not None}
    return all(i in present for i in range(1, zero.shard.count))


def _union(families: Iterable[tuple[IPAddress, ...]]) -> tuple[IPAddress, ...]:
    """Addresses of one family, deduplicated and sorted, at C speed (hashing or comparing an address
    runs Python code: 25,000 of them cost milliseconds)."""
    found = list(itertools.chain.from_iterable(families))
    by_value = dict(zip(map(_VALUE, found), found))
    return tuple(map(by_value.__getitem__, sorted(by_value)))


class Merged:
    """A shard set's VIPs and Services kept merged as shards come and go (the agent's view): a change
    to one shard costs that shard's size and a bisection per address that came or went, not a merge
    of the whole set. :meth:`group` equals :func:`merge` of the same shards."""

    def __init__(self) -> None:
        #: How many shards hold each address (by family and value) and each Service: a Service moving
        #: between shards is in both for a moment.
        #: Per family, by address value (no (family, value) tuple per address: 56 bytes each).
        self._holders: dict[int, dict[int, int]] = {4: {}, 6: {}}
        self._service_holders: dict[str, int] = {}
        self._values: dict[int, list[int]] = {4: [], 6: []}
        self._addresses: dict[int, list[IPAddress]] = {4: [], 6: []}
        self._services: list[str] = []
        #: The merged VIPs (per family) and Services as tuples, until something is counted in or out: a
        #: group renamed by a Node flip (its shard 0 replaced by one holding the same) is built anew
        #: around the same tuples, not 25,000 addresses copied, and compares equal by identity.
        self._tuples: tuple[tuple[IPAddress, ...], tuple[IPAddress, ...], tuple[str, ...]] | None = None

    def add(self, part: VipGroup, sign: int = 1) -> None:
        """Count ``part``'s VIPs and Services in (``sign`` 1) or out (-1)."""
        if part.vips_v4 or part.vips_v6 or part.services:
            self._tuples = None
        for family, vips in ((4, part.vips_v4), (6, part.vips_v6)):
            values, addresses, holders = self._values[family], self._addresses[family], self._holders[family]
            for ip in vips:
                value = _VALUE(ip)
                count = holders.get(value, 0) + sign
                if count > 0:
                    holders[value] = count
                else:
                    holders.pop(value, None)
                if sign > 0 and count == 1:
                    at = bisect.bisect_left(values, value)
                    values.insert(at, value)
                    addresses.insert(at, ip)
                elif sign < 0 and count == 0:
                    at = bisect.bisect_left(values, value)
                    if at < len(values) and values[at] == value:
                        del values[at], addresses[at]
        for service in part.services:
            count = self._service_holders.get(service, 0) + sign
            if count > 0:
                self._service_holders[service] = count
            else:
                self._service_holders.pop(service, None)
            if sign > 0 and count == 1:
                bisect.insort(self._services, service)
            elif sign < 0 and count == 0:
                at = bisect.bisect_left(self._services, service)
                if at < len(self._services) and self._services[at] == service:
                    del self._services[at]

    def remove(self, part: VipGroup) -> None:
        self.add(part, -1)

    def group(self, zero: VipGroup) -> VipGroup:
        """The merged group, named and placed by ``zero`` (counted in like the other shards)."""
        if self._tuples is None:
            self._tuples = (tuple(self._addresses[4]), tuple(self._addresses[6]), tuple(self._services))
        v4, v6, services = self._tuples
        return VipGroup(name=zero.name, interface=zero.interface, nodes=zero.nodes, vrid=zero.vrid,
                        vips_v4=v4, vips_v6=v6,  # type: ignore[arg-type]  # by family
                        services=services)
