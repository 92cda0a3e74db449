"""Big groups as several VipGroup objects ("shards"), and back. Pure.

Every Cluster Service of a pool shares one group: 5,000 VIPs in one group at
10k Services, 25,000 at 50k. Written as one VipGroup object that is ~0.9 MB
(etcd refuses objects over 1.5 MiB), and every change to any of its Services
makes every agent receive and parse all of it. The controller therefore writes
a group of more than :data:`SHARD_VIPS` addresses as ``count`` objects:

* shard 0 is named as the group (what agents record holders on, what an
  unsharded VipGroup is); shard ``k`` is named ``<group>.s<k>``;
* every shard carries the group's identity (interface, nodes, VRID) and
  ``spec.shard = {group, index, count}``; a Service (all its VIPs) lives in
  shard ``hash(namespace/name) mod count``: adding or removing one Service
  rewrites one shard, and a restarted controller writes the same shards;
* ``count`` is a power of two, so growing it splits each shard in two (a
  Service stays or moves to ``index + old count``); it is kept while the
  average stays within the bound (no flapping around a threshold);
* an agent merges the shards of a group (:func:`merge`) into the group as it
  would be unsharded: one router per group and family, as before.
"""

from __future__ import annotations

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


def shard_name(group: str, index: int) -> str:
    """The VipGroup object name of shard ``index`` of ``group``."""
    return group if index == 0 else f"{group}.s{index}"


def split(group: VipGroup, addresses: Mapping[str, Iterable[IPAddress]], current: int | None = None, *,
          bound: int = SHARD_VIPS) -> tuple[VipGroup, ...]:
    """``group`` as the VipGroup objects to write: itself when small, else its :func:`shard_count` shards
    (all of them, empty ones too: an agent knows a group is complete when it has ``count`` shards).

    ``addresses``: each Service's addresses (those in ``group`` are taken); ``current``: the
    ``count`` the group is written with now; ``bound``: :data:`SHARD_VIPS` (tests shard small groups).
    """
    count = shard_count(len(group.vips_v4) + len(group.vips_v6), current, bound)
    if count == 1:
        return (group,)
    services: list[list[str]] = [[] for _ in range(count)]
    # Address values by family (``_VALUE``: see there), each of a Service of this group.
    held: list[set[tuple[int, int]]] = [set() for _ in range(count)]
    for key in group.services:
        index = shard_of(key, count)
        services[index].append(key)
        held[index].update((ip.version, _VALUE(ip)) for ip in addresses.get(key, ()))
    return tuple(
        attrs.evolve(group, name=shard_name(group.name, i),
                     vips_v4=tuple(ip for ip in group.vips_v4 if (4, _VALUE(ip)) in held[i]),  # the group's order
                     vips_v6=tuple(ip for ip in group.vips_v6 if (6, _VALUE(ip)) in held[i]),
                     services=tuple(services[i]), shard=Shard(group.name, i, count))
        for i in range(count))


def identity(group: VipGroup) -> tuple[str, tuple[str, ...], int | None]:
    """What the shards of one group share: interface, nodes, VRID."""
    return group.interface, group.nodes, group.vrid


def merge(name: str, parts: Iterable[VipGroup]) -> VipGroup | None:
    """The group ``name`` from the shards an agent has: equal to the unsharded group once it has them all.

    The identity (interface, nodes, VRID) is the lowest shard's; a shard that disagrees (written before
    a change the others have not had yet) is left out. VIPs and Services are deduplicated (a Service
    moving between shards is briefly in both) and sorted as :func:`vipcore.core.resolve.make_group`
    sorts them. None without shards.
    """
    ordered = sorted(parts, key=lambda g: g.shard.index if g.shard else 0)
    if not ordered:
        return None
    first = ordered[0]
    if len(ordered) == 1 and first.shard is None:
        return first
    same = [g for g in ordered if identity(g) == identity(first)]
    return VipGroup(
        name=name, interface=first.interface, nodes=first.nodes, vrid=first.vrid,
        vips_v4=_union(g.vips_v4 for g in same),  # type: ignore[arg-type]  # one family in, the same out
        vips_v6=_union(g.vips_v6 for g in same),  # type: ignore[arg-type]
        services=tuple(sorted(set(itertools.chain.from_iterable(g.services for g in same)))))


def _union(families: Iterable[tuple[IPAddress, ...]]) -> tuple[IPAddress, ...]:
    """Addresses of one family, deduplicated and sorted, at C speed (hashing or comparing an address
    runs Python code: 25,000 of them cost milliseconds)."""
    found = list(itertools.chain.from_iterable(families))
    by_value = dict(zip(map(_VALUE, found), found))
    return tuple(map(by_value.__getitem__, sorted(by_value)))


def complete(parts: Iterable[VipGroup]) -> bool:
    """Whether ``parts`` are every shard of their group (as its shard 0 counts them)."""
    present = {g.shard.index if g.shard else 0: g for g in parts}
    zero = present.get(0)
    if zero is None:
        return False
    count = zero.shard.count if zero.shard else 1
    return all(i in present for i in range(count))
